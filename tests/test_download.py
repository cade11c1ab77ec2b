"""Downloading, verifying and caching zips against a real loopback HTTP server."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
from helpers import free_port

from mfrec.data.datasets import get_spec
from mfrec.data.download import default_cache_dir, fetch, resolve_source
from mfrec.errors import ChecksumError, ConfigError, DataError, DownloadError

SMALL = "ml-latest-small"
RATINGS_SHA = get_spec(SMALL).file_sha256["ratings.csv"]


def leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_good_download_then_cache_hit(zip_server, shared_zip, tmp_path):
    path = fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("good"), progress=False)
    assert path == tmp_path / "ml-latest-small.zip"
    assert path.read_bytes() == shared_zip.read_bytes()
    assert leftovers(tmp_path) == ["ml-latest-small.zip", "ml-latest-small.zip.verified"]
    # Second call: served from the cache, the server sees no new request.
    again = fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("good"), progress=False)
    assert again == path
    assert zip_server.count("/good/ml-latest-small.zip") == 1


def test_env_overrides_base_url_and_cache_dir(zip_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MFREC_BASE_URL", zip_server.base("good"))
    monkeypatch.setenv("MFREC_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    source = resolve_source(SMALL, "", progress=False)
    assert source.kind == "download" and source.verified is True
    assert source.path == tmp_path / "c" / "ml-latest-small.zip"
    assert source.url == f"{zip_server.base('good')}/ml-latest-small.zip"


def test_default_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("MFREC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mfrec"


def test_corrupt_zip_is_rejected_and_deleted(zip_server, tmp_path):
    with pytest.raises(ChecksumError) as err:
        fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("corrupt"), progress=False)
    msg = str(err.value)
    assert "ratings.csv" in msg and f"expected sha256 {RATINGS_SHA}" in msg and "actual" in msg
    assert leftovers(tmp_path) == []


def test_tampered_contents_name_expected_and_actual(zip_server, tmp_path):
    with pytest.raises(ChecksumError) as err:
        fetch(SMALL, cache_dir=tmp_path / "cache", base_url=zip_server.base("tampered"),
              progress=False)
    body = zipfile.ZipFile(zip_server_bytes(zip_server, tmp_path)).read(
        "ml-latest-small/ratings.csv")
    actual = hashlib.sha256(body).hexdigest()
    msg = str(err.value)
    assert f"expected sha256 {RATINGS_SHA}" in msg and f"actual {actual}" in msg
    assert leftovers(tmp_path / "cache") == []


def zip_server_bytes(zip_server, tmp_path):
    """Fetch the tampered zip's bytes for the test to hash itself (no verification)."""
    import urllib.request

    target = tmp_path / "tampered.zip"
    with urllib.request.urlopen(f"{zip_server.base('tampered')}/ml-latest-small.zip") as r:
        target.write_bytes(r.read())
    return target


def test_truncated_download_is_an_error_and_leaves_nothing(zip_server, tmp_path):
    with pytest.raises(DownloadError) as err:
        fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("truncated"), progress=False)
    msg = str(err.value)
    assert "cut short" in msg and "ml-latest-small.zip" in msg and "data_path" in msg
    assert leftovers(tmp_path) == []


def test_http_404_names_url_and_suggests_data_path(zip_server, tmp_path):
    with pytest.raises(DownloadError) as err:
        fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("missing"), progress=False)
    msg = str(err.value)
    assert f"{zip_server.base('missing')}/ml-latest-small.zip" in msg
    assert "404" in msg and "data_path" in msg
    assert leftovers(tmp_path) == []


def test_unreachable_host_names_url_and_suggests_data_path(tmp_path):
    base = f"http://127.0.0.1:{free_port()}/datasets"  # nothing listens there
    with pytest.raises(DownloadError) as err:
        fetch(SMALL, cache_dir=tmp_path, base_url=base, progress=False)
    assert f"{base}/ml-latest-small.zip" in str(err.value) and "data_path" in str(err.value)
    assert leftovers(tmp_path) == []


def test_published_zip_checksum_mismatch(zip_server, tmp_path):
    with pytest.raises(ChecksumError) as err:
        fetch("ml-100k", cache_dir=tmp_path, base_url=zip_server.base("good"), progress=False)
    msg = str(err.value)
    assert "expected md5 0e33842e24a9c977be4e0107933c0723" in msg and "actual md5" in msg
    assert leftovers(tmp_path) == []


def test_md5_sidecar_verification(zip_server, tmp_path):
    path = fetch("ml-32m", cache_dir=tmp_path / "ok", base_url=zip_server.base("sidecar"),
                 progress=False)
    assert path.name == "ml-32m.zip"
    with pytest.raises(ChecksumError, match="expected md5 0{32}"):
        fetch("ml-32m", cache_dir=tmp_path / "bad", base_url=zip_server.base("badsidecar"),
              progress=False)
    assert leftovers(tmp_path / "bad") == []


def test_damaged_cache_entry_is_downloaded_again(zip_server, tmp_path):
    fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("good"), progress=False)
    before = zip_server.count("/good/ml-latest-small.zip")
    cached = tmp_path / "ml-latest-small.zip"
    cached.write_bytes(b"not a zip")  # size/mtime change invalidates the verified marker
    fetch(SMALL, cache_dir=tmp_path, base_url=zip_server.base("good"), progress=False)
    assert zip_server.count("/good/ml-latest-small.zip") == before + 1
    assert zipfile.is_zipfile(cached)


def test_synthetic_needs_no_fetch(tmp_path):
    with pytest.raises(ConfigError):
        fetch("synthetic", cache_dir=tmp_path)
    assert resolve_source("synthetic", "").kind == "synthetic"
    with pytest.raises(ConfigError, match="data_path"):
        resolve_source("synthetic", str(tmp_path))


def test_resolve_local_zip_and_folders(shared_zip, tmp_path):
    source = resolve_source(SMALL, str(shared_zip))
    assert source.kind == "zip" and source.verified is True
    with zipfile.ZipFile(shared_zip) as zf:
        zf.extractall(tmp_path / "x")
    # The extracted folder holds one subfolder with the files; both levels work.
    for given in (tmp_path / "x", tmp_path / "x" / SMALL, tmp_path / "x" / SMALL / "ratings.csv"):
        source = resolve_source(SMALL, str(given))
        assert source.kind == "dir" and source.path == tmp_path / "x" / SMALL
        assert source.verified is True


def test_resolve_rejects_missing_and_wrong_layouts(shared_zip, tmp_path):
    missing = tmp_path / "nope.zip"
    with pytest.raises(DataError, match="nope.zip") as err:
        resolve_source(SMALL, str(missing))
    assert "does not exist" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        resolve_source(SMALL, str(tmp_path / "empty"))
    with pytest.raises(DataError, match="expects u.data"):
        resolve_source("ml-100k", str(shared_zip))
    not_zip = tmp_path / "notes.txt"
    not_zip.write_text("hello")
    with pytest.raises(DataError, match="not a zip"):
        resolve_source(SMALL, str(not_zip))


def test_local_copy_with_edited_contents_is_marked_unverified(tmp_path, shared_zip):
    with zipfile.ZipFile(shared_zip) as zf:
        zf.extractall(tmp_path)
    ratings = tmp_path / SMALL / "ratings.csv"
    ratings.write_bytes(ratings.read_bytes().replace(b"1,1,4.0,", b"1,1,3.0,", 1))
    source = resolve_source(SMALL, str(tmp_path))
    assert source.verified is False and "ratings.csv" in source.verification
