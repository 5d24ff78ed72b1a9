"""Every ingest setting and its default, in one light module: `fer ingest`, the Prefect flow and the
library build the same `Settings`, and the command line reads its defaults here without loading
OpenCV or the detectors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fer_data.faces import BACKENDS, check_size

SHARD_FORMAT = 3  # bump when the bytes written for the same inputs change
SPEED_ONLY = ("threads", "workers", "chunk_frames")  # settings that change speed, never a shard's bytes


@dataclass(frozen=True)
class Settings:
    """Every ingest setting and its default, in one place: `fer ingest`, the Prefect flow and the
    library all build this. All but `SPEED_ONLY` decide the shards' bytes (and so their fingerprint)."""

    detector: str = "auto"
    size: int = 224
    quality: int = 95
    shard_samples: int = 1000
    shard_bytes: int = 256 * 2**20
    batch_size: int = 16  # records per detector batch
    detector_model: str | None = None
    segments: int = 16
    workers: int | None = None  # worker threads; None: `share_cores` decides
    threads: int = 1  # onnxruntime threads per detector session; `share_cores` sets it
    # Frames per unit of work handed to a runner (a Prefect task, a Dask future): coarse enough that
    # orchestration is a small part of the work, small enough that the window of units in flight
    # (2 per worker, encoded crops included) stays a few tens of MB.
    chunk_frames: int = 1024

    def __post_init__(self) -> None:
        if self.detector not in BACKENDS:  # named before anything is read
            raise ValueError(f"detector {self.detector!r} not in {BACKENDS}")
        check_size(self.size)
        for name in ("quality", "shard_samples", "shard_bytes", "batch_size", "segments", "chunk_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"ingest setting {name}={getattr(self, name)}: expected at least 1")

    def params(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}, "version": SHARD_FORMAT}
