"""Reading aligned faces from object storage: shards against loose JPEGs over HTTP with a per-request latency; one JSON line.

Object stores (S3, GCS, Azure) answer each request in ~10-50 ms, so a dataset of loose files pays
that latency once per image, while shards pay it once per shard. This measures what that costs:
- the same faces, the same bytes: `--images` 112 px JPEGs (jittered real face photos, as in
  ingest_throughput) kept as an ImageFolder tree and ingested from it with detector "none" (a
  JPEG already at the crop size is stored as it came), so the shards are real `fer ingest` shards;
- one HTTP server on 127.0.0.1 (a thread per connection, HTTP/1.1 keep-alive) serves both; it
  sleeps `--latency-ms` before answering each request, in that request's thread, so concurrent
  requests wait in parallel as they do on an object store. It counts the requests per file;
- shards: `make_loader` over the shard URLs (http://127.0.0.1:PORT/...: webdataset streams each
  shard with one GET, through `curl`), eval mode (every sample once, in shard order);
- loose files: a map-style torch Dataset whose `__getitem__` fetches one file with fsspec's HTTP
  filesystem (`cat_file`: one GET per image, the fewest a loose-file reader can make) in a
  DataLoader;
- the same decode (PIL, RGB, uint8 [3, H, W]), batch size, worker count and worker start method
  (forkserver, make_loader's); both check every epoch that they delivered every image exactly once
  (ids) with the same pixels (pixel sum), and the server's counts show each file fetched once;
- the loaders alternate over `--repeats` epochs and the median counts. Images/s is the steady
  state, from the first batch to the last; worker start-up and the first batch are reported
  apart (`first_batch_s`: a fixed cost per epoch that a long epoch amortises); `epoch_*` figures
  include it.
A loose-file loader cannot pass workers / latency images/s (one request in flight per worker);
`loose_bound_img_per_s` gives that bound. Goal: shards >= 3x loose at 20 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

START_METHOD = "forkserver"  # make_loader's, for workers that may run inside a Prefect flow
GOAL = 3.0


def decode(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, H, W], the loaders' pixel contract."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class LooseFiles(Dataset):
    """Loose JPEGs behind URLs, one fsspec request per image: (pixels, (sample id, label))."""

    def __init__(self, base: str, files: list[str], labels: list[int]) -> None:
        self.base, self.files, self.labels = base, files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[str, int]]:
        fs = fsspec.filesystem("http")  # one cached instance (and connection pool) per worker process
        return decode(fs.cat_file(f"{self.base}/{self.files[i]}")), (self.files[i], self.labels[i])


class Handler(SimpleHTTPRequestHandler):
    """Static files after a fixed wait per request (the object store's latency), counted per path."""

    protocol_version = "HTTP/1.1"  # keep-alive, as clients of object stores use
    latency_s: float  # set with the counts and their lock for each server, by `serve`
    counts: Counter[str]
    lock: threading.Lock

    def do_GET(self) -> None:
        self._wait("")
        super().do_GET()

    def do_HEAD(self) -> None:
        self._wait("HEAD ")
        super().do_HEAD()

    def _wait(self, method: str) -> None:
        time.sleep(self.latency_s)
        with self.lock:
            self.counts[method + self.path] += 1

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve(root: Path, latency_ms: float) -> Iterator[tuple[str, Counter[str]]]:
    """An HTTP server of `root` on a free port of 127.0.0.1 in this process: (base URL, request counts)."""
    counts: Counter[str] = Counter()
    handler = type("LatencyHandler", (Handler,), {"latency_s": latency_ms / 1000, "counts": counts,
                                                  "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()


def epoch(loader: Iterable, ids_of: Callable[[object], list[str]]) -> dict[str, float]:
    """One pass: seconds to the first batch, images/s after it and over the epoch, images and distinct ids, pixel sum."""
    start = time.perf_counter()
    first, n, first_n, total, ids = None, 0, 0, 0, set()
    for images, targets in loader:
        if first is None:
            first, first_n = time.perf_counter() - start, len(images)
        n += len(images)
        total += int(images.sum(dtype=torch.int64))
        ids.update(ids_of(targets))
    s = time.perf_counter() - start
    return {"first_batch_s": first or 0.0, "n": n, "distinct": len(ids), "pixel_sum": total,
            "epoch_img_per_s": n / s,
            "img_per_s": (n - first_n) / (s - first) if first is not None and s > first else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--latency-ms", type=float, default=20.0, help="the server's wait before each answer")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard-samples", type=int, default=250)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.workers < 1:
        p.error("--workers must be >= 1 (loader workers are what fetch the files)")
    # here, not at the top: DataLoader workers re-import this script, and need none of this
    from fer_data.ingest import ingest
    from fer_data.loaders import make_loader
    from ingest_throughput import make_faces

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        faces = [f.relative_to(root).as_posix() for f in sorted(make_faces(root / "faces", args.images, args.size))]
        ingest("imagefolder", root / "faces", root / "out", detector="none", size=args.size,
               shard_samples=args.shard_samples)
        shards = sorted(s.relative_to(root).as_posix() for s in (root / "out" / "shards").rglob("*.tar"))
        classes = sorted({f.split("/")[1] for f in faces})
        labels = [classes.index(f.split("/")[1]) for f in faces]
        with serve(root, args.latency_ms) as (base, counts):
            loaders: dict[str, Callable[[], Iterable]] = {
                "shards": lambda: make_loader([f"{base}/{s}" for s in shards], ["emotion"], args.batch_size,
                                              train=False, num_workers=args.workers),
                "loose": lambda: DataLoader(LooseFiles(base, faces, labels), batch_size=args.batch_size,
                                            shuffle=False, num_workers=args.workers,
                                            multiprocessing_context=START_METHOD),
            }
            ids_of = {"shards": lambda t: t["sample_id"], "loose": lambda t: t[0]}
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in loaders}
            for _ in range(args.repeats):
                for name, make in loaders.items():
                    runs[name].append(epoch(make(), ids_of[name]))
            requests = {"shards": [counts[f"/{s}"] for s in shards], "loose": [counts[f"/{f}"] for f in faces]}
    checks = {(r["n"], r["distinct"], r["pixel_sum"]) for rs in runs.values() for r in rs}
    if len(checks) != 1 or next(iter(checks))[:2] != (args.images, args.images):
        raise AssertionError(f"the loaders did not each read every image once with the same pixels: {runs}")
    if any(c != args.repeats for c in requests["shards"] + requests["loose"]) or sum(counts.values()) != sum(
            map(sum, requests.values())):
        raise AssertionError(f"a file was fetched other than once per epoch: {dict(counts)}")

    def median(name: str, key: str = "img_per_s") -> float:
        return statistics.median(r[key] for r in runs[name])

    shard_rate, loose_rate = median("shards"), median("loose")
    print(json.dumps({
        "benchmark": "loader_remote", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "images": args.images, "size": args.size, "batch_size": args.batch_size, "workers": args.workers,
        "latency_ms": args.latency_ms, "shards": len(shards), "repeats": args.repeats,
        "read_once": True, "same_pixels": True,
        "seen": {name: runs[name][-1]["n"] for name in runs},
        "distinct": {name: runs[name][-1]["distinct"] for name in runs},
        "requests_per_epoch": {name: sum(c) // args.repeats for name, c in requests.items()},
        "shards_img_per_s": round(shard_rate, 1), "loose_img_per_s": round(loose_rate, 1),
        "ratio": round(shard_rate / loose_rate, 2), "goal": GOAL,
        "loose_bound_img_per_s": round(args.workers * 1000 / args.latency_ms, 1) if args.latency_ms else None,
        "first_batch_s": {name: round(median(name, "first_batch_s"), 3) for name in runs},
        "epoch_shards_img_per_s": round(median("shards", "epoch_img_per_s"), 1),
        "epoch_loose_img_per_s": round(median("loose", "epoch_img_per_s"), 1),
        "epoch_ratio": round(median("shards", "epoch_img_per_s") / median("loose", "epoch_img_per_s"), 2),
    }))


if __name__ == "__main__":
    main()
