"""Clip ingest with face tracking beside the bare loop over the same frames; prints one JSON line.

What users run is timed: `fer ingest dfew RAW --out OUT` as a subprocess (default runner: the
Prefect flow; `--runner none` for the plain threads), from start to exit, on DFEW original mp4s
(the detector path: every frame detected, tracks linked, the main face's T frames aligned,
encoded, sharded, the catalog written). The bare loop, in this process, decodes the same frames
at the same size (`MAX_CLIP_PIXELS // 16` per frame), 16 at a time, and runs CenterFace on them
in batches of 16 with all cores, detector construction included: what any tracker must do at
least. Goal: pipeline rate >= 0.8 x bare rate. Also reported: the same ratio in CPU seconds (the
`fer` process and its children against this process's bare loop), which others' load on a shared
machine hardly moves.

With `--base-clips K`, the first K clips are timed again on their own, both ways, and the marginal
ratios compare what the other clips cost: what a run pays once (the default runner's private
Prefect server start and Prefect import, ~20 CPU seconds here; the detector's construction) drops
out of both sides, so they say how the per-clip path (decode, detect, track, align, encode) keeps
up with the bare loop on a dataset of any size.

The clips are the sample data's in-the-wild look-alikes (real photos, `fer_data.samples.video`):
a face moving, zooming and changing brightness, `--frames` frames at 256 x 192.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fer_data.decode import MAX_CLIP_PIXELS
from fer_data.faces.detectors import CenterFaceDetector
from fer_data.faces.track import DETECT_CHUNK, scan_frames
from fer_data.samples.video import write_face_video
from fer_data.video import Clip


def make_dfew(root: Path, n: int, frames: int) -> list[Path]:
    """A DFEW layout of `n` original mp4s only (no aligned frames: the detector runs) and its lists."""
    videos = root / "Clip" / "original"
    videos.mkdir(parents=True)
    paths = []
    for i in range(n):
        path = videos / f"{i + 1:05d}.mp4"
        write_face_video(path, frames, index=i)
        paths.append(path)
    for part in ("train", "test"):
        folder = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
        folder.mkdir(parents=True)
        for k in range(1, 6):
            rows = [f"{i + 1},{i % 7 + 1}" for i in range(n) if (i % 5 + 1 == k) == (part == "test")]
            (folder / f"set_{k}.csv").write_text("\n".join(["video_name,label", *rows]) + "\n")
    return paths


def cpu(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or its finished children so far."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def bare(paths: list[Path], segments: int = 16) -> float:
    """Seconds to decode every frame the tracker scans and detect faces in them, in batches."""
    start = time.perf_counter()
    detect = CenterFaceDetector(threads=os.cpu_count() or 1)
    for path in paths:
        clip = Clip(path, MAX_CLIP_PIXELS // segments)
        scanned = scan_frames(clip.n_frames)
        for i in range(0, len(scanned), DETECT_CHUNK):
            detect(list(clip.read(scanned[i:i + DETECT_CHUNK])))
    return time.perf_counter() - start


def fer_ingest(root: Path, out: Path, runner: str) -> tuple[float, str]:
    fer = Path(sys.executable).parent / "fer"
    start = time.perf_counter()
    done = subprocess.run([str(fer), "ingest", "dfew", str(root), "--out", str(out), "--runner", runner],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"fer ingest failed: {done.stderr[-2000:]}")
    return wall, " ".join(done.stdout.split())


@dataclass(frozen=True)
class Timing:
    bare_s: float
    pipeline_s: float
    bare_cpu_s: float
    pipeline_cpu_s: float
    summary: str  # fer ingest's output


def measure(root: Path, paths: list[Path], out: Path, runner: str) -> Timing:
    """Wall and CPU seconds of the bare loop over `paths`, then of `fer ingest` of `root` into `out`."""
    c0 = cpu(resource.RUSAGE_SELF)
    t_bare = bare(paths)
    c_bare = cpu(resource.RUSAGE_SELF) - c0
    c0 = cpu(resource.RUSAGE_CHILDREN)
    t_pipe, summary = fer_ingest(root, out, runner)
    return Timing(t_bare, t_pipe, c_bare, cpu(resource.RUSAGE_CHILDREN) - c0, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--runner", default="local", help="fer ingest --runner (local: the default)")
    parser.add_argument("--base-clips", type=int, default=0,
                        help="also time the first K clips alone and report the marginal ratios of the others")
    args = parser.parse_args()
    if not 0 <= args.base_clips < args.clips:
        parser.error("--base-clips must be at least 0 and under --clips")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dfew"
        got = measure(root, make_dfew(root, args.clips, args.frames), Path(tmp) / "out", args.runner)
        base = None
        if args.base_clips:
            root = Path(tmp) / "base"
            base = measure(root, make_dfew(root, args.base_clips, args.frames), Path(tmp) / "base_out", args.runner)
    marginal = {} if base is None else {
        "base_clips": args.base_clips,
        "marginal_ratio": round((got.bare_s - base.bare_s) / (got.pipeline_s - base.pipeline_s), 2),
        "marginal_cpu_ratio": round((got.bare_cpu_s - base.bare_cpu_s) / (got.pipeline_cpu_s - base.pipeline_cpu_s), 2),
        "base_bare_cpu_s": round(base.bare_cpu_s, 2), "base_pipeline_cpu_s": round(base.pipeline_cpu_s, 2),
    }
    print(json.dumps({
        "benchmark": "clip_ingest", "machine": f"{platform.machine()} {os.cpu_count()} cores", "runner": args.runner,
        "clips": args.clips, "frames_per_clip": args.frames, "fer_summary": got.summary,
        "bare_s": round(got.bare_s, 2), "pipeline_s": round(got.pipeline_s, 2),
        "bare_frames_per_s": round(args.clips * args.frames / got.bare_s, 1),
        "pipeline_frames_per_s": round(args.clips * args.frames / got.pipeline_s, 1),
        "ratio": round(got.bare_s / got.pipeline_s, 2), "goal": 0.8,
        # On a machine others share, wall time swings with their load; CPU seconds hardly do.
        "bare_cpu_s": round(got.bare_cpu_s, 2), "pipeline_cpu_s": round(got.pipeline_cpu_s, 2),
        "cpu_ratio": round(got.bare_cpu_s / got.pipeline_cpu_s, 2),
        **marginal,
    }))


if __name__ == "__main__":
    main()
