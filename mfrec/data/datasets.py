"""Registry of the datasets mfrec knows: where they live, their format, scale and checksums.

Real MovieLens sets are downloaded from GroupLens (see :mod:`mfrec.data.download`); ``synthetic*``
names are generated locally (see :mod:`mfrec.data.synthetic`) so the pipeline always has an offline
path.

Synthetic naming: ``synthetic`` is shaped like ml-latest-small (100,836 ratings, 610 users,
9,742 movies); ``synthetic-25m`` / ``synthetic-32m`` are shaped like ml-25m / ml-32m; any other
``synthetic-<N>``, ``synthetic-<N>k`` or ``synthetic-<N>m`` asks for N, N thousand or N million
ratings, with user and movie counts interpolated (log-log) between ml-latest-small and ml-25m.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from mfrec.errors import ConfigError

DEFAULT_DATASET = "ml-latest-small"
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
#: Synthetic data is generated with a fixed seed so that the ``seed`` parameter only moves the
#: split: comparing splits of one dataset needs the dataset itself to stay put.
SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class DatasetSpec:
    """Everything mfrec needs to fetch, verify and parse one dataset.

    Attributes:
        name: registry name, e.g. ``"ml-1m"``.
        format: ``"csv"`` (ratings.csv/movies.csv with header), ``"100k"`` (u.data/u.item),
            ``"1m"`` (ratings.dat/movies.dat) or ``"synthetic"``.
        folder: folder the files sit in inside the zip (``""`` for none).
        rating_min, rating_max: inclusive rating scale.
        rating_step: ratings are multiples of this (0.5 half stars, 1.0 whole stars).
        zip_checksum: ``(algorithm, hexdigest)`` of the published zip, or ``None``.
        file_sha256: sha256 of extracted files' contents; used when zip bytes are not stable
            (GroupLens repacks ml-latest-small, so its zip hash changes while contents do not).
        md5_sidecar: verify against ``<url>.md5`` fetched next to the zip (no offline checksum).
        synthetic_shape: ``(n_ratings, n_users, n_movies)`` for synthetic datasets.
    """

    name: str
    format: str
    folder: str = ""
    rating_min: float = 0.5
    rating_max: float = 5.0
    rating_step: float = 0.5
    zip_checksum: tuple[str, str] | None = None
    file_sha256: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    md5_sidecar: bool = False
    synthetic_shape: tuple[int, int, int] | None = None

    @property
    def zip_name(self) -> str:
        return f"{self.name}.zip"

    @property
    def is_synthetic(self) -> bool:
        return self.format == "synthetic"

    @property
    def rating_scale(self) -> tuple[float, float]:
        return (self.rating_min, self.rating_max)

    def url(self, base_url: str | None = None) -> str:
        """Download URL of the zip under ``base_url`` (default GroupLens)."""
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.zip_name}"


# Per-file sha256 of ml-latest-small's contents (shared/data/README.md): three independent copies
# agree on these even though their zip bytes differ.
_ML_LATEST_SMALL_FILES = MappingProxyType({
    "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
    "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
    "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
    "README.txt": "63d22ac138e80fae37021797ed8e1b9424b5239dc576a137422adf783ae3f404",
})

_REAL = {
    "ml-latest-small": DatasetSpec(
        "ml-latest-small", "csv", folder="ml-latest-small", file_sha256=_ML_LATEST_SMALL_FILES
    ),
    "ml-100k": DatasetSpec(
        "ml-100k", "100k", folder="ml-100k", rating_min=1.0, rating_step=1.0,
        zip_checksum=("md5", "0e33842e24a9c977be4e0107933c0723"),
    ),
    "ml-1m": DatasetSpec(
        "ml-1m", "1m", folder="ml-1m", rating_min=1.0, rating_step=1.0,
        zip_checksum=("md5", "c4d9eecfca2ab87c1945afe126590906"),
    ),
    "ml-25m": DatasetSpec(
        "ml-25m", "csv", folder="ml-25m",
        zip_checksum=("sha256", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
    ),
    # No checksum for ml-32m was available offline, so it is checked against the .md5 file
    # GroupLens publishes next to the zip: that catches corrupt and truncated downloads, not a
    # compromised server.
    "ml-32m": DatasetSpec("ml-32m", "csv", folder="ml-32m", md5_sidecar=True),
}

# Shapes of the real sets the synthetic presets imitate: (ratings, users, movies).
_SYNTHETIC_PRESETS = {
    "synthetic": (100_836, 610, 9_742),
    "synthetic-25m": (25_000_000, 162_541, 62_423),
    "synthetic-32m": (32_000_000, 200_948, 87_585),
}
_SMALL_ANCHOR = (100_836, 610, 9_742)
_LARGE_ANCHOR = (25_000_095, 162_541, 62_423)
_SYNTHETIC_RE = re.compile(r"^synthetic-(\d+)([km]?)$")
_MULTIPLIER = {"": 1, "k": 1_000, "m": 1_000_000}
MAX_SYNTHETIC_RATINGS = 1_000_000_000

#: Ratings and movies file of each on-disk format; the ratings file identifies the format.
FORMAT_FILES = MappingProxyType({
    "csv": ("ratings.csv", "movies.csv"),
    "100k": ("u.data", "u.item"),
    "1m": ("ratings.dat", "movies.dat"),
})


CUSTOM = "custom"  # your own table at data_path (mfrec.data.custom)


def names() -> list[str]:
    """Registry names of the real datasets plus the synthetic presets and ``custom``."""
    return [*_REAL, *_SYNTHETIC_PRESETS, CUSTOM]


def synthetic_shape(n_ratings: int) -> tuple[int, int, int]:
    """Users and movies for ``n_ratings`` synthetic ratings, MovieLens-like.

    Interpolates log-log between ml-latest-small and ml-25m, then widens the catalogue if needed
    so that no more than a quarter of all (user, movie) cells are rated.
    """
    if n_ratings < 1:
        raise ConfigError(f"synthetic datasets need at least 1 rating, got {n_ratings}")
    t = math.log(n_ratings / _SMALL_ANCHOR[0]) / math.log(_LARGE_ANCHOR[0] / _SMALL_ANCHOR[0])
    n_users = round(_SMALL_ANCHOR[1] * (_LARGE_ANCHOR[1] / _SMALL_ANCHOR[1]) ** t)
    n_movies = round(_SMALL_ANCHOR[2] * (_LARGE_ANCHOR[2] / _SMALL_ANCHOR[2]) ** t)
    n_users = max(1, min(n_users, n_ratings))
    n_movies = max(n_movies, 1, math.ceil(4 * n_ratings / n_users))
    return n_ratings, n_users, n_movies


def _synthetic_spec(name: str) -> DatasetSpec | None:
    if name in _SYNTHETIC_PRESETS:
        shape = _SYNTHETIC_PRESETS[name]
    else:
        match = _SYNTHETIC_RE.match(name)
        if not match:
            return None
        n_ratings = int(match.group(1)) * _MULTIPLIER[match.group(2)]
        if not 1 <= n_ratings <= MAX_SYNTHETIC_RATINGS:
            raise ConfigError(
                f"dataset {name!r}: synthetic size must be 1..{MAX_SYNTHETIC_RATINGS:,} ratings"
            )
        shape = synthetic_shape(n_ratings)
    return DatasetSpec(name, "synthetic", synthetic_shape=shape)


def get_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name.

    Raises:
        ConfigError: the name is neither a known MovieLens set nor a synthetic name.
    """
    if name in _REAL:
        return _REAL[name]
    if name == CUSTOM:  # its rating scale is the data's (mfrec.data.custom)
        return DatasetSpec(CUSTOM, "custom", rating_step=0.0)
    spec = _synthetic_spec(name)
    if spec is None:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(names())}, or synthetic-<N>[k|m] "
            "(e.g. synthetic-1m for one million generated ratings), or custom (your own table at data_path)"
        )
    return spec
