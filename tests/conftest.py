"""Shared fixtures: tiny real images and a RAF-DB-layout root written at test time."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from fer_cli import env

env.apply()  # the environment `fer` runs the flows in
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # its shutdown INFO lines hit pytest's closed streams
os.environ.setdefault("PREFECT_HOME", str(Path(__file__).resolve().parent.parent / ".prefect"))


@functools.cache
def _astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def write_image(path: Path, seed: int = 0, size: int = 128) -> Path:
    """A real face photo (scikit-image's astronaut), crop shifted by the seed so bytes differ per seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dx, dy = np.random.default_rng(seed).integers(-20, 21, 2)
    crop = _astronaut()[30 + dy:230 + dy, 125 + dx:325 + dx]
    Image.fromarray(crop).resize((size, size), Image.BILINEAR).save(path)
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
