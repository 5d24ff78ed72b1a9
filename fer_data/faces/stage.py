"""The faces stage: decoded image + record -> aligned crops and their geometry, or a Reject.

Backends: `given` aligns on the landmarks (else the face box) the release gives; `none` only resizes
releases that are already aligned crops; `centerface` and `scrfd` detect; `box` is a last resort
that never fails: the release's face box if it gives one, else the whole image taken as the face
(a square crop of its longer side, no margin: tight crops such as FER2013's a detector misses).
`auto` picks, per record, `given` if the release gives landmarks or a box, else `none` for aligned
releases, else `centerface`.

A chain (`centerface,scrfd,box`, `FaceConfig.detector`) runs its backends in turn, each only on
the records the ones before it rejected; the `detector` column says which one made each sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_data.faces import align, parse_chain
from fer_data.faces.detectors import DETECTORS, Face
from fer_data.records import Record, Reject

DETECT_BATCH = 16  # images per detector call; larger batches ran slower on CPU

# insightface's estimate_norm calls a scikit-image API deprecated in 0.26; the result is unchanged.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class FaceConfig:
    detector: str = "auto"  # one backend or a chain, `parse_chain`
    faces: str = "largest"  # which faces of an image become samples: largest | all (the worker's choice)
    size: int = 224
    model_path: str | None = None  # ONNX file for scrfd
    threshold: float = 0.5
    detect_size: int = 320
    threads: int = 1

    def __post_init__(self) -> None:
        parse_chain(self.detector)
        align.check_size(self.size)

    @property
    def chain(self) -> tuple[str, ...]:
        return parse_chain(self.detector)


@dataclass
class AlignedFace:
    crop: np.ndarray  # [size, size, 3] uint8 RGB
    geometry: dict[str, Any] = field(default_factory=dict)  # catalog columns: face_box, landmarks, ...


def backend_for(rec: Record, detector: str) -> str:
    """The backend the first link of `detector` (one backend or a chain) uses for `rec`."""
    first = parse_chain(detector)[0]
    if first != "auto":
        return first
    if rec.landmarks is not None or rec.face_box is not None:
        return "given"
    return "none" if rec.aligned or rec.pixels is not None else "centerface"


def uses_detector(rec: Record, detector: str) -> bool:
    """Whether any link of the chain may run a detector model on `rec` (the cores go to its sessions)."""
    return backend_for(rec, detector) in DETECTORS or any(name in DETECTORS for name in parse_chain(detector)[1:])


def face_geometry(backend: str, matrix: np.ndarray, box: Sequence[float] | None = None, score: float | None = None,
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

    def detector(self, name: str):
        if name not in self._detectors:
            kwargs: dict[str, Any] = {"threshold": self.config.threshold, "threads": self.config.threads}
            if name == "scrfd":
                kwargs["model_path"] = self.config.model_path
            else:
                kwargs["input_size"] = self.config.detect_size
            self._detectors[name] = DETECTORS[name](**kwargs)
        return self._detectors[name]

    def __call__(self, items: Sequence[tuple[Record, np.ndarray]]) -> list[AlignedFace | Reject]:
        """Each image's largest face aligned, or why there is none."""
        return [got if isinstance(got, Reject) else got[0] for got in self._align(items, every=False)]

    def every(self, items: Sequence[tuple[Record, np.ndarray]]) -> list[list[AlignedFace] | Reject]:
        """Each image's faces aligned, largest first (`detectors.by_size`), or why there is none. A
        backend that finds no faces itself (`given`, `none`, `box`) gives one."""
        return self._align(items, every=True)

    def _align(self, items: Sequence[tuple[Record, np.ndarray]], every: bool) -> list[list[AlignedFace] | Reject]:
        """Every link of the chain on the items the links before it rejected; a detector's images go
        through it together, `DETECT_BATCH` at a time. What no link finds keeps every link's reason."""
        out: list[list[AlignedFace] | Reject | None] = [None] * len(items)
        why: dict[int, list[Reject]] = {i: [] for i in range(len(items))}
        pending = list(range(len(items)))
        for link in self.config.chain:
            backends = {i: backend_for(items[i][0], link) for i in pending}
            found: dict[int, list[Face]] = {}
            for name in sorted({b for b in backends.values() if b in DETECTORS}):
                idx = [i for i in pending if backends[i] == name]
                for start in range(0, len(idx), DETECT_BATCH):  # a batch of clips is many frames: cap the tensor
                    chunk = idx[start:start + DETECT_BATCH]
                    found.update(zip(chunk, self.detector(name)([items[i][1] for i in chunk])))
            for i in pending:
                rec, image = items[i]
                got = self._faces(rec, image, backends[i], found.get(i, []), every)
                if isinstance(got, Reject):
                    why[i].append(got)
                else:
                    out[i] = got
            pending = [i for i in pending if out[i] is None]
        for i in pending:
            last = why[i][-1]
            detail = "; ".join(r.detail or r.reason for r in why[i])
            out[i] = last if len(why[i]) == 1 else Reject(last.dataset, last.source_path, last.stage, last.reason, detail)
        return out  # type: ignore[return-value]  # every item has faces or a reject now

    def _faces(self, rec: Record, image: np.ndarray, backend: str, detected: list[Face], every: bool
               ) -> list[AlignedFace] | Reject:
        """One image's aligned faces by one backend (`detected`: a detector's faces, largest first)."""
        size = self.config.size
        if backend == "none":
            crop, m = align.resize(image, size)
            return [AlignedFace(crop, face_geometry("none", m))]
        if backend == "given" and rec.landmarks is not None:
            lm = np.asarray(rec.landmarks, np.float64)
            crop, m = align.align(image, lm, size)
            return [AlignedFace(crop, face_geometry("given", m, rec.face_box, None, lm))]
        if backend in ("given", "box") and rec.face_box is not None:
            crop, m = align.crop_box(image, rec.face_box, size)
            return [AlignedFace(crop, face_geometry(backend, m, rec.face_box))]
        if backend == "box":
            whole = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
            crop, m = align.crop_box(image, whole, size, margin=0.0)
            return [AlignedFace(crop, face_geometry("box", m, whole))]
        if backend == "given":
            return Reject(rec.dataset, rec.source_path, "detect", "no_given_face",
                          "detector 'given' but the release gives no landmarks or box for this sample")
        if not detected:
            return Reject(rec.dataset, rec.source_path, "detect", "no_face",
                          f"{backend} found no face above score {self.config.threshold}")
        out = []
        for face in detected if every else detected[:1]:
            crop, m = align.align(image, face.landmarks, size)
            out.append(AlignedFace(crop, face_geometry(backend, m, face.box, face.score, face.landmarks)))
        return out
