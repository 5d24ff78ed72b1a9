"""Face tracks (fer_data.faces.track): linking, the main-track rule, coverage, interpolation and
smoothing, scene cuts, the stride of long clips, and `track_video` on a real video.

Detections here are `Face`s with boxes and 5 landmarks placed by hand (a face at a known spot);
frames are flat colours, so only a scene cut (a colour change) tells shots apart. The generated
sample clips with a cut, a second person and a face leaving the frame go through `fer ingest`
in tests/test_video_adapters.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from fer_data.faces.detectors import Face
from fer_data.faces.track import MAX_GAP, Tracking, scan_frames, track_frames, track_video

GREY = np.full((96, 128, 3), 120, np.uint8)
RED = np.zeros((96, 128, 3), np.uint8)
RED[..., 0] = 200


def face(cx: float, cy: float, side: float = 40.0, score: float = 0.9) -> Face:
    """A frontal face centred at (cx, cy): box of `side`, landmarks where a frontal face has them."""
    s = side / 2
    marks = np.array([[cx - 0.35 * s, cy - 0.3 * s], [cx + 0.35 * s, cy - 0.3 * s], [cx, cy],
                      [cx - 0.3 * s, cy + 0.45 * s], [cx + 0.3 * s, cy + 0.45 * s]])
    return Face((cx - s, cy - s, cx + s, cy + s), score, marks)


def run(per_frame: list[list[Face]], frames: list[np.ndarray] | None = None) -> Tracking:
    """Track hand-made detections: the detector returns `per_frame[i]` for frame i."""
    n = len(per_frame)
    pixels = frames or [GREY] * n
    calls = iter(per_frame)

    def detect(images: list[np.ndarray]) -> list[list[Face]]:
        return [next(calls) for _ in images]

    return track_frames(((i, pixels[i]) for i in range(n)), list(range(n)), n, detect)


def test_a_moving_face_is_one_track_and_a_second_face_another() -> None:
    per_frame = [[face(40 + 2 * i, 48)] + ([face(100, 30, 20)] if i >= 5 else []) for i in range(12)]
    got = run(per_frame)
    assert len(got.tracks) == 2
    assert got.main is got.tracks[0] and got.main.frames == list(range(12))
    assert got.tracks[1].frames == list(range(5, 12))
    assert got.coverage == 1.0


def test_main_track_is_frames_times_face_size() -> None:
    """A face twice the size of one seen in all 12 frames wins when seen in 7 (7 x 40 = 280 > 12 x 20 = 240)
    and loses when seen in 5 (200 < 240)."""
    big_7 = [[face(30, 48, 20)] + ([face(90, 48, 40)] if i < 7 else []) for i in range(12)]
    assert run(big_7).main.span == (0, 6)
    big_5 = [[face(30, 48, 20)] + ([face(90, 48, 40)] if i < 5 else []) for i in range(12)]
    assert run(big_5).main.span == (0, 11)


def test_a_scene_cut_ends_a_track_even_where_the_next_face_sits() -> None:
    """The same box before and after a colour cut: two tracks, not one person."""
    frames = [GREY] * 6 + [RED] * 4
    got = run([[face(64, 48)] for _ in range(10)], frames)
    assert [t.span for t in got.tracks] == [(0, 5), (6, 9)]
    assert got.main.span == (0, 5) and got.coverage == pytest.approx(0.6)


def test_short_gaps_are_bridged_and_interpolated_long_ones_split() -> None:
    per_frame = [[face(40 + 4 * i, 48)] for i in range(12)]
    for i in (4, 5):  # a 2-frame gap: the same track, its landmarks interpolated there
        per_frame[i] = []
    got = run(per_frame)
    assert len(got.tracks) == 1 and got.coverage == 1.0
    at = got.at([3, 4, 5, 6])
    assert [f.interpolated for f in at] == [False, True, True, False]
    assert [f.score for f in at][1:3] == [None, None]
    assert at[1].landmarks[2] == pytest.approx([56.0, 48.0], abs=0.5)  # on the straight line between 3 and 6
    long_gap = [[face(40, 48)] if i < 3 or i > 3 + MAX_GAP + 1 else [] for i in range(12)]
    assert len(run(long_gap).tracks) == 2


def test_jittery_landmarks_are_smoothed() -> None:
    rng = np.random.default_rng(0)
    raw = [face(64, 48) for _ in range(20)]
    noisy = [[Face(f.box, f.score, f.landmarks + rng.normal(0, 1.5, (5, 2)))] for f in raw]
    got = run(noisy)
    smoothed = np.stack([f.landmarks for f in got.at(range(20))])
    detected = np.stack([f[0].landmarks for f in noisy])
    truth = raw[0].landmarks
    assert np.abs(np.diff(smoothed, axis=0)).mean() < 0.6 * np.abs(np.diff(detected, axis=0)).mean()
    assert np.abs(smoothed - truth).mean() < np.abs(detected - truth).mean()


def test_no_face_and_coverage_of_a_face_that_leaves() -> None:
    assert run([[] for _ in range(8)]).main is None and run([[] for _ in range(8)]).coverage == 0.0
    leaves = run([[face(64, 48)] if i < 3 else [] for i in range(10)])
    assert leaves.main.span == (0, 2) and leaves.coverage == pytest.approx(0.3)


def test_long_clips_are_scanned_at_a_stride() -> None:
    assert scan_frames(40, 256) == list(range(40))
    assert scan_frames(1000, 256) == list(range(0, 1000, 4)) and len(scan_frames(10**5, 256)) <= 256


def test_track_video_on_a_real_clip(tmp_path) -> None:
    """The public entry point on an mp4 whose face walks out at frame 14 of 40 (sample data's clip)."""
    from fer_data.samples.video import WILD, _video

    path = tmp_path / "leaving.mp4"
    path.write_bytes(_video(_leaving_clip(), "mp4"))
    got = track_video(path)
    first, last, coverage, _, _ = WILD["leaves_early"]
    assert got.main.span[0] == first and abs(got.main.span[1] - last) <= 1
    assert got.coverage == pytest.approx(coverage, abs=0.05) and got.n_frames == 40


def _leaving_clip() -> list[np.ndarray]:
    from fer_data.samples.video import PHOTOS, WILD, Shot, _leaving

    shot = Shot(PHOTOS[0], (256, 192), 0.5, False, 1.0, 0.0, (0.0, 0.0), 1.0)
    at = _leaving(shot, WILD["leaves_early"][1])
    return [at(j).render(j + 1) for j in range(40)]
