"""Loaders over real shards: shapes, ignore values for missing labels, SQL selection, workers, epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from fer_data.ingest import ingest
from fer_data.labels import IGNORE_INDEX
from fer_data.loaders import make_loader, select, targets_of


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """FairFace layout (age bin + gender, one row missing gender) ingested into 3 shards."""
    root = tmp_path_factory.mktemp("fairface")
    lines = ["file,age,gender,race,service_test"]
    for i in range(9):
        write_image(root / "train" / f"{i}.jpg", seed=i)
        lines.append(f"train/{i}.jpg,{['20-29', '3-9', 'more than 70'][i % 3]},{['Male', 'Female'][i % 2]},White,True")
    (root / "fairface_label_train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("out")
    ingest("fairface", root, out, detector="none", size=112, shard_samples=3)
    return out


def test_eval_loader_gives_every_sample_once(sharded: Path) -> None:
    urls, ids = select(sharded / "catalog.duckdb", "dataset = 'fairface' AND split = 'train'")
    assert len(urls) == 3 and len(ids) == 9
    batches = list(make_loader(urls, ("age_bin", "gender", "emotion"), batch_size=4, train=False))
    assert [b[0].shape for b in batches] == [(4, 3, 112, 112), (4, 3, 112, 112), (1, 3, 112, 112)]
    seen = [sid for _, t in batches for sid in t["sample_id"]]
    assert sorted(seen) == sorted(ids)
    targets = {sid: (int(a), int(g), int(e)) for _, t in batches
               for sid, a, g, e in zip(t["sample_id"], t["age_bin"], t["gender"], t["emotion"])}
    assert targets["fairface:train/2.jpg"] == (8, 0, IGNORE_INDEX)  # "more than 70", Male, no emotion label
    assert targets["fairface:train/1.jpg"] == (1, 1, IGNORE_INDEX)


def test_selection_restricts_samples(sharded: Path) -> None:
    urls, ids = select(sharded / "catalog.duckdb", "age_bin = 8")
    seen = [sid for _, t in make_loader(urls, ("age_bin",), 8, train=False, sample_ids=ids) for sid in t["sample_id"]]
    assert sorted(seen) == ["fairface:train/2.jpg", "fairface:train/5.jpg", "fairface:train/8.jpg"]


def test_train_loader_epochs_and_workers(sharded: Path) -> None:
    urls, _ = select(sharded / "catalog.duckdb", "true")
    loader = make_loader(urls, ("gender",), batch_size=2, train=True, num_workers=2, epoch_samples=12)
    ids = [sid for _, t in loader for sid in t["sample_id"]]
    assert len(ids) == 12  # fixed epoch length, shards repeated as needed
    one_pass = make_loader(urls, ("gender",), batch_size=3, train=True, num_workers=3)
    # 3 workers split 3 shards: every sample exactly once, none repeated.
    assert sorted(s for _, t in one_pass for s in t["sample_id"]) == sorted(f"fairface:train/{i}.jpg" for i in range(9))


def test_fsspec_url(sharded: Path) -> None:
    urls, _ = select(sharded / "catalog.duckdb", "true", root=f"file://{sharded}")
    assert all(u.startswith("file://") for u in urls)
    assert sum(len(t["sample_id"]) for _, t in make_loader(urls, ("gender",), 4, train=False)) == 9


def test_au_and_affect_targets_mask_missing() -> None:
    labels = {"aus": {"1": True, "2": False, "4": None}, "valence": 0.5, "arousal": None, "emotion": 3}
    t = targets_of(labels, ("au", "valence_arousal", "emotion"), aus=(1, 2, 4, 6))
    assert t["au"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert t["au_mask"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert t["valence_arousal_mask"].item() == 0.0
    assert t["emotion"].item() == 3
