"""Shared fixtures: tiny real images and a RAF-DB-layout root written at test time."""

from __future__ import annotations

import atexit
import csv
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

# The tests' own Prefect home, one per session, never the project's .prefect (whose runs `make ui`
# shows) nor a server a developer's shell points at: set before `fer_cli` picks its defaults and
# before Prefect, which reads its settings once, is imported.
PREFECT_HOME = Path(tempfile.mkdtemp(prefix="fer-tests-prefect-"))
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)
for _key in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"):
    os.environ.pop(_key, None)
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # its shutdown INFO lines hit pytest's closed streams
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")  # a run's log reaches the API

import fer_cli  # noqa: E402,F401  (importing it applies fer_cli.env: the environment `fer` runs the flows in)


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


def fer2013_csv(root: Path, n: int, seed: int = 0) -> Path:
    """FER2013's CSV: n rows of 48x48 grey pixels (a smooth random face-sized pattern) over the three usages."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "fer2013.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["emotion", "pixels", "Usage"])
        for i in range(n):
            pixels = rng.integers(0, 256, (48, 48)).astype(np.uint8)
            out.writerow([i % 7, " ".join(map(str, pixels.reshape(-1))), ("Training", "PublicTest", "PrivateTest")[i % 3]])
    return root


def write_fairface(root: Path, sizes: dict[str, int]) -> Path:
    """FairFace layout: `sizes[split]` faces per split with alternating age bin and gender labels."""
    for split, n in sizes.items():
        lines = ["file,age,gender,race"]
        for i in range(n):
            write_image(root / split / f"{i}.jpg", seed=i + (100 if split == "val" else 0))
            lines.append(f"{split}/{i}.jpg,{['20-29', '3-9'][i % 2]},{['Male', 'Female'][i % 2]},White")
        (root / f"fairface_label_{split}.csv").write_text("\n".join(lines) + "\n")
    return root


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


TINY_RUN_RAFDB = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(8)} | {f"test_{i:04d}.jpg": 1 + i % 7 for i in range(4)}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run (emotion, age bin, gender) on FairFace- and RAF-DB-layout faces, 1 epoch of a tiny
    PE-Core-architecture backbone at 32 px (~15 s on a CPU), shared by the export and predict tests,
    which only read it."""
    from fer_data.ingest import ingest
    from fer_models.config import TrainConfig
    from fer_models.train import train

    base = tmp_path_factory.mktemp("tiny_run")
    write_fairface(base / "fairface", {"train": 8, "val": 4})
    raf = base / "rafdb" / "basic"
    for i, name in enumerate(TINY_RUN_RAFDB):
        write_image(raf / "Image" / "original" / name, seed=i)
    (raf / "EmoLabel").mkdir(parents=True)
    (raf / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {v}\n" for n, v in TINY_RUN_RAFDB.items()))
    data = base / "data"
    ingest("fairface", base / "fairface", data, detector="none", size=112)
    ingest("rafdb", base / "rafdb", data, detector="none", size=112)
    cfg = TrainConfig(catalog=str(data / "catalog.duckdb"), backbone="pe-core-tiny-test", image_size=32,
                      tasks=["emotion", "age_bin", "gender"], val_where="split = 'val'", test_where="split <> 'train'",
                      epochs=1, batch_size=4, lr=1e-2, out=str(base / "run"), device="cpu")
    train(cfg)
    return base / "run"
