"""Leakage audit on real shards: the same face in two splits and two datasets is found; distinct faces are not."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import write_image
from fer_data import catalog
from fer_data.audit import audit, near_duplicate_groups
from fer_data.ingest import ingest


def test_groups_link_hashes_within_distance() -> None:
    a = 0x0F0F_0F0F_0F0F_0F0F
    hashes = [a, a ^ 0b111, a ^ (0b1111 << 40), ~a & (2**64 - 1), a ^ 0b111 ^ (1 << 63)]
    # 0-1 differ by 3 bits, 1-4 by 1 bit (so 0-4 join transitively), 0-2 by 4, 3 is far from all.
    assert near_duplicate_groups(hashes, max_distance=3) == [0, 0, 1, 2, 0]
    assert near_duplicate_groups(hashes, max_distance=4) == [0, 0, 0, 1, 0]


def test_audit_reports_cross_split_and_cross_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    for i in range(4):
        write_image(folder / "train" / "happy" / f"{i}.jpg", seed=10 * i)
    (folder / "test" / "happy").mkdir(parents=True)
    shutil.copy(folder / "train" / "happy" / "0.jpg", folder / "test" / "happy" / "copy.jpg")
    fairface = tmp_path / "fairface"
    write_image(fairface / "train" / "1.jpg", seed=10)  # the same photo as folder's 1.jpg
    (fairface / "fairface_label_train.csv").write_text("file,age,gender,race\ntrain/1.jpg,20-29,Female,White\n")
    out = tmp_path / "out"
    ingest("imagefolder", folder, out, detector="none", size=112)
    ingest("fairface", fairface, out, detector="none", size=112)

    result = audit(out / "catalog.duckdb")
    assert (result.n_hashed, result.n_groups, result.n_cross_dataset, result.n_cross_split) == (6, 2, 1, 1)
    leaks = catalog.query(out / "catalog.duckdb", "SELECT samples FROM leakage ORDER BY n_datasets")
    assert [sorted(s) for s in leaks.samples] == [
        ["imagefolder:test/happy/copy.jpg", "imagefolder:train/happy/0.jpg"],
        ["fairface:train/1.jpg", "imagefolder:train/happy/1.jpg"],
    ]
