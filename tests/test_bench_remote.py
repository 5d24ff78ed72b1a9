"""benchmarks/loader_remote.py: its latency server, its loose-file dataset, its table row and a tiny run."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _jpeg(path: Path, value: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, dtype=np.uint8)).save(path, quality=95)
    return path.read_bytes()


def test_server_waits_per_request_in_parallel_and_counts_each(tmp_path: Path) -> None:
    remote = _module("loader_remote")
    blobs = {f"faces/{i}.jpg": _jpeg(tmp_path / "faces" / f"{i}.jpg", 40 * i) for i in range(5)}
    with remote.serve(tmp_path, latency_ms=500) as (base, counts):
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        assert fs.cat_file(f"{base}/faces/0.jpg") == blobs.pop("faces/0.jpg")  # the client's session starts
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda name: fs.cat_file(f"{base}/{name}"), blobs))
        elapsed = time.perf_counter() - start
    assert got == list(blobs.values())
    assert dict(counts) == {f"/faces/{i}.jpg": 1 for i in range(5)}  # one GET per file, no HEAD
    assert 0.5 <= elapsed < 2.0  # each request waited 500 ms, the four at once (in series: >= 2 s)


def test_loose_files_fetch_one_url_each_and_decode_to_uint8_chw(tmp_path: Path) -> None:
    remote = _module("loader_remote")
    data = _jpeg(tmp_path / "a" / "x.jpg", 200)
    with remote.serve(tmp_path, latency_ms=0) as (base, counts):
        pixels, (sample_id, label) = remote.LooseFiles(base, ["a/x.jpg"], [3])[0]
    assert (sample_id, label) == ("a/x.jpg", 3) and counts["/a/x.jpg"] == 1
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 8, 10)
    assert torch.equal(pixels, torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1))


def test_report_row_is_met_only_at_the_goal_with_every_image_read_once() -> None:
    rows_of = _module("report").rows_of
    out = {"images": 64, "size": 112, "latency_ms": 20.0, "batch_size": 8, "workers": 2, "goal": 3.0,
           "shards_img_per_s": 900.0, "loose_img_per_s": 90.0, "ratio": 10.0, "read_once": True, "same_pixels": True}
    assert rows_of("loader_remote", out)[0]["met"]
    assert not rows_of("loader_remote", {**out, "ratio": 2.5})[0]["met"]
    assert not rows_of("loader_remote", {**out, "read_once": False})[0]["met"]


@pytest.mark.slow
def test_loader_remote_tiny_reads_every_image_once_both_ways() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "loader_remote.py"), "--images", "64", "--latency-ms", "5",
                           "--shard-samples", "16", "--batch-size", "8", "--workers", "2", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "loader_remote" and out["latency_ms"] == 5.0 and out["workers"] == 2
    assert out["seen"] == out["distinct"] == {"shards": 64, "loose": 64}
    assert out["requests_per_epoch"] == {"shards": out["shards"], "loose": 64} and out["shards"] >= 4
    assert out["read_once"] is True and out["same_pixels"] is True
    assert out["shards_img_per_s"] > 0 and out["loose_img_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["shards_img_per_s"] / out["loose_img_per_s"], abs=0.02)
    assert {"machine", "goal", "load_average", "first_batch_s"} <= set(out)


def test_gpu_suite_parses_and_refuses_an_unknown_flag() -> None:
    suite = BENCH / "gpu_suite.sh"
    assert subprocess.run(["bash", "-n", str(suite)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(suite), "--gpu"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr and proc.stdout == ""
