"""What adapters yield: one `Record` per sample, or one `Reject` per row that cannot become one.

Records carry harmonized labels only (ids of fer_data.labels, None = missing); everything a
release has without a canonical slot goes to `extra`, which the catalog keeps as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Record:
    sample_id: str
    dataset: str
    split: str
    source_path: str  # absolute path (image, video file or frame folder); "FILE#row=N" inside a label file
    kind: str = "image"  # image | clip
    subject: str | None = None
    emotion: int | None = None
    valence: float | None = None
    arousal: float | None = None
    age: float | None = None
    age_bin: int | None = None
    gender: int | None = None
    # AU number -> (present, intensity); present None = annotated as unknown.
    aus: dict[int, tuple[bool | None, float | None]] = field(default_factory=dict)
    # Face geometry given by the release (used by the `given` detector).
    face_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    landmarks: tuple[tuple[float, float], ...] | None = None  # 5 points, ArcFace order
    aligned: bool = False  # the source image is already an aligned face crop
    pixels: np.ndarray | None = None  # decoded image carried inside a label file (FER2013)
    frame_index: int | None = None  # image sample that is one frame of the video at source_path (DISFA)
    frame_range: tuple[int, int] | None = None  # clip: inclusive frame range of the video/folder (CASME II)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    dataset: str
    source_path: str
    stage: str  # adapter | decode | detect | shard
    reason: str  # short code: missing_file, corrupt_image, label_out_of_range, ...
    detail: str = ""
