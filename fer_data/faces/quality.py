"""Pose and quality of an aligned face: the catalog's yaw, pitch, roll, face_size, sharpness and face_score.

Why these: in-the-wild photos and clips hold profiles, tiny and blurred faces; the columns let a
training selection filter them in SQL (`WHERE abs(yaw) < 30 AND face_size >= 64`) and `fer stats`
show their distributions per dataset.

Head pose from the 5 ArcFace landmarks (left eye, right eye, nose, left and right mouth corner, in
image left/right order), in degrees. It is a geometric estimate, good for telling frontal from
half-profile from profile and for ranking; not a calibrated 3D head-pose model (errors of ~10 deg):

- roll: the angle of the eye line against the image's horizontal. Positive when the face is turned
  clockwise on screen (the image-right eye lower, y pointing down). The other two angles are
  measured after undoing the roll about the eyes' midpoint.
- yaw: the nose tip's horizontal offset from the face's mid-line (the line from the eyes' midpoint
  to the mouth corners' midpoint, taken at the nose's height), divided by the distance between the
  eyes. A nose `NOSE_DEPTH` eye-distances in front of the eye/mouth plane turned by `yaw` moves
  by depth * sin(yaw) while the eye distance shrinks to cos(yaw), so yaw = atan(offset / NOSE_DEPTH).
  Positive when the face turns towards the image's right (the subject's own left); a horizontal
  mirror flips its sign.
- pitch: where the nose tip sits between the eye line and the mouth line, against where the ArcFace
  template puts it (about halfway). Chin up moves the nose towards the eyes: pitch = atan of the
  nose's rise above the template's height over NOSE_DEPTH, both in units of the eye distance.
  Positive when the face looks up. Its zero depends on where a detector puts the nose tip: CenterFace's
  sits lower than the template's, so frontal photos read about -5 to -15 (the astronaut -6).

Landmarks that cannot give an angle (eyes on one point) and samples without landmarks (the `none`
backend's pre-aligned crops, a release that gives only a box) have NULL pose. face_size is the box's
side, or without a box the side of the source region the crop covers (a pre-aligned crop: the
image's side). A clip's columns are means over its sampled frames (`columns`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from fer_data.faces.stage import AlignedFace

# Nose-tip depth in front of the plane of the eye centres and mouth corners, in eye distances
# (a generic head: ~27 mm in front of eyes 63 mm apart); the one constant the angles depend on.
NOSE_DEPTH = 0.45
# The ArcFace template (insightface's arcface_dst, 112 px), here so this module needs no insightface.
_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                      [41.5493, 92.3655], [70.7299, 92.2041]])

POSE_COLUMNS = ("yaw", "pitch", "roll")
QUALITY_COLUMNS = (*POSE_COLUMNS, "face_size", "sharpness", "face_score")  # what `columns` returns


def _frontal(landmarks: np.ndarray) -> tuple[float, float, float, float] | None:
    """After undoing the roll, in eye distances: (nose offset from the mid-line, nose height as a share
    of the eye-to-mouth height, eye-to-mouth height), and the roll in degrees; None for degenerate points."""
    p = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.isfinite(p).all():
        return None
    dx, dy = p[1] - p[0]
    eye_dist = math.hypot(dx, dy)
    if eye_dist < 1e-6:
        return None
    c, s = dx / eye_dist, dy / eye_dist
    q = (p - (p[0] + p[1]) / 2) @ np.array([[c, -s], [s, c]]) / eye_dist  # rotated by -roll, eyes' midpoint at 0
    mouth = (q[3] + q[4]) / 2
    if mouth[1] < 1e-6:  # the mouth not below the eyes: no face geometry
        return None
    nose = q[2]
    share = nose[1] / mouth[1]
    return float(nose[0] - mouth[0] * share), float(share), float(mouth[1]), math.degrees(math.atan2(dy, dx))


_T_OFFSET, _T_SHARE, _, _ = _frontal(_TEMPLATE)  # type: ignore[misc]  # the template is frontal: yaw = pitch = 0


def pose(landmarks: np.ndarray | Sequence[float]) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees from 5 landmarks [5, 2] (or 10 numbers), by the module's convention;
    None when the points give no face geometry."""
    got = _frontal(np.asarray(landmarks, np.float64))
    if got is None:
        return None
    offset, share, height, roll = got
    yaw = math.degrees(math.atan2(offset - _T_OFFSET, NOSE_DEPTH))
    pitch = math.degrees(math.atan2((_T_SHARE - share) * height, NOSE_DEPTH))
    return yaw, pitch, roll


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low for blurred or upscaled faces. Compare it only
    between crops of one size (one ingest's `size`): it grows with detail per pixel."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    # int16 holds the 4-neighbour Laplacian of uint8 exactly, and its sum and sum of squares are exact
    # in OpenCV's doubles (< 2**53): the variance from them in integers, correctly rounded once. 8 µs at
    # 224 px where meanStdDev took 60 (a tenth of a pre-aligned row's ingest).
    lap = cv2.Laplacian(grey, cv2.CV_16S)
    n, total, squares = lap.size, int(cv2.sumElems(lap)[0]), int(cv2.norm(lap, cv2.NORM_L2SQR))
    return (squares * n - total * total) / (n * n)


def face_size(box: Sequence[float]) -> float:
    """The side of the square with the face box's area (x0, y0, x1, y1), in the box's pixels."""
    x0, y0, x1, y1 = box
    return math.sqrt(max(0.0, x1 - x0) * max(0.0, y1 - y0))


def crop_side(matrix: Sequence[float], size: int) -> float:
    """The side, in source pixels, of the region a `size` crop made with this 2x3 matrix covers: the
    face size of a sample with no box (a pre-aligned crop: the image's side)."""
    a, b, _, d, e, _ = matrix
    return size / math.sqrt(abs(a * e - b * d))


def measure(face: AlignedFace) -> dict[str, Any]:
    """One aligned face's columns, in its geometry's pixels: pose from its landmarks (None without),
    face_size from its box (else the region its crop covers), the crop's sharpness, the detector score."""
    geo = face.geometry
    angles = pose(geo["landmarks"]) if geo.get("landmarks") is not None else None
    if geo.get("face_box") is not None:
        size = face_size(geo["face_box"])
    else:
        size = crop_side(geo["align_matrix"], face.crop.shape[0])
    return {**dict(zip(POSE_COLUMNS, angles or (None, None, None))), "face_size": size,
            "sharpness": sharpness(face.crop), "face_score": geo.get("face_score")}


def columns(faces: Sequence[AlignedFace]) -> dict[str, Any]:
    """The catalog columns of a sample from its aligned faces (one for an image, the sampled frames of
    a clip): each the mean over the faces that have it (frames without landmarks give no pose), None
    where none has. Sizes are in the faces' (decoded) pixels: `ingest.in_source_pixels` maps
    face_size to source pixels like the box."""
    per_face = [measure(f) for f in faces]
    if len(per_face) == 1:  # an image's one face: the mean of one value, as the loop below makes it (0 + -0.0 is 0.0)
        return {key: None if value is None else float((0 + value) / 1) for key, value in per_face[0].items()}
    out: dict[str, Any] = {}
    for key in QUALITY_COLUMNS:
        values = [m[key] for m in per_face if m[key] is not None]
        out[key] = float(sum(values) / len(values)) if values else None
    return out
