"""Every ingest setting and its default, in one light module: `fer ingest`, the Prefect flow and the
library build the same `Settings`, and the command line reads its defaults here without loading
OpenCV or the detectors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fer_data.faces import FACES, check_size, parse_chain
from fer_data.sampling import Sampling

SHARD_FORMAT = 4  # bump when the bytes written for the same inputs change
SPEED_ONLY = ("threads", "workers", "processes", "chunk_frames")  # settings that change speed, never a shard's bytes


@dataclass(frozen=True)
class Settings:
    """Every ingest setting and its default, in one place: `fer ingest`, the Prefect flow and the
    library all build this. All but `SPEED_ONLY` decide the shards' bytes (and so their fingerprint)."""

    detector: str = "auto"  # one backend or a chain, `centerface,scrfd,box` (fer_data.faces.parse_chain)
    # An image's faces: `largest` one sample; `all` each face its own sample `<id>#<k>` (clips: their main track)
    faces: str = "largest"
    size: int = 224
    quality: int = 95
    shard_samples: int = 1000
    shard_bytes: int = 256 * 2**20
    batch_size: int = 16  # records per detector batch
    detector_model: str | None = None
    segments: int = 16
    workers: int | None = None  # workers; None: `share_cores` decides
    processes: bool | None = None  # workers as processes, else threads; None: `ingest.local_runner` decides
    threads: int = 1  # onnxruntime threads per detector session; `share_cores` sets it
    # Frames per unit of work handed to a runner (a Prefect task, a Dask future): coarse enough that
    # orchestration is a small part of the work, small enough that the window of units in flight
    # (2 per worker, encoded crops included) stays a few tens of MB.
    chunk_frames: int = 1024
    # Clips (fer_data.video.Sampling, fer_data.faces.track): which frames a sample holds; a clip the
    # detector runs on whose main face track spans less than `min_face_coverage` of it is a reject
    # (`low_face_coverage`); at most `track_frames` frames of a clip are detected (a stride past it).
    sampling: str = "tsn"
    min_face_coverage: float = 0.5
    track_frames: int = 256
    # Video-frame image releases (DISFA, BP4D: one sample per labelled frame): only frames numbered
    # 1, 1 + k, 1 + 2k, ... are read (their label rows; the others are not rows read).
    frame_step: int = 1

    def __post_init__(self) -> None:
        parse_chain(self.detector)  # named before anything is read
        if self.faces not in FACES:
            raise ValueError(f"faces {self.faces!r}: expected one of {', '.join(FACES)}")
        if "scrfd" in parse_chain(self.detector) and not self.detector_model:
            raise ValueError("detector scrfd needs its ONNX file: give --detector-model (e.g. det_10g.onnx)")
        check_size(self.size)
        Sampling.parse(self.sampling)
        if not 0.0 <= self.min_face_coverage <= 1.0:
            raise ValueError(f"ingest setting min_face_coverage={self.min_face_coverage}: expected 0..1")
        for name in ("quality", "shard_samples", "shard_bytes", "batch_size", "segments", "chunk_frames",
                     "track_frames", "frame_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"ingest setting {name}={getattr(self, name)}: expected at least 1")

    def params(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}, "version": SHARD_FORMAT}
