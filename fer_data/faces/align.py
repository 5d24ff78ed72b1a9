"""5-point similarity alignment to the ArcFace template (insightface's `norm_crop`), and plain resizing.

Both return the crop and the 2x3 matrix that maps source pixels into it; the catalog stores
the matrix so any crop can be recomputed or mapped back. insightface is imported on first use (its
import takes seconds: every ingest paid it, though pre-aligned releases never align).
"""

from __future__ import annotations

from types import ModuleType

import cv2
import numpy as np

from fer_data.faces import check_size


def _face_align() -> ModuleType:
    from insightface.utils import face_align

    return face_align


def template(size: int) -> np.ndarray:
    """The 5 ArcFace template points scaled to a `size` crop, as insightface's estimate_norm places them."""
    check_size(size)
    dst = _face_align().arcface_dst
    if size % 112 == 0:
        return dst * (size / 112.0)
    return dst * (size / 128.0) + np.array([8.0 * size / 128.0, 0.0])


def align(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face so its 5 landmarks land on the template: (crop [size, size, 3], matrix [2, 3])."""
    matrix = _face_align().estimate_norm(np.asarray(landmarks, np.float32).reshape(5, 2), check_size(size))
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return crop, matrix


def resize(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An already aligned crop, only resized to `size` (matrix: the per-axis scale)."""
    h, w = image.shape[:2]
    matrix = np.array([[size / w, 0.0, 0.0], [0.0, size / h, 0.0]])
    if (h, w) == (size, size):
        return image, matrix  # cv2.resize to the same size is an exact copy: skip it
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp), matrix


def crop_box(image: np.ndarray, box: tuple[float, float, float, float], size: int, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A square crop around a given face box (no landmarks known), `margin` of the side added around it."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale = size / side
    matrix = np.array([[scale, 0.0, size / 2 - scale * cx], [0.0, scale, size / 2 - scale * cy]])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0), matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to [N, 2] points."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]
