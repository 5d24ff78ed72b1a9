"""The faces stage: decoded image + record -> aligned crop and its geometry, or a Reject.

`auto` picks, per record, the landmarks the release gives (`given`), then plain resizing for
releases that are already aligned crops (`none`), else the `centerface` detector.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_data.faces import BACKENDS, align
from fer_data.faces.detectors import DETECTORS, Face
from fer_data.records import Record, Reject

DETECT_BATCH = 16  # images per detector call; larger batches ran slower on CPU

# insightface's estimate_norm calls a scikit-image API deprecated in 0.26; the result is unchanged.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class FaceConfig:
    detector: str = "auto"
    size: int = 224
    model_path: str | None = None  # ONNX file for scrfd
    threshold: float = 0.5
    detect_size: int = 320
    threads: int = 1

    def __post_init__(self) -> None:
        if self.detector not in BACKENDS:
            raise ValueError(f"detector {self.detector!r} not in {BACKENDS}")
        align.check_size(self.size)


@dataclass
class AlignedFace:
    crop: np.ndarray  # [size, size, 3] uint8 RGB
    geometry: dict[str, Any] = field(default_factory=dict)  # catalog columns: face_box, landmarks, ...


def backend_for(rec: Record, detector: str) -> str:
    if detector != "auto":
        return detector
    if rec.landmarks is not None or rec.face_box is not None:
        return "given"
    return "none" if rec.aligned or rec.pixels is not None else "centerface"


def _geometry(backend: str, matrix: np.ndarray, box: Sequence[float] | None = None, score: float | None = None,
              landmarks: np.ndarray | None = None) -> dict[str, Any]:
    return {
        "detector": backend,
        "align_matrix": [float(v) for v in np.asarray(matrix).reshape(-1)],
        "face_box": None if box is None else [float(v) for v in box],
        "face_score": score,
        "landmarks": None if landmarks is None else [float(v) for v in np.asarray(landmarks).reshape(-1)],
    }


class FaceAligner:
    """One per worker: holds that worker's detector sessions, created on first use."""

    def __init__(self, config: FaceConfig) -> None:
        self.config = config
        self._detectors: dict[str, Any] = {}

    def _detector(self, name: str):
        if name not in self._detectors:
            kwargs: dict[str, Any] = {"threshold": self.config.threshold, "threads": self.config.threads}
            if name == "scrfd":
                kwargs["model_path"] = self.config.model_path
            else:
                kwargs["input_size"] = self.config.detect_size
            self._detectors[name] = DETECTORS[name](**kwargs)
        return self._detectors[name]

    def __call__(self, items: Sequence[tuple[Record, np.ndarray]]) -> list[AlignedFace | Reject]:
        """Align a batch; images needing a detector go through it together, one batch per backend."""
        size = self.config.size
        backends = [backend_for(rec, self.config.detector) for rec, _ in items]
        found: dict[int, Face | None] = {}
        for name in sorted({b for b in backends if b in DETECTORS}):
            idx = [i for i, b in enumerate(backends) if b == name]
            for start in range(0, len(idx), DETECT_BATCH):  # a batch of clips is many frames: cap the tensor
                chunk = idx[start:start + DETECT_BATCH]
                found.update((i, faces[0] if faces else None)
                             for i, faces in zip(chunk, self._detector(name)([items[i][1] for i in chunk])))
        out: list[AlignedFace | Reject] = []
        for i, ((rec, image), backend) in enumerate(zip(items, backends)):
            if backend == "none":
                crop, m = align.resize(image, size)
                out.append(AlignedFace(crop, _geometry("none", m)))
            elif backend == "given" and rec.landmarks is not None:
                lm = np.asarray(rec.landmarks, np.float64)
                crop, m = align.align(image, lm, size)
                out.append(AlignedFace(crop, _geometry("given", m, rec.face_box, None, lm)))
            elif backend == "given" and rec.face_box is not None:
                crop, m = align.crop_box(image, rec.face_box, size)
                out.append(AlignedFace(crop, _geometry("given", m, rec.face_box)))
            elif backend == "given":
                out.append(Reject(rec.dataset, rec.source_path, "detect", "no_given_face",
                                  "detector 'given' but the release gives no landmarks or box for this sample"))
            elif (face := found[i]) is None:
                out.append(Reject(rec.dataset, rec.source_path, "detect", "no_face",
                                  f"{backend} found no face above score {self.config.threshold}"))
            else:
                crop, m = align.align(image, face.landmarks, size)
                out.append(AlignedFace(crop, _geometry(backend, m, face.box, face.score, face.landmarks)))
        return out
