"""Face tracks in a video: detections linked over frames, the main face chosen, its landmarks smoothed.

Why: movie clips (DFEW, FERV39K, MAFW) hold scene cuts, people walking in and out and several
faces. "The largest face in each frame" switches between people, and frames where the detector
finds nothing turn into background. A track follows one face; the sample is cut from one track.

The rules (constants below):
- Scanning: every frame of the clip, or for a long one every `stride`-th frame, stride =
  ceil(frames / `max_detections`), so a clip costs at most `max_detections` detector runs.
  Frames are decoded and detected `DETECT_CHUNK` at a time: only detections are kept.
- Linking, in frame order: a detection continues a track whose last detection is at most
  `MAX_GAP` scanned frames back, when their boxes overlap (IoU >= `MIN_IOU`) or their landmarks
  are close (mean distance <= `MAX_LANDMARK_SHIFT` face-box sides), their sizes differ by less
  than `MAX_SIZE_RATIO`, and no scene cut lies between them. A cut is two consecutive scanned
  frames whose hue-saturation histograms differ by a Bhattacharyya distance over `CUT_DISTANCE`
  (a new shot of the same place at the same spot must not continue the previous person's track).
  Several candidates: the assignment with the most overlap (scipy's `linear_sum_assignment`).
- Main track: the one with the largest (detected frames x median face-box side): the face seen
  longest, and larger faces before background faces seen as long. Ties: the earlier track.
- Coverage: the scanned frames inside the main track's span (first to last detection; gaps in
  it are at most `MAX_GAP` by construction) over all scanned frames of the clip.
- Landmarks of any frame in the span: the 5 points at every scanned frame of the span (detected,
  or linearly interpolated between the nearest detections), Savitzky-Golay smoothed over time
  (`SMOOTH_WINDOW` scanned frames, order 2: crops do not jitter, a real head move is kept), then
  linearly interpolated to the frame. A frame without its own detection is `interpolated`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fer_data.faces.detectors import Face

MAX_DETECTIONS = 256  # detector runs per clip at most (a stride past it)
DETECT_CHUNK = 16  # frames decoded and detected at once
MAX_GAP = 3  # scanned frames a track may miss and go on
MIN_IOU = 0.3
MAX_LANDMARK_SHIFT = 0.25  # mean landmark distance over the face-box side
MAX_SIZE_RATIO = 1.6
CUT_DISTANCE = 0.5
SMOOTH_WINDOW = 5

Detect = Callable[[Sequence[np.ndarray]], list[list[Face]]]


def side(box: Sequence[float]) -> float:
    """The side of the square with the box's area."""
    return math.sqrt(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = side(a) ** 2 + side(b) ** 2 - inter
    return inter / union if union > 0 else 0.0


def scan_frames(n_frames: int, max_detections: int = MAX_DETECTIONS) -> list[int]:
    """The frame positions detected in a clip of `n_frames`: all, or every stride-th for long clips."""
    stride = max(1, math.ceil(n_frames / max(1, max_detections)))
    return list(range(0, n_frames, stride))


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """Hue-saturation histogram of a 64 px thumbnail (brightness changes within a shot barely move it)."""
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
    return cv2.normalize(hist, hist).astype(np.float32)


@dataclass
class Track:
    """One face over time: its detections at ascending frame positions."""

    frames: list[int] = field(default_factory=list)
    faces: list[Face] = field(default_factory=list)
    shot: int = 0  # scene-cut counter at its first detection

    @property
    def span(self) -> tuple[int, int]:
        return self.frames[0], self.frames[-1]

    @property
    def size(self) -> float:
        """Median face-box side."""
        return float(np.median([side(f.box) for f in self.faces]))

    @property
    def weight(self) -> float:
        """The main-track rule: detected frames x median face-box side."""
        return len(self.frames) * self.size


def _match(track: Track, face: Face) -> float | None:
    """How well `face` continues `track` (higher is better), None when it cannot."""
    last = track.faces[-1]
    s_last, s_new = side(last.box), side(face.box)
    if min(s_last, s_new) <= 0 or max(s_last, s_new) / min(s_last, s_new) >= MAX_SIZE_RATIO:
        return None
    overlap = iou(last.box, face.box)
    shift = float(np.linalg.norm(np.asarray(last.landmarks) - np.asarray(face.landmarks), axis=1).mean()) / s_last
    if overlap < MIN_IOU and shift > MAX_LANDMARK_SHIFT:
        return None
    return overlap + max(0.0, 1.0 - shift)


class Linker:
    """Online linking: feed scanned frames in order (`add`), read `tracks` at the end."""

    def __init__(self, scanned: Sequence[int]) -> None:
        self.step = {f: i for i, f in enumerate(scanned)}  # frame -> scan position
        self.tracks: list[Track] = []
        self.shot = 0
        self._hist: np.ndarray | None = None

    def add(self, frame: int, rgb: np.ndarray, faces: Sequence[Face]) -> None:
        from scipy.optimize import linear_sum_assignment

        hist = colour_histogram(rgb)
        if self._hist is not None and cv2.compareHist(self._hist, hist, cv2.HISTCMP_BHATTACHARYYA) > CUT_DISTANCE:
            self.shot += 1
        self._hist = hist
        pos = self.step[frame]
        active = [t for t in self.tracks if t.shot == self.shot and pos - self.step[t.frames[-1]] <= MAX_GAP + 1]
        score = np.full((len(active), len(faces)), -1.0)
        for i, track in enumerate(active):
            for j, face in enumerate(faces):
                got = _match(track, face)
                if got is not None:
                    score[i, j] = got
        taken: set[int] = set()
        if active and faces:
            for i, j in zip(*linear_sum_assignment(-score)):
                if score[i, j] >= 0:
                    active[i].frames.append(frame)
                    active[i].faces.append(faces[j])
                    taken.add(j)
        for j, face in enumerate(faces):
            if j not in taken:
                self.tracks.append(Track([frame], [face], self.shot))


@dataclass
class Tracking:
    """The face tracks of one clip (frame positions 0..n_frames-1 of its range) and its main track."""

    n_frames: int
    scanned: list[int]
    tracks: list[Track]

    @property
    def main(self) -> Track | None:
        """The track with the largest `Track.weight` (the earlier on ties)."""
        return max(self.tracks, key=lambda t: t.weight, default=None)

    @property
    def coverage(self) -> float:
        """Scanned frames inside the main track's span over all scanned frames (0 with no face)."""
        main = self.main
        if main is None:
            return 0.0
        first, last = main.span
        return sum(first <= f <= last for f in self.scanned) / len(self.scanned)

    def path(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames, landmarks [n, 5, 2], boxes [n, 4]) of the main track at the scanned frames of its
        span: detected where it was, linearly interpolated where not, landmarks Savitzky-Golay smoothed."""
        main = self.main
        if main is None:
            raise ValueError("no face track")
        first, last = main.span
        grid = np.array([f for f in self.scanned if first <= f <= last], np.float64)
        known = np.array(main.frames, np.float64)
        marks = np.stack([np.asarray(f.landmarks, np.float64).reshape(10) for f in main.faces])
        boxes = np.array([f.box for f in main.faces], np.float64)
        marks = np.stack([np.interp(grid, known, marks[:, k]) for k in range(10)], axis=1)
        boxes = np.stack([np.interp(grid, known, boxes[:, k]) for k in range(4)], axis=1)
        window = min(SMOOTH_WINDOW, len(grid) - (len(grid) + 1) % 2)  # odd, at most the path's length
        if window >= 3:
            from scipy.signal import savgol_filter

            marks = savgol_filter(marks, window, min(2, window - 1), axis=0)
        return grid, marks.reshape(-1, 5, 2), boxes

    def at(self, frames: Sequence[int]) -> list[TrackedFace]:
        """The main track's face at each of `frames` (positions inside its span)."""
        main = self.main
        grid, marks, boxes = self.path()
        detected = dict(zip(main.frames, main.faces)) if main else {}
        out = []
        for f in frames:
            lm = np.stack([np.interp(f, grid, marks[:, p, c]) for p in range(5) for c in range(2)]).reshape(5, 2)
            box = tuple(float(np.interp(f, grid, boxes[:, k])) for k in range(4))
            own = detected.get(f)
            out.append(TrackedFace(f, box, lm, None if own is None else own.score, own is None))
        return out


@dataclass(frozen=True)
class TrackedFace:
    """The main face at one frame: smoothed landmarks, box, the detector's score where it ran and found it."""

    frame: int
    box: tuple[float, float, float, float]
    landmarks: np.ndarray  # [5, 2]
    score: float | None
    interpolated: bool  # no detection of its own at this frame (a gap, or a frame between strides)


def track_frames(frames: Iterable[tuple[int, np.ndarray]], scanned: Sequence[int], n_frames: int,
                 detect: Detect) -> Tracking:
    """Tracks from (frame position, RGB) pairs of the `scanned` positions, in order, detected
    `DETECT_CHUNK` at a time; only the detections are kept."""
    linker = Linker(scanned)
    chunk: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        for (frame, rgb), faces in zip(chunk, detect([rgb for _, rgb in chunk])):
            linker.add(frame, rgb, faces)
        chunk.clear()

    for item in frames:
        chunk.append(item)
        if len(chunk) == DETECT_CHUNK:
            flush()
    if chunk:
        flush()
    return Tracking(n_frames, list(scanned), linker.tracks)


def track_video(path: str | Path, detect: Detect | None = None, max_detections: int = MAX_DETECTIONS,
                max_pixels: int | None = None) -> Tracking:
    """Face tracks of a video file or frame folder, the public entry point (`fer predict` on a video).

    `detect` is any `fer_data.faces.detectors` detector (default: CenterFace); frames are decoded
    `DETECT_CHUNK` at a time within `max_pixels` each (default: a clip frame's share of
    `fer_data.decode.MAX_CLIP_PIXELS` at 16 frames). Positions in the result are frame indices of
    the video; coordinates are in the decoded frames' pixels (`Clip(path, max_pixels).read` gives
    the same frames). Typical use: `t = track_video(p)`, then `t.main`, `t.coverage`, and
    `t.at(frames)` for smoothed landmarks to align with `fer_data.faces.align.align`.
    """
    from fer_data.decode import MAX_CLIP_PIXELS
    from fer_data.video import Clip

    if detect is None:
        from fer_data.faces.detectors import CenterFaceDetector

        detect = CenterFaceDetector()
    clip = Clip(Path(path), max_pixels or MAX_CLIP_PIXELS // 16)
    scanned = scan_frames(clip.n_frames, max_detections)

    def frames() -> Iterable[tuple[int, np.ndarray]]:
        for start in range(0, len(scanned), DETECT_CHUNK):
            part = scanned[start:start + DETECT_CHUNK]
            yield from zip(part, clip.read(part))

    return track_frames(frames(), scanned, clip.n_frames, detect)
