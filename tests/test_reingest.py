"""A re-ingest is atomic for readers: the catalog points at complete shards before, during and after
it, whether it finishes, is interrupted (Ctrl-C) or fails (disk full, catalog swap refused); and what
it writes does not depend on where the raw data sits or on file mtimes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from fer_data import catalog, shards
from fer_data.ingest import ingest
from fer_data.loaders import select

SIZE = 112


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_catalog_shards_intact(out: Path) -> dict[str, str]:
    """Every shard the catalog names exists with the sha256 the catalog has for it; a selection's
    URLs all open. Returns {path: sha256}."""
    rows = catalog.query(out / "catalog.duckdb", "SELECT path, sha256 FROM shards ORDER BY path")
    assert len(rows), "the catalog lost its shards"
    for path, digest in rows.values.tolist():
        assert (out / path).is_file(), f"the catalog names {path}, which is gone"
        assert sha256(out / path) == digest, f"{path} changed under the catalog"
    urls, _ = select(out / "catalog.duckdb", "split = 'train'")
    assert all(Path(u).is_file() for u in urls)
    return dict(rows.values.tolist())


def relabel(rafdb_root: Path) -> None:
    """Change one label: another fingerprint for the train split, so a re-ingest writes new shards."""
    labels = rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text().replace("train_00001.jpg 4", "train_00001.jpg 5"))


def emotions(out: Path) -> dict[str, int]:
    return dict(catalog.query(out / "catalog.duckdb", "SELECT sample_id, emotion FROM samples").values.tolist())


def test_ctrl_c_during_a_reingest_leaves_the_old_catalog_and_its_shards(rafdb_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest("rafdb", rafdb_root, out, size=SIZE, shard_samples=1)
    before, labels_before = assert_catalog_shards_intact(out), emotions(out)
    relabel(rafdb_root)
    seen_during: list[dict[str, str]] = []

    def reader_then_ctrl_c(done: int, total: int) -> None:
        seen_during.append(assert_catalog_shards_intact(out))  # a loader reading while the re-ingest runs
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest("rafdb", rafdb_root, out, size=SIZE, shard_samples=1, on_progress=reader_then_ctrl_c)
    assert seen_during and all(s == before for s in seen_during)
    assert assert_catalog_shards_intact(out) == before and emotions(out) == labels_before
    # The interrupted run's complete shards are kept for the next run, which resumes and then swaps.
    ingest("rafdb", rafdb_root, out, size=SIZE, shard_samples=1)
    after = assert_catalog_shards_intact(out)
    assert emotions(out)["rafdb:train_00001"] != labels_before["rafdb:train_00001"]  # the new label
    assert after.keys() != before.keys()
    # once the catalog points at the new shards, the old versions are gone from disk
    on_disk = {p.relative_to(out).as_posix() for p in (out / "shards").rglob("*.tar")}
    assert on_disk == set(after)


@pytest.mark.parametrize("failure", ["disk_full", "swap_refused"])
def test_a_failed_reingest_changes_nothing(rafdb_root: Path, tmp_path: Path, monkeypatch, failure: str) -> None:
    out = tmp_path / "out"
    ingest("rafdb", rafdb_root, out, size=SIZE, shard_samples=1)
    before, labels_before = assert_catalog_shards_intact(out), emotions(out)
    info_before = (out / "shards" / "rafdb" / "_info.json").read_bytes()
    relabel(rafdb_root)
    if failure == "disk_full":
        def full(self, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shards.ShardWriter, "_append", full)
    else:
        def refused(*args, **kwargs) -> None:
            raise RuntimeError("catalog is locked by another process")

        monkeypatch.setattr(catalog.DatasetWriter, "commit", refused)  # every shard written, then refused
    with pytest.raises((OSError, RuntimeError)):
        ingest("rafdb", rafdb_root, out, size=SIZE, shard_samples=1)
    assert assert_catalog_shards_intact(out) == before and emotions(out) == labels_before
    assert (out / "shards" / "rafdb" / "_info.json").read_bytes() == info_before


def test_same_bytes_wherever_the_data_sits_and_whatever_its_mtimes(rafdb_root: Path, tmp_path: Path) -> None:
    """A copy of the raw data elsewhere with new mtimes (a fresh clone, `cp` without -p) gives the same
    fingerprints, shard stats and catalog rows: nothing DVC hashes holds an absolute path or an mtime."""
    a = tmp_path / "a"
    ingest("rafdb", rafdb_root, a, size=SIZE)
    moved = tmp_path / "elsewhere" / "RAF-DB"
    shutil.copytree(rafdb_root, moved)  # new mtimes
    for path in moved.rglob("*"):
        os.utime(path, (1, 1))
    b = tmp_path / "b"
    ingest("rafdb", moved, b, size=SIZE)

    def tracked(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "shards").rglob("*") if p.is_file()}

    assert tracked(a) == tracked(b)
    for text in tracked(a).values():
        assert str(tmp_path).encode() not in text
    rows = catalog.query(a / "catalog.duckdb", "SELECT source_path FROM samples UNION ALL SELECT source_path "
                                               "FROM rejects").source_path.tolist()
    assert rows and all(not os.path.isabs(p) for p in rows)
    assert sorted(rows)[0] == "basic/Image/original/test_0001.jpg"
    assert catalog.query(b / "catalog.duckdb", "SELECT raw_root FROM ingests").raw_root.tolist() == [str(moved)]
    # a touch changes nothing: the next run finds every shard complete and rewrites the same rows
    for path in rafdb_root.rglob("*.jpg"):
        path.touch()
    stats_before = {p: p.stat().st_mtime_ns for p in (a / "shards").rglob("*.stats.json")}
    ingest("rafdb", rafdb_root, a, size=SIZE)
    assert {p: p.stat().st_mtime_ns for p in (a / "shards").rglob("*.stats.json")} == stats_before
    assert json.loads((a / "shards" / "rafdb" / "_info.json").read_text())["fingerprint"] == \
        json.loads((b / "shards" / "rafdb" / "_info.json").read_text())["fingerprint"]
