"""Ingest throughput beside the bare loop on the same files, in the same run; prints one JSON line.

Three cases: in-the-wild images (decode + CenterFace detect), pre-aligned images (decode only),
frame-folder clips (decode + detect every frame: what the face tracker detects; the pipeline then
links tracks and aligns T frames of the main one, `benchmarks/clip_ingest.py` times it as `fer ingest`). The pipeline number includes everything
it does beyond the bare loop: alignment, JPEG encoding, shard writing, the catalog.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from fer_data.faces.detectors import CenterFaceDetector
from fer_data.ingest import ingest
from fer_data.decode import MAX_CLIP_PIXELS
from fer_data.faces.track import scan_frames
from fer_data.video import Clip


def make_faces(root: Path, n: int, size: int, clip_frames: int = 0) -> list[Path]:
    """imagefolder layout of `n` jittered real face photos, or with `clip_frames` a FERV39K layout
    of `n` frame-folder clips (2_ClipsforFaceCrop/<scene>/<class>/<id>/ + the two list files)."""
    photo = skimage.data.astronaut()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        label = "Happy" if i % 2 else "Sad"
        folder = root / ("2_ClipsforFaceCrop/Action/" + label if clip_frames else label.lower())
        frames = []
        for f in range(max(1, clip_frames)):
            dx, dy = rng.integers(-40, 41, 2)
            crop = photo[max(0, 10 + dy):330 + dy, max(0, 60 + dx):380 + dx]
            frames.append(Image.fromarray(crop).resize((size, size)))
        if clip_frames:
            clip = folder / f"{i:05d}"
            clip.mkdir(parents=True, exist_ok=True)
            for f, im in enumerate(frames):
                im.save(clip / f"{f + 1:05d}.jpg", quality=90)
            paths.append(clip)
            lists = root / "4_setups" / "All_scenes"
            lists.mkdir(parents=True, exist_ok=True)
            for split in ("train", "test"):
                with open(lists / f"{split}_All.csv", "a") as f:
                    if (split == "test") == (i % 4 == 0):
                        f.write(f"Action/{label}/{i:05d} {label}\n")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            frames[0].save(folder / f"{i:05d}.jpg", quality=90)
            paths.append(folder / f"{i:05d}.jpg")
    return paths


def bare(paths: list[Path], detect: bool, segments: int = 0, batch: int = 16) -> float:
    """Seconds for the plain loop: decode (for clips every frame the face tracker detects, at a clip
    frame's pixel budget) and, if asked, detect in batches."""
    detector = CenterFaceDetector(threads=os.cpu_count() or 1) if detect else None
    start = time.perf_counter()
    pending: list[np.ndarray] = []
    for p in paths:
        if segments:
            clip = Clip(p, MAX_CLIP_PIXELS // segments)
            frames = list(clip.read(scan_frames(clip.n_frames)))
        else:
            frames = [np.asarray(Image.open(p).convert("RGB"))]
        pending.extend(frames)
        if detector and len(pending) >= batch:
            detector(pending)
            pending = []
    if detector and pending:
        detector(pending)
    return time.perf_counter() - start


def pipeline(dataset: str, root: Path, out: Path, detector: str, workers: int, segments: int) -> float:
    start = time.perf_counter()
    result = ingest(dataset, root, out, detector=detector, workers=workers, segments=segments)
    if result.n_samples + result.n_rejects != result.rows_read or result.rows_read == 0:
        raise AssertionError(f"benchmark ingest of {dataset} lost rows: {result}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--workers", type=int, default=None, help="default: the pipeline's own choice")
    args = parser.parse_args()
    results = {"benchmark": "ingest_throughput", "machine": f"{platform.machine()} {os.cpu_count()} cores",
               "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {
            "images_detect": ("imagefolder", tmp / "wild", make_faces(tmp / "wild", args.images, 256), "centerface",
                              True, 0, args.images),
            "images_aligned": ("imagefolder", tmp / "aligned", make_faces(tmp / "aligned", args.images, 224), "none",
                               False, 0, args.images),
            "clips_detect": ("ferv39k", tmp / "clips", make_faces(tmp / "clips", args.clips, 256, clip_frames=24),
                             "centerface", True, 16, args.clips),
        }
        for name, (dataset, root, paths, detector, detect, segments, n) in cases.items():
            t_bare = bare(paths, detect, segments)
            t_pipe = pipeline(dataset, root, tmp / f"out_{name}", detector, args.workers, segments or 16)
            results[name] = {"n": n, "bare_per_s": round(n / t_bare, 1), "pipeline_per_s": round(n / t_pipe, 1),
                             "ratio": round(t_bare / t_pipe, 2), "goal": 0.8}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
