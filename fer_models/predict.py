"""`fer predict`: a trained run on photos, folders and videos, one row per face per frame.

Faces are found and aligned as ingest finds and aligns them (CenterFace with the faces stage's defaults,
5-point alignment to the ingest crop size), then resized to the run's training size. A photo gives every
face, largest first (`face` 0 is the largest). A video is tracked (`fer_data.faces.track`), its main face
track sampled like ingest samples clips (`--sampling`), one row per sampled frame; a clip model gives
one clip-level row per video instead (`frame` null). Both engines run the same evaluation graph
(`fer_models.export`): PyTorch (batched on the GPU when there is one) or the run's exported ONNX file.
A file that cannot be read, or holds no face, becomes a reject with a reason; the others are predicted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fer_data.faces import align
from fer_data.faces.stage import FaceConfig
from fer_data.settings import Settings
from fer_models.export import ONNX_FILE, GraphSpec, OnnxGraph, check_current, load_graph
from fer_models.train import pick_device

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
ENGINES = ("torch", "onnx")
FORMATS = (".parquet", ".csv", ".json")
BATCH = 32  # face crops per model call


@dataclass(frozen=True)
class Reject:
    file: str
    reason: str


@dataclass
class Prediction:
    rows: pd.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Images and videos named or found (recursively, sorted) in named folders; other files in a folder are
    skipped, a named file is kept whatever its suffix (it becomes a reject if it does not read)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        else:
            files.append(item)
    return files


class Model:
    """The run's evaluation graph behind one call: uint8 crops [N, S, S, 3] (or clips [N, T, S, S, 3]) at any
    size in, per-task probability arrays out; resized to the training size as the backbone resizes."""

    def __init__(self, run: str | Path, engine: str = "torch", device: str = "auto") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        if engine == "onnx":
            self.onnx = OnnxGraph(Path(run) / ONNX_FILE)
            check_current(self.onnx, run)
            self.spec: GraphSpec = self.onnx.spec
        else:
            self.device = pick_device(device)
            self.graph, self.spec = load_graph(run, self.device)
        self.engine = engine

    def __call__(self, crops: np.ndarray) -> list[np.ndarray]:
        pixels = torch.from_numpy(np.ascontiguousarray(crops)).movedim(-1, -3)  # [..., 3, H, W]
        lead = pixels.shape[:-3]
        x = pixels.reshape(-1, *pixels.shape[-3:]).float()
        if x.shape[-1] != self.spec.size:
            x = F.interpolate(x, size=(self.spec.size, self.spec.size), mode="bilinear", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8).reshape(*lead, 3, self.spec.size, self.spec.size)
        if self.engine == "onnx":
            return self.onnx(x.numpy())
        with torch.no_grad():
            return [p.float().cpu().numpy() for p in self.graph(x.to(self.device))]


def columns(spec: GraphSpec, probs: list[np.ndarray]) -> dict[str, Any]:
    """Per task: the predicted class's name and a probability column per class (p_<emotion>, p_age_<bin>,
    p_<gender>), or AU probabilities au_<n>."""
    out: dict[str, Any] = {}
    for task, p in zip(spec.tasks, probs):
        names = spec.classes[task]
        if task == "au":
            out.update({name: p[:, i] for i, name in enumerate(names)})
            continue
        out[task] = [names[i] for i in p.argmax(axis=1)]
        prefix = "p_age_" if task == "age_bin" else "p_"
        out.update({f"{prefix}{name}": p[:, i] for i, name in enumerate(names)})
    return out


class Predictor:
    """Detect, align, batch and predict; rows come out in input order (file, frame, face)."""

    def __init__(self, model: Model, sampling: str | None = None, batch_size: int = BATCH,
                 faces: FaceConfig | None = None) -> None:
        from fer_data.faces.detectors import CenterFaceDetector
        from fer_data.sampling import Sampling

        self.model = model
        self.faces = faces or FaceConfig(size=Settings().size, threads=os.cpu_count() or 1)  # one session: every core
        self.detect = CenterFaceDetector(input_size=self.faces.detect_size, threshold=self.faces.threshold,
                                         threads=self.faces.threads)
        settings = Settings(**({"sampling": sampling} if sampling else {}))
        self.sampling, self.segments = Sampling.parse(settings.sampling), settings.segments
        self.batch_size = batch_size

    def faces_of(self, path: Path) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(row head, aligned crop) of each face of a photo, or of each sampled frame (or the clip) of a video."""
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from self._video(path)
            return
        from fer_data.decode import read_image

        rgb, _, _ = read_image(path)
        found = self.detect([rgb])[0]
        if not found:
            raise LookupError(f"no face above score {self.faces.threshold}")
        for i, face in enumerate(found):
            crop, _ = align.align(rgb, face.landmarks, self.faces.size)
            if self.model.spec.frames:  # a clip model sees a photo as a still clip
                crop = np.repeat(crop[None], self.model.spec.frames, axis=0)
            yield _head(path, None, i, face.box, face.landmarks, face.score), crop

    def _video(self, path: Path) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        from fer_data.decode import MAX_CLIP_PIXELS
        from fer_data.faces.track import track_video
        from fer_data.sampling import tsn_indices
        from fer_data.video import Clip

        pixels = MAX_CLIP_PIXELS // 16  # a clip frame's budget in ingest: the frames the landmarks belong to
        tracking = track_video(path, self.detect, max_pixels=pixels)
        if tracking.main is None:
            raise LookupError("no face track in the video")
        first, last = tracking.main.span
        clip = Clip(path, pixels)
        span = last - first + 1
        if self.model.spec.frames:  # a clip model: T frames over the track, one clip row
            frames = [first + i for i in tsn_indices(span, self.model.spec.frames)]
        else:
            frames = [first + i for i in self.sampling.indices(span, self.segments, clip.fps)]
        tracked = tracking.at(frames)
        images = clip.read(frames)
        crops = [align.align(image, face.landmarks, self.faces.size)[0] for image, face in zip(images, tracked)]
        if self.model.spec.frames:
            main = tracked[len(tracked) // 2]
            yield _head(path, None, 0, main.box, main.landmarks, None, track_coverage=tracking.coverage), np.stack(crops)
            return
        for face, crop in zip(tracked, crops):
            yield _head(path, face.frame, 0, face.box, face.landmarks, face.score, interpolated=face.interpolated,
                        track_coverage=tracking.coverage), crop

    def __call__(self, files: Sequence[Path], on_file: Callable[[Path, Reject | None], None] | None = None) -> Prediction:
        import time

        started = time.perf_counter()
        heads: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], np.ndarray]] = []
        rejects: list[Reject] = []

        def flush() -> None:
            if pending:
                probs = self.model(np.stack([crop for _, crop in pending]))
                heads.extend(head for head, _ in pending)
                parts.append(columns(self.model.spec, probs))
                pending.clear()

        for path in files:
            reject = None
            try:
                found = list(self.faces_of(path))
            except (ValueError, OSError, LookupError) as err:  # unreadable, not an image or video, no face
                reject = Reject(str(path), " ".join(str(err).split()) or type(err).__name__)
                rejects.append(reject)
                found = []
            for item in found:
                pending.append(item)
                if len(pending) >= self.batch_size:
                    flush()
            if on_file:
                on_file(path, reject)
        flush()
        rows = pd.DataFrame(heads)
        if heads:
            rows["frame"] = rows["frame"].astype("Int64")  # null for photos, an integer for video frames
        if parts:
            rows = pd.concat([rows, pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True)], axis=1)
        return Prediction(rows, rejects, time.perf_counter() - started)


def _head(path: Path, frame: int | None, face: int, box: Sequence[float], landmarks: np.ndarray,
          score: float | None, **extra: Any) -> dict[str, Any]:
    return {"file": str(path), "frame": frame, "face": face, "face_box": [round(float(v), 2) for v in box],
            "landmarks": [round(float(v), 2) for v in np.asarray(landmarks).reshape(-1)], "face_score": score, **extra}


def write(rows: pd.DataFrame, out: str | Path) -> Path:
    """Rows as Parquet, CSV (boxes and landmarks as JSON lists) or JSON records, by the suffix; staged, then renamed."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {out}: expected a file ending in {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        rows.to_parquet(staging, index=False)
    elif suffix == ".csv":
        flat = rows.copy()
        for name in ("face_box", "landmarks"):
            if name in flat:
                flat[name] = flat[name].map(lambda v: None if v is None else str(list(v)))
        flat.to_csv(staging, index=False)
    else:
        rows.to_json(staging, orient="records", indent=1)
    os.replace(staging, out)
    return out
