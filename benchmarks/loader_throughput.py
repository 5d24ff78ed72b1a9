"""Reading aligned faces: `make_loader` over shards against torchvision ImageFolder over loose JPEGs; one JSON line.

What makes the comparison fair:
- the same faces, the same bytes: `--images` 112 px JPEGs (jittered real face photos, as in
  ingest_throughput) kept as an ImageFolder tree and ingested from it with detector "none", which
  stores a JPEG already at the crop size as it came; the script checks that both loaders deliver
  the same pixels (image count and pixel sum);
- the same decode: PIL, RGB, uint8 [3, H, W] (`PILToTensor` for ImageFolder), stacked into
  batches; the same batch size and worker count, the same worker start method (forkserver, which
  make_loader uses), no shuffling (make_loader with train=False), workers started per epoch;
- shards of `--shard-samples` (250), so that, as with the hundreds of shards of a real dataset,
  make_loader's split of whole shards over workers gives each worker an equal share;
- warm page cache for both (one untimed epoch each first); the loaders alternate over `--repeats`
  epochs and the median counts. Images/s is the steady state, from the first batch to the last:
  worker start-up is the same for both (same start method, same imports) and a fixed cost per
  epoch that a real dataset amortises; it is reported apart (`first_batch_s`, and `epoch_*`
  figures that include it);
- "cold-ish": one epoch each after dropping the files' pages from the page cache with
  posix_fadvise(DONTNEED) (no root needed; a VM's disk may still be cached by its host);
- `decode_img_per_s`: one process decoding the same bytes from memory, the ceiling per core
  that no loader can pass.
Goal: make_loader >= 3x ImageFolder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import PILToTensor

from fer_data.ingest import ingest
from fer_data.loaders import _image, make_loader
from ingest_throughput import make_faces

START_METHOD = "forkserver"  # make_loader's, for workers that may run inside a Prefect flow


def epoch(loader: Iterable, checksum: bool = False) -> dict[str, float]:
    """One pass: seconds to the first batch, images/s after it and over the epoch, images seen, pixel sum if asked."""
    start = time.perf_counter()
    first, n, first_n, total = None, 0, 0, 0
    for images, _ in loader:
        if first is None:
            first, first_n = time.perf_counter() - start, len(images)
        n += len(images)
        if checksum:
            total += int(images.sum(dtype=torch.int64))
    s = time.perf_counter() - start
    return {"first_batch_s": first or 0.0, "n": n, "pixel_sum": total, "epoch_img_per_s": n / s,
            "img_per_s": (n - first_n) / (s - first) if first is not None and s > first else 0.0}


def drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def decode_rate(files: list[Path]) -> float:
    """Images/s of one process decoding the files' bytes (already in memory) the way make_loader does."""
    blobs = [f.read_bytes() for f in files]
    start = time.perf_counter()
    for data in blobs:
        _image(data)
    return len(blobs) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard-samples", type=int, default=250)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        faces = sorted(make_faces(tmp / "faces", args.images, args.size))
        ingest("imagefolder", tmp / "faces", tmp / "out", detector="none", size=args.size,
               shard_samples=args.shard_samples)
        shards = sorted((tmp / "out" / "shards").rglob("*.tar"))
        loaders: dict[str, Callable[[], Iterable]] = {
            "shards": lambda: make_loader([str(s) for s in shards], ["emotion"], args.batch_size, train=False,
                                          num_workers=args.workers),
            "imagefolder": lambda: DataLoader(
                ImageFolder(str(tmp / "faces"), transform=PILToTensor()), batch_size=args.batch_size, shuffle=False,
                num_workers=args.workers, multiprocessing_context=START_METHOD if args.workers else None),
        }
        warm = {name: epoch(make(), checksum=True) for name, make in loaders.items()}
        if len({(w["n"], w["pixel_sum"]) for w in warm.values()}) != 1 or warm["shards"]["n"] != args.images:
            raise AssertionError(f"the loaders read different images: {warm}")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in loaders}
        for _ in range(args.repeats):
            for name, make in loaders.items():
                runs[name].append(epoch(make()))
        cold = {}
        for name, make in loaders.items():
            drop_cache(shards if name == "shards" else faces)
            cold[name] = epoch(make())
        decode = decode_rate(faces)

    def median(name: str, key: str = "img_per_s") -> float:
        return statistics.median(r[key] for r in runs[name])

    shard_rate, folder_rate = median("shards"), median("imagefolder")
    shard_epoch, folder_epoch = median("shards", "epoch_img_per_s"), median("imagefolder", "epoch_img_per_s")
    print(json.dumps({
        "benchmark": "loader_throughput", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "images": args.images, "size": args.size, "batch_size": args.batch_size, "workers": args.workers,
        "shards": len(shards), "same_pixels": True,
        "shards_img_per_s": round(shard_rate, 1), "imagefolder_img_per_s": round(folder_rate, 1),
        "ratio": round(shard_rate / folder_rate, 2), "goal": 3.0,
        "first_batch_s": {name: round(median(name, "first_batch_s"), 3) for name in runs},
        "epoch_shards_img_per_s": round(shard_epoch, 1), "epoch_imagefolder_img_per_s": round(folder_epoch, 1),
        "epoch_ratio": round(shard_epoch / folder_epoch, 2),
        "cold_shards_img_per_s": round(cold["shards"]["img_per_s"], 1),
        "cold_imagefolder_img_per_s": round(cold["imagefolder"]["img_per_s"], 1),
        "cold_ratio": round(cold["shards"]["img_per_s"] / cold["imagefolder"]["img_per_s"], 2),
        "decode_img_per_s": round(decode, 1),
    }))


if __name__ == "__main__":
    main()
