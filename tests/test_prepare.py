"""Prepared folders: counts, manifest checksums, tamper detection and atomic writes."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pandas as pd
import pytest

import mfrec.data.prepare as prep
from mfrec.errors import ChecksumError, ConfigError, DataError
from mfrec.data.prepare import PrepareConfig, load_dataset, load_prepared, prepare, prepare_key
from mfrec.data.split import SplitConfig


@pytest.fixture(scope="module")
def prepared(shared_zip, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "prepared"
    manifest = prepare(PrepareConfig(data_path=str(shared_zip)), out, progress=False)
    return out, manifest


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_counts_on_real_zip(prepared):
    _, manifest = prepared
    c = manifest["counts"]
    assert (c["ratings"], c["users"], c["rated_movies"], c["catalogue_movies"]) == (
        100_836, 610, 9_724, 9_742)
    assert (c["train"], c["val"], c["test"]) == (72_602, 8_067, 20_167)
    assert c["duplicates_removed"] == 0
    assert manifest["rating_scale"] == [0.5, 5.0]
    assert manifest["split"] == {"method": "random", "test_fraction": 0.2,
                                 "val_fraction": 0.1, "seed": 0}
    assert manifest["source"]["kind"] == "zip" and manifest["source"]["verified"] is True
    assert manifest["unseen"]["test_unseen_users"] == 0


def test_manifest_checksums_match_files(prepared):
    out, manifest = prepared
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "movies.parquet", "test.parquet", "train.parquet", "val.parquet"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for name, info in manifest["files"].items():
        assert sha256(out / name) == info["sha256"]
        assert len(pd.read_parquet(out / name)) == info["rows"]
    assert manifest["prepare_key"] == prepare_key(manifest["data_sha256"], SplitConfig("random", 0.2, 0.1, 0))


def test_load_prepared_roundtrip(prepared):
    out, manifest = prepared
    p = load_prepared(out)
    assert len(p.train) + len(p.val) + len(p.test) == 100_836
    assert p.train.dtypes.astype(str).to_dict() == {
        "userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
    assert list(p.movies.columns) == ["movieId", "title", "genres"] and len(p.movies) == 9_742
    assert p.manifest == manifest


def test_a_rank_reads_only_its_users_ratings(prepared, monkeypatch):
    """A shard of a prepared folder: the users with userId mod W = rank, every one of their
    ratings, read in batches (small ones here, so that every file takes several)."""
    out, _ = prepared
    whole = load_prepared(out)
    monkeypatch.setattr(prep, "_SHARD_BATCH", 5_000)
    shards = [load_prepared(out, shard=(rank, 3)) for rank in range(3)]
    for name in ("train", "val", "test"):
        parts = [getattr(s, name) for s in shards]
        for rank, part in enumerate(parts):
            assert (part["userId"] % 3 == rank).all() and part.dtypes.equals(getattr(whole, name).dtypes)
        key = ["userId", "movieId"]
        together = pd.concat(parts).sort_values(key, ignore_index=True)
        assert together.equals(getattr(whole, name).sort_values(key, ignore_index=True))
    assert shards[1].movies.equals(whole.movies) and 0.25 < len(shards[1].train) / len(whole.train) < 0.42


def test_load_prepared_detects_tampering(prepared, tmp_path):
    out, _ = prepared
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    train = pd.read_parquet(copy / "train.parquet")
    train.loc[0, "rating"] = 0.5 if train.loc[0, "rating"] != 0.5 else 1.0
    train.to_parquet(copy / "train.parquet", index=False)
    with pytest.raises(ChecksumError, match="train.parquet") as err:
        load_prepared(copy)
    assert "expected sha256" in str(err.value) and "actual" in str(err.value)
    (copy / "val.parquet").unlink()
    (copy / "train.parquet").write_bytes((out / "train.parquet").read_bytes())
    with pytest.raises(DataError, match="val.parquet"):
        load_prepared(copy)
    with pytest.raises(DataError, match="manifest.json"):
        load_prepared(tmp_path / "nowhere")


def test_failure_midway_leaves_no_out_dir(shared_zip, tmp_path, monkeypatch):
    def broken(path, manifest):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(prep, "_write_manifest", broken)
    out = tmp_path / "prepared"
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(PrepareConfig(data_path=str(shared_zip)), out, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temp folder is left

    # An existing folder survives a failed run untouched ...
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        prepare(PrepareConfig(data_path=str(shared_zip)), out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    assert (out / "keep.txt").read_text() == "old"
    # ... and is replaced as a whole by a successful one.
    monkeypatch.undo()
    prepare(PrepareConfig(data_path=str(shared_zip)), out, progress=False)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_data_hash_is_independent_of_packaging(shared_zip, tmp_path):
    from_zip = load_dataset("ml-latest-small", str(shared_zip), progress=False)
    with zipfile.ZipFile(shared_zip) as zf:
        zf.extractall(tmp_path)
    from_dir = load_dataset("ml-latest-small", str(tmp_path), progress=False)
    assert from_zip.data_sha256 == from_dir.data_sha256
    key = prepare_key(from_zip.data_sha256, SplitConfig())
    assert key == prepare_key(from_zip.data_sha256, SplitConfig("random", "0.2", "0.10", "0"))
    assert key != prepare_key(from_zip.data_sha256, SplitConfig("random", 0.2, 0.1, 1))
    assert key != prepare_key(from_zip.data_sha256, SplitConfig("temporal", 0.2, 0.1, 0))
    # One changed rating changes the content hash.
    ratings = tmp_path / "ml-latest-small" / "ratings.csv"
    ratings.write_bytes(ratings.read_bytes().replace(b"1,1,4.0,", b"1,1,3.5,", 1))
    assert load_dataset("ml-latest-small", str(tmp_path)).data_sha256 != from_zip.data_sha256


def test_bad_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="split"):
        PrepareConfig(data_path="/nonexistent", split=SplitConfig("sideways"))
    with pytest.raises(ConfigError, match="seed"):
        PrepareConfig(data_path="/nonexistent", split=SplitConfig(seed="1.5"))
    with pytest.raises(ConfigError, match="unknown dataset"):
        PrepareConfig(dataset="ml-3m")
    with pytest.raises(DataError, match="/nonexistent"):
        prepare(PrepareConfig(data_path="/nonexistent"), tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_synthetic_prepares_offline(tmp_path):
    manifest = prepare(PrepareConfig("synthetic-20k", split=SplitConfig("temporal")), tmp_path / "s", progress=False)
    assert manifest["counts"]["ratings"] == 20_000
    assert manifest["source"]["kind"] == "synthetic"
    again = prepare(PrepareConfig("synthetic-20k", split=SplitConfig("temporal")), tmp_path / "t", progress=False)
    assert again["prepare_key"] == manifest["prepare_key"]  # generation does not follow seed
    p = load_prepared(tmp_path / "s")
    assert len(p.train) + len(p.val) + len(p.test) == 20_000
