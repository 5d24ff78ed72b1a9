"""Ingest on real-format fixtures: every bad input becomes one reject, rows read = samples + rejects."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_image
from fer_data import catalog
from fer_data.datasets import LayoutError
from fer_data.ingest import ingest


def label_file(root: Path) -> Path:
    return root / "basic" / "EmoLabel" / "list_patition_label.txt"


def add_row(root: Path, line: str) -> None:
    with label_file(root).open("a") as f:
        f.write(line + "\n")


def rejects(out: Path) -> dict[str, str]:
    df = catalog.query(out / "catalog.duckdb", "SELECT source_path, reason FROM rejects")
    return dict(zip(df.source_path, df.reason))


def test_clean_dataset_ingests_every_row(rafdb_root: Path, tmp_path: Path) -> None:
    result = ingest("rafdb", rafdb_root, tmp_path / "out")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (4, 4, 0)
    df = catalog.query(result.catalog, "SELECT sample_id, split, emotion, width, bytes, sha256 FROM samples ORDER BY 1")
    assert df.sample_id.tolist() == ["rafdb:test_0001", "rafdb:test_0002", "rafdb:train_00001", "rafdb:train_00002"]
    assert df.split.tolist() == ["test", "test", "train", "train"]
    assert df.emotion.tolist() == [0, 6, 1, 3]  # neutral, anger, happiness, surprise
    assert (df.width == 128).all() and (df.bytes > 0).all() and df.sha256.str.len().eq(64).all()


@pytest.mark.parametrize(
    ("break_it", "reason"),
    [
        (lambda root: (root / "basic/Image/original/train_00001.jpg").write_bytes(b""), "empty_file"),
        (lambda root: (root / "basic/Image/original/train_00001.jpg").unlink(), "missing_file"),
        (lambda root: (root / "basic/Image/original/train_00001.jpg").write_bytes(b"not a jpeg at all"), "corrupt_image"),
        (lambda root: (p := root / "basic/Image/original/train_00001.jpg").write_bytes(p.read_bytes()[:200]),
         "corrupt_image"),  # truncated
    ],
    ids=["zero_byte", "missing", "corrupt", "truncated"],
)
def test_bad_image_becomes_one_reject(rafdb_root: Path, tmp_path: Path, break_it, reason: str) -> None:
    break_it(rafdb_root)
    result = ingest("rafdb", rafdb_root, tmp_path / "out")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (4, 3, 1)
    bad = rejects(tmp_path / "out")
    assert list(bad.values()) == [reason]
    assert next(iter(bad)).endswith("train_00001.jpg")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("train_00009.jpg", "unparsable_row"),
        ("train_00009.jpg seven", "unparsable_row"),
        ("train_00009.jpg 8", "label_out_of_range"),
        ("train_../../../../etc/passwd 1", "path_escapes_root"),
        ("train_00001.jpg 4", "duplicate_sample_id"),
    ],
)
def test_bad_row_becomes_one_reject(rafdb_root: Path, tmp_path: Path, line: str, reason: str) -> None:
    add_row(rafdb_root, line)
    result = ingest("rafdb", rafdb_root, tmp_path / "out")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (5, 4, 1)
    assert list(rejects(tmp_path / "out").values()) == [reason]


def test_wrong_layout_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "raw" / "basic").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"basic/EmoLabel/list_patition_label\.txt"):
        ingest("rafdb", tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out" / "catalog.duckdb").exists()


def test_reingest_replaces_only_that_dataset(rafdb_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_image(tmp_path / "folder" / "happy" / "a.jpg")
    ingest("imagefolder", tmp_path / "folder", out)
    ingest("rafdb", rafdb_root, out)
    add_row(rafdb_root, "train_00009.jpg 8")
    ingest("rafdb", rafdb_root, out)
    counts = catalog.query(out / "catalog.duckdb",
                           "SELECT dataset, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1")
    assert counts.values.tolist() == [["imagefolder", 1], ["rafdb", 4]]
    assert catalog.query(out / "catalog.duckdb", "SELECT count(*) AS n FROM rejects").n[0] == 1
