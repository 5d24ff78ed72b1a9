"""Landmark conventions: everything is reduced to the 5 points of the ArcFace template."""

from __future__ import annotations

import numpy as np

# ArcFace order: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right).
FIVE_POINT_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def landmarks68_to_5(points: np.ndarray) -> np.ndarray:
    """iBUG 68-point landmarks [68, 2] to the 5 ArcFace points: eye centres, nose tip, mouth corners."""
    p = np.asarray(points, dtype=np.float64).reshape(68, 2)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
