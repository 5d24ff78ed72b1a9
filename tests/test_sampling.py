"""Frame sampling (fer_data.sampling, `fer ingest --sampling`) and the frame step of video-frame
image releases (`--frame-step`), on the generated sample data's native layouts.

Every sample frame carries its frame number as a barcode (fer_data.samples.video), so the frames a
mode picks are read back from the decoded frames, not only from the catalog's `frame_indices`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fer_data import catalog
from fer_data.datasets import get_adapter
from fer_data.ingest import ingest, load
from fer_data.loaders import make_loader, select
from fer_data.sampling import Sampling
from fer_data.samples.images import make_plans, write_files
from fer_data.samples.video import DISFA_FOLDS, DISFA_FRAMES, _casme2, _dfew, _disfa, _ferv39k, read_code
from fer_data.settings import SHARD_FORMAT, Settings


def write(planner, root: Path, suffixes: tuple[str, ...] = ()) -> dict:
    """One sample-data root (only its files ending in `suffixes`, if given); what it must give."""
    plan = make_plans([planner], 0)[0]
    write_files(root, {rel: f for rel, f in plan.files.items() if not suffixes or rel.endswith(suffixes)})
    return plan.expected()


@pytest.mark.parametrize(("mode", "n", "fps", "want"), [
    ("tsn", 8, None, [1, 3, 5, 7]),  # 4 segments of 8 frames: their centres
    ("stride:3", 10, None, [0, 3, 6, 9]),
    ("fps:5", 12, 25.0, [0, 5, 10]),  # every 5th frame of a 25 fps video
    ("fps:5", 12, None, [0, 5, 10]),  # a frame folder: taken as 25 fps
    ("fps:10", 6, 10.0, [0, 1, 2, 3, 4, 5]),
    ("all", 3, None, [0, 1, 2]),
])
def test_modes_pick_these_frames(mode: str, n: int, fps: float | None, want: list[int]) -> None:
    assert Sampling.parse(mode).indices(n, 4 if mode == "tsn" else 16, fps) == want


def test_keyframes_are_the_marked_positions() -> None:
    assert Sampling.parse("keyframes").indices(20, 16, None, [0, 7, 19]) == [0, 7, 19]
    with pytest.raises(ValueError, match="no keyframes"):
        Sampling.parse("keyframes").indices(20, 16)


@pytest.mark.parametrize("bad", ["fps:0", "fps:x", "stride:0", "stride:1.5", "every", "all:2", ""])
def test_bad_modes_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="sampling"):
        Settings(sampling=bad)


def test_bad_mode_on_the_command_line_exits_2_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fer_cli.main", "ingest", "ferv39k", str(tmp_path), "--out",
                           str(tmp_path / "out"), "--sampling", "stride:0"], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "stride:0" in lines[0]


def test_settings_that_change_bytes_are_in_the_fingerprint() -> None:
    base = Settings().params()
    assert base["version"] == SHARD_FORMAT == 4
    for change in ({"sampling": "all"}, {"min_face_coverage": 0.7}, {"track_frames": 64}, {"frame_step": 5}):
        assert Settings(**change).params() != base, change


def clip_frames(out: Path, dataset: str) -> dict[str, list[int]]:
    rows = catalog.query(out / "catalog.duckdb", "SELECT sample_id, list(frame ORDER BY t) AS frames FROM clip_frames "
                                                 "JOIN samples USING (sample_id) WHERE dataset = ? GROUP BY 1", [dataset])
    return {sid: list(frames) for sid, frames in zip(rows.sample_id, rows.frames)}


def test_stride_gives_variable_clips_the_loader_pads(tmp_path: Path) -> None:
    """FERV39K crops (8 to 40 frames) at stride 6: 2 to 7 frames per clip, each every 6th frame;
    a batch pads each clip to its longest with its last frame and says how many are its own."""
    want = write(_ferv39k, tmp_path / "raw")
    result = ingest("ferv39k", tmp_path / "raw", tmp_path / "out", sampling="stride:6", size=112)
    assert result.n_samples == want["ingested"]
    frames = clip_frames(tmp_path / "out", "ferv39k")
    for sid, got in frames.items():
        n = want["labels"][sid]["n_frames"]
        assert got == list(range(0, n, 6)), sid
    assert len({len(f) for f in frames.values()}) > 2
    urls, ids = select(tmp_path / "out" / "catalog.duckdb", "dataset = 'ferv39k'")
    seen = 0
    for pixels, targets in make_loader(urls, batch_size=8, train=False, sample_ids=ids):
        lengths = [len(frames[sid]) for sid in targets["sample_id"]]
        assert targets["n_frames"].tolist() == lengths
        assert pixels.shape[:2] == (len(lengths), max(lengths)) and pixels.shape[2:] == (3, 112, 112)
        for b, n in enumerate(lengths):  # padding repeats the clip's last frame
            assert (pixels[b, n:] == pixels[b, n - 1]).all()
        seen += len(lengths)
    assert seen == len(frames)


def test_fps_on_video_files_reads_those_frames(tmp_path: Path) -> None:
    """DFEW originals at 25 fps, fps:5: frames 0, 5, 10, ... (barcodes say which frame was decoded)."""
    write(_dfew, tmp_path / "raw", (".mp4", ".csv"))
    recs = [r for r in get_adapter("dfew").records(tmp_path / "raw") if getattr(r, "aligned", True) is False]
    assert len(recs) > 3
    for rec in recs[:3]:
        got = load(rec, 16, Sampling.parse("fps:5"))
        assert got.extra["frame_indices"] == list(range(0, got.source.n_frames, 5))
        assert [read_code(f) - 1 for f in got.frames] == got.extra["frame_indices"]


def test_keyframes_on_casme2_keep_onset_apex_offset(tmp_path: Path) -> None:
    want = write(_casme2, tmp_path / "raw")
    result = ingest("casme2", tmp_path / "raw", tmp_path / "out", sampling="keyframes", detector="none", size=112)
    assert result.n_samples == want["ingested"]
    rows = catalog.query(tmp_path / "out" / "catalog.duckdb",
                         "SELECT sample_id, extra->>'frame_indices' AS fi, extra->'keyframes' AS k FROM samples")
    assert len(rows) == want["ingested"]
    for sid, fi, marks in zip(rows.sample_id, rows.fi, rows.k):
        marks = json.loads(marks)
        assert json.loads(fi) == sorted(marks.values()), sid
        lab = want["labels"][sid]
        assert ("apex" in marks) == (lab["apex"] is not None), sid
    assert clip_frames(tmp_path / "out", "casme2")  # one clip_frames row per sampled frame


def test_keyframes_where_the_release_marks_none_is_a_reject(tmp_path: Path) -> None:
    want = write(_ferv39k, tmp_path / "raw")
    result = ingest("ferv39k", tmp_path / "raw", tmp_path / "out", sampling="keyframes", size=112)
    assert (result.n_samples, result.n_rejects) == (0, result.rows_read)
    reasons = catalog.query(tmp_path / "out" / "catalog.duckdb",
                            "SELECT reason, count(*) AS n FROM rejects WHERE stage = 'decode' GROUP BY 1")
    assert dict(zip(reasons.reason, reasons.n)) == {"no_keyframes": want["ingested"]}


def test_frame_step_reads_every_kth_labelled_frame(tmp_path: Path) -> None:
    want = write(_disfa, tmp_path / "raw")
    result = ingest("disfa", tmp_path / "raw", tmp_path / "out", frame_step=5, detector="none", size=112)
    frames = catalog.query(tmp_path / "out" / "catalog.duckdb",
                           "SELECT DISTINCT CAST(extra->>'frame' AS INTEGER) AS f FROM samples ORDER BY 1").f.tolist()
    assert frames == list(range(1, DISFA_FRAMES + 1, 5))  # (SN003's label frame past its video is no sample)
    assert result.rows_read == result.n_samples + result.n_rejects < want["rows"]
    assert result.n_samples == sum(map(len, DISFA_FOLDS.values())) * len(frames)
