"""Shared fixtures: tiny real images and a RAF-DB-layout root written at test time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_image(path: Path, seed: int = 0, size: int = 32) -> Path:
    """A small real JPEG/PNG (by suffix) with seeded noise, so hashes differ per seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def rafdb_root(tmp_path: Path) -> Path:
    """RAF-DB basic layout: 4 good rows (train happiness, train surprise, test neutral, test anger)."""
    root = tmp_path / "RAF-DB"
    base = root / "basic"
    rows = {"train_00001.jpg": 4, "train_00002.jpg": 1, "test_0001.jpg": 7, "test_0002.jpg": 6}
    for i, name in enumerate(rows):
        write_image(base / "Image" / "original" / name, seed=i)
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {v}\n" for n, v in rows.items()))
    return root
