"""Video and AU adapters (DFEW, FERV39K, BP4D, DISFA, CASME II): hand-written fixtures, the generated
sample data, and both end to end through ingest (16 sampled frames per clip, shards, catalog).

Hand-written label files are literal text in the native format; expected values are worked out by
hand from shared/DATASETS.md into the canonical ids (0 neutral, 1 happiness, 2 sadness, 3 surprise,
4 fear, 5 disgust, 6 anger). The generated data (fer_data.samples.video) records what it wrote, so the
end-to-end checks compare the catalog and the shards with that record, not with hand-typed numbers.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import textwrap
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import openpyxl
import pytest
from PIL import Image

from fer_data import catalog, shards
from fer_data.datasets import BadRow, LayoutError, get_adapter
from fer_data.datasets.bp4d import BP4D_AUS, BP4D_FOLDS as PUBLISHED_FOLDS
from fer_data.datasets.casme2 import parse_aus
from fer_data.datasets.disfa import DISFA_AUS
from fer_data.ingest import ingest, load
from fer_data.loaders import au_rates, samples_source, select
from fer_data.records import Record, Reject
from fer_data.samples.video import (BP4D_FOLDS, BP4D_FRAMES, DISFA_FRAMES, PLANNERS, expected_video_counts, read_code,
                                   write_video_samples)
from fer_data.video import frame_files

SEGMENTS = 16
VIDEO_DATASETS = ("dfew", "ferv39k", "bp4d", "disfa", "casme2")

# ------------------------------------------------------------------------------------- helpers


def split_items(name: str, root: Path) -> tuple[list[Record], list[Reject]]:
    items = list(get_adapter(name).records(root))
    assert all(isinstance(i, (Record, Reject)) for i in items)
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Reject)]


def reasons(rejects: list[Reject]) -> dict[str, int]:
    return dict(Counter(r.reason for r in rejects))


def write_image(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (120, 90, 60)).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def write_sheet(path: Path, rows: list[list[Any]],
                header: tuple = ("Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                                 "Action Units", "Estimated Emotion")) -> Path:
    book = openpyxl.Workbook()
    for row in [list(header), *rows]:
        book.active.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


# ------------------------------------------------------------------------------------- DFEW


def write_dfew(root: Path, videos: dict[int, tuple[int, int]], frames: tuple[int, ...] = (), mp4: tuple[int, ...] = (),
               extra: dict[tuple[str, int], list[str]] | None = None) -> Path:
    """DFEW lists: each video (number -> (label, test fold)) in its fold's test list and the other 4 train lists."""
    lists = {(part, k): ["video_name,label"] for part in ("train", "test") for k in range(1, 6)}
    for number, (label, fold) in videos.items():
        for k in range(1, 6):
            lists[("test" if k == fold else "train", k)].append(f"{number},{label}")
    for key, lines in (extra or {}).items():
        lists[key] += lines
    for (part, k), lines in lists.items():
        write_text(root / "EmoLabel_DataSplit" / f"{part}(single-labeled)" / f"set_{k}.csv", "\n".join(lines) + "\n")
    for number in frames:
        write_image(root / "Clip" / "clip_224x224" / f"{number:05d}" / "00001.jpg")
    for number in mp4:
        (root / "Clip" / "original").mkdir(parents=True, exist_ok=True)
        (root / "Clip" / "original" / f"{number:05d}.mp4").write_bytes(b"not decoded by the adapter")
    return root


def test_dfew_labels_1_to_7_and_folds(tmp_path: Path) -> None:
    videos = {label: (label, (label - 1) % 5 + 1) for label in range(1, 8)}  # video n has label n
    recs, rejects = split_items("dfew", write_dfew(tmp_path, videos, frames=tuple(videos)))
    assert rejects == []
    by_id = {r.sample_id: r for r in recs}
    # Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear
    assert {sid: r.emotion for sid, r in by_id.items()} == {
        "dfew:00001": 1, "dfew:00002": 2, "dfew:00003": 0, "dfew:00004": 6, "dfew:00005": 3, "dfew:00006": 5,
        "dfew:00007": 4}
    assert by_id["dfew:00003"].extra == {"fold": 3, "train_folds": [1, 2, 4, 5], "dfew_label": 3}
    assert {sid for sid, r in by_id.items() if r.split == "test"} == {"dfew:00001", "dfew:00006"}  # fold 1
    assert all(r.kind == "clip" and r.aligned and r.source_path.endswith(r.sample_id[5:]) for r in recs)


def test_dfew_prefers_frames_and_falls_back_to_the_original_video(tmp_path: Path) -> None:
    root = write_dfew(tmp_path, {1: (1, 1), 2: (2, 2), 3: (3, 3)}, frames=(1,), mp4=(1, 2))
    (root / "Clip" / "clip_224x224" / "00002").mkdir()  # empty frame folder: use the mp4
    recs, rejects = split_items("dfew", root)
    src = {r.sample_id: (Path(r.source_path).name, r.aligned) for r in recs}
    assert src == {"dfew:00001": ("00001", True), "dfew:00002": ("00002.mp4", False)}
    assert [(r.reason, Path(r.source_path).name) for r in rejects] == [("missing_file", "00003")]


def test_dfew_bad_rows_reject_only_themselves(tmp_path: Path) -> None:
    extra = {("train", 2): ["clip7,3", "8,0", "9"], ("test", 1): ["10,2"], ("train", 3): ["10,4"],
             ("test", 2): ["11,5"], ("test", 4): ["11,5"]}
    root = write_dfew(tmp_path, {1: (1, 1)}, frames=(1, 10, 11), extra=extra)
    recs, rejects = split_items("dfew", root)
    assert [r.sample_id for r in recs] == ["dfew:00001"]
    assert reasons(rejects) == {"unparsable_row": 2, "label_out_of_range": 1, "conflicting_labels": 1,
                                "conflicting_folds": 1}


def test_dfew_missing_list_file_is_a_layout_error_naming_it(tmp_path: Path) -> None:
    root = write_dfew(tmp_path, {1: (1, 1)}, frames=(1,))
    (root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_4.csv").unlink()
    with pytest.raises(LayoutError, match=r"test\(single-labeled\)/set_4\.csv"):
        list(get_adapter("dfew").records(root))


def test_dfew_fold_selection_is_plain_sql() -> None:
    """The queries the dfew docstring documents, on the JSON ingest stores in samples.extra."""
    con = duckdb.connect()
    con.execute("CREATE TABLE s (id INT, extra JSON)")
    con.execute("""INSERT INTO s VALUES (1, '{"fold": 3, "train_folds": [1, 2, 4, 5]}'),
                                         (2, '{"fold": 1, "train_folds": [2, 3, 4, 5]}')""")
    test3 = con.execute("SELECT id FROM s WHERE CAST(extra->>'fold' AS INTEGER) = 3").fetchall()
    train3 = con.execute("SELECT id FROM s WHERE list_contains(CAST(extra->'train_folds' AS INTEGER[]), 3)").fetchall()
    assert (test3, train3) == ([(1,)], [(2,)])


# ------------------------------------------------------------------------------------- FERV39K

FERV_ROWS = [("Action/Angry/0001", "Angry", 6), ("Daily/Disgust/0002", "Disgust", 5), ("Crime/Fear/0003", "Fear", 4),
             ("Action/Happy/0004", "Happy", 1), ("Daily/Neutral/0005", "Neutral", 0), ("Action/Sad/0010", "Sad", 2),
             ("Romance/Surprise/0007", "Surprise", 3)]


@pytest.mark.parametrize(("train_fmt", "test_fmt"), [
    ("{} {}", "path,label\n{},{}"),        # as released: spaces without header; comma with header
    ("{}\t{}", "{};{}"),                   # tab; semicolon without header
    ("Path Label\n{}   {}", "{}, {}"),     # header and runs of spaces; comma + space
])
def test_ferv39k_classes_and_sniffed_separators(tmp_path: Path, train_fmt: str, test_fmt: str) -> None:
    def lines(fmt: str, rows: list[tuple[str, str, int]]) -> str:
        head, _, row = fmt.rpartition("\n")
        return "\n".join(([head] if head else []) + [row.format(p, c) for p, c, _ in rows]) + "\n"

    for rel, _, _ in FERV_ROWS:
        write_image(tmp_path / "2_ClipsforFaceCrop" / rel / "001.jpg")
    write_text(tmp_path / "4_setups/All_scenes/train_All.csv", lines(train_fmt, FERV_ROWS[:5]))
    write_text(tmp_path / "4_setups/All_scenes/test_All.csv", lines(test_fmt, FERV_ROWS[5:]))
    recs, rejects = split_items("ferv39k", tmp_path)
    assert rejects == []
    assert {r.sample_id: (r.emotion, r.split) for r in recs} == {
        f"ferv39k:{rel}": (emotion, "train" if i < 5 else "test") for i, (rel, _, emotion) in enumerate(FERV_ROWS)}
    sad = next(r for r in recs if r.sample_id == "ferv39k:Action/Sad/0010")
    assert sad.aligned and sad.kind == "clip" and sad.extra["scene"] == "Action"
    assert sad.source_path == str(tmp_path / "2_ClipsforFaceCrop/Action/Sad/0010")


def test_ferv39k_bad_rows_and_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "2_ClipsforFaceCrop/Action/Sad/0010/001.jpg")
    write_text(tmp_path / "4_setups/All_scenes/train_All.csv", """
        Action/Sad/0010 Happy
        Daily/Contempt/0101 Contempt
        Action/Happy/0102 Happy
        Action/Sad/0103
        ../../../etc Happy
        """)
    with pytest.raises(LayoutError, match=r"4_setups/All_scenes/test_All\.csv"):
        list(get_adapter("ferv39k").records(tmp_path))
    write_text(tmp_path / "4_setups/All_scenes/test_All.csv", "")
    recs, rejects = split_items("ferv39k", tmp_path)
    assert [(r.sample_id, r.emotion, r.extra.get("class_mismatch")) for r in recs] == [
        ("ferv39k:Action/Sad/0010", 1, True)]  # the class column wins; the mismatch is flagged
    assert [r.reason for r in rejects] == ["label_out_of_range", "missing_file", "unparsable_row",
                                           "path_escapes_root"]


# ------------------------------------------------------------------------------------- BP4D


def test_bp4d_codes_padding_and_folds(tmp_path: Path) -> None:
    write_text(tmp_path / "AUCoding/AU_OCC/F001_T1.csv", """
        0,1,2,4,12,23
        7,1,0,9,1,0
        12,0,0,0,1,9
        15,9,9,9,9,9
        100,1,1,1,1,1
        """)
    write_text(tmp_path / "AUCoding/AU_OCC/M011_T2.csv", "0,12\n3,1\n")
    write_text(tmp_path / "AUCoding/AU_OCC/X999_T1.csv", "0,12\n3,0\n")
    for rel in ("F001/T1/0007.jpg", "F001/T1/12.jpg", "F001/T1/015.jpg", "M011/T2/003.jpg", "X999/T1/3.jpg"):
        write_image(tmp_path / "BP4D-training" / rel)
    recs, rejects = split_items("bp4d", tmp_path)
    by_id = {r.sample_id: r for r in recs}
    assert list(by_id) == ["bp4d:F001/T1/0007", "bp4d:F001/T1/0012", "bp4d:F001/T1/0015", "bp4d:M011/T2/0003",
                           "bp4d:X999/T1/0003"]
    assert by_id["bp4d:F001/T1/0007"].aus == {1: (True, None), 2: (False, None), 4: (None, None), 12: (True, None),
                                              23: (False, None)}
    assert all(p is None for p, _ in by_id["bp4d:F001/T1/0015"].aus.values())  # 9 = unknown
    assert [Path(r.source_path).name for r in recs[:3]] == ["0007.jpg", "12.jpg", "015.jpg"]
    assert [(r.subject, r.extra["fold"], r.split) for r in recs[2:]] == [
        ("F001", 1, "test"), ("M011", 2, "train"), ("X999", None, "train")]
    assert [(r.reason, r.source_path.endswith("F001_T1.csv#row=3")) for r in rejects] == [("missing_file", True)]
    assert BP4D_AUS == (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)


def test_bp4d_bad_rows_and_files_are_rejects(tmp_path: Path) -> None:
    write_text(tmp_path / "AUCoding/AU_OCC/F001_T1.csv", "0,1,12\n1,0,2\n2,x,1\n3,1\n4,1,1\nfour,1,1\n")
    write_text(tmp_path / "AUCoding/AU_OCC/F002_T1.csv", "frame,AU1\n1,0\n")
    write_text(tmp_path / "AUCoding/AU_OCC/notes.csv", "0,1\n1,0\n")
    write_image(tmp_path / "BP4D-training/F001/T1/4.jpg")
    recs, rejects = split_items("bp4d", tmp_path)
    assert [r.sample_id for r in recs] == ["bp4d:F001/T1/0004"]
    assert [r.reason for r in rejects] == ["label_out_of_range", "label_out_of_range", "unparsable_row",
                                           "unparsable_row", "unparsable_header", "unparsable_name"]


def test_bp4d_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"AUCoding/AU_OCC/F001_T1\.csv"):
        list(get_adapter("bp4d").records(tmp_path))
    write_text(tmp_path / "AUCoding/AU_OCC/F001_T1.csv", "0,1\n1,0\n")
    with pytest.raises(LayoutError, match=r"BP4D-training"):
        list(get_adapter("bp4d").records(tmp_path))


# ------------------------------------------------------------------------------------- DISFA


def test_disfa_intensity_threshold_frames_and_folds(tmp_path: Path) -> None:
    write_text(tmp_path / "ActionUnit_Labels/SN001/SN001_au1.txt", "1,2\n2,1\n3,0\n4,5\n")
    write_text(tmp_path / "ActionUnit_Labels/SN001/SN001_au12.txt", "1,0\n2,3\n3,1\n4,2\n")
    write_text(tmp_path / "ActionUnit_Labels/SN013/SN013_au25.txt", "1 4\n")  # whitespace separated
    write_text(tmp_path / "ActionUnit_Labels/SN099/SN099_au1.txt", "1,0\n")
    for subject in ("SN001", "SN013", "SN099"):
        (tmp_path / "Videos_LeftCamera").mkdir(exist_ok=True)
        (tmp_path / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi").write_bytes(b"not decoded by the adapter")
    recs, rejects = split_items("disfa", tmp_path)
    assert rejects == []
    sn001 = [r for r in recs if r.subject == "SN001"]
    assert [r.sample_id for r in sn001] == [f"disfa:SN001/{f:05d}" for f in (1, 2, 3, 4)]
    assert [r.frame_index for r in sn001] == [0, 1, 2, 3]  # 0-based into the video
    assert [r.aus for r in sn001] == [
        {1: (True, 2.0), 12: (False, 0.0)}, {1: (False, 1.0), 12: (True, 3.0)},
        {1: (False, 0.0), 12: (False, 1.0)}, {1: (True, 5.0), 12: (True, 2.0)}]
    assert all(r.kind == "image" and r.source_path.endswith("LeftVideoSN001_comp.avi") for r in sn001)
    assert [(r.subject, r.extra["fold"], r.split) for r in recs[3:]] == [
        ("SN001", 1, "test"), ("SN013", 2, "train"), ("SN099", None, "train")]
    assert DISFA_AUS == (1, 2, 4, 6, 9, 12, 25, 26)


def test_disfa_bad_lines_and_missing_video(tmp_path: Path) -> None:
    write_text(tmp_path / "ActionUnit_Labels/SN002/SN002_au1.txt", "1,0\n2,x\n3,6\n0,1\n1,3\n4\n")
    write_text(tmp_path / "ActionUnit_Labels/SN002/SN002_au2.txt", "1,0\n2,0\n")
    with pytest.raises(LayoutError, match=r"Videos_LeftCamera"):
        list(get_adapter("disfa").records(tmp_path))
    (tmp_path / "Videos_LeftCamera").mkdir()
    recs, rejects = split_items("disfa", tmp_path)
    assert recs == []
    assert [r.reason for r in rejects] == ["unparsable_row", "label_out_of_range", "label_out_of_range",
                                           "duplicate_frame", "unparsable_row", "missing_file", "missing_file"]
    (tmp_path / "Videos_LeftCamera/LeftVideoSN002_comp.avi").write_bytes(b"x")
    recs, _ = split_items("disfa", tmp_path)
    assert [r.aus for r in recs] == [{1: (False, 0.0), 2: (False, 0.0)}, {2: (False, 0.0)}]  # frame 2 lost AU1 only


def test_disfa_without_labels_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"ActionUnit_Labels/SN001/SN001_au1\.txt"):
        list(get_adapter("disfa").records(tmp_path))


# ------------------------------------------------------------------------------------- CASME II


@pytest.mark.parametrize(("cell", "aus", "uncertain"), [
    ("4+7", {4, 7}, False), ("R4+L10", {4, 10}, False), ("4+?", {4}, True), ("L1+L2+R4", {1, 2, 4}, False),
    ("12", {12}, False), (12, {12}, False), (12.0, {12}, False), ("AU4 + AU7", {4, 7}, False), ("?", set(), True),
    ("", set(), False), (None, set(), False),
])
def test_casme2_action_unit_strings(cell: Any, aus: set[int], uncertain: bool) -> None:
    assert parse_aus(cell) == (aus, uncertain)


def test_casme2_action_unit_string_without_au_is_bad() -> None:
    with pytest.raises(BadRow):
        parse_aus("4+X")


def frames(folder: Path, numbers: range) -> None:
    for n in numbers:
        write_image(folder / f"img{n}.jpg")


def test_casme2_sheet_frames_emotions_and_aus(tmp_path: Path) -> None:
    frames(tmp_path / "CASME2-RAW/sub01/EP02_01f", range(1, 13))  # img1..img12: img2 < img10
    frames(tmp_path / "CASME2_RAW_selected/sub02/EP03_02", range(46, 60))
    frames(tmp_path / "sub03/EP01_01", range(5, 9))
    frames(tmp_path / "Cropped/sub04/EP05_01", range(1, 5))
    write_sheet(tmp_path / "CASME2-coding-20140508.xlsx", [
        [1, "EP02_01f", None, 2, 6, 10, None, "4+7", "happiness"],
        ["02", "EP03_02", None, 46, "/", 70, None, "R4+L10", "repression"],
        ["sub03", "EP01_01", None, 5, 6, 8, None, "1+?", "Others"],
        [4.0, "EP05_01", None, 1, 2, 4, None, 12, "Disgust"],
    ])
    recs, rejects = split_items("casme2", tmp_path)
    assert rejects == []
    by_id = {r.sample_id: r for r in recs}
    assert list(by_id) == ["casme2:sub01/EP02_01f", "casme2:sub02/EP03_02", "casme2:sub03/EP01_01",
                           "casme2:sub04/EP05_01"]
    first = by_id["casme2:sub01/EP02_01f"]
    assert first.frame_range == (1, 9)  # positions of img2 and img10 in the numerically sorted folder
    assert [f.name for f in frame_files(Path(first.source_path))][1:10:8] == ["img2.jpg", "img10.jpg"]
    assert first.extra["apex_index"] == 5 and first.extra["apex_frame"] == 6
    assert [r.emotion for r in recs] == [1, None, None, 5]
    assert [r.extra["estimated_emotion"] for r in recs] == ["happiness", "repression", "Others", "Disgust"]
    assert [r.subject for r in recs] == ["sub01", "sub02", "sub03", "sub04"]
    assert [r.aligned for r in recs] == [False, False, False, True]
    # vocabulary 1, 4, 7, 10, 12: unlisted AUs are absent, except in the row with "?" (unknown)
    assert {au: p for au, (p, _) in first.aus.items()} == {1: False, 4: True, 7: True, 10: False, 12: False}
    assert {au: p for au, (p, _) in recs[2].aus.items()} == {1: True, 4: None, 7: None, 10: None, 12: None}
    second = by_id["casme2:sub02/EP03_02"]  # offset past the last frame, apex "/"
    assert second.frame_range == (0, 13) and second.extra["range_adjusted"] is True
    assert second.extra["apex_frame"] is None and second.extra["apex_raw"] == "/"


def test_casme2_bad_rows_are_rejects(tmp_path: Path) -> None:
    frames(tmp_path / "sub01/EP02_01f", range(1, 13))
    write_sheet(tmp_path / "casme2.xlsx", [
        [1, "EP02_01f", None, 8, 9, 4, None, "4", "happiness"],       # onset after offset
        [1, "EP02_01f", None, "/", 9, 10, None, "4", "happiness"],    # no onset
        [1, "EP02_01f", None, 2, 3, 4, None, "4", "joy"],             # no CASME II emotion
        [1, "EP09_09", None, 2, 3, 4, None, "4", "fear"],             # no frame folder
        [1, "EP02_01f", None, 20, 22, 30, None, "4", "fear"],         # no frame in range
        [None, None, None, None, None, None, None, None, None],      # blank row: skipped
        ["s1", "EP02_01f", None, 2, 3, 4, None, "4", "fear"],         # no subject number
    ])
    recs, rejects = split_items("casme2", tmp_path)
    assert recs == []
    assert [r.reason for r in rejects] == ["label_out_of_range", "unparsable_row", "label_out_of_range",
                                           "missing_file", "frame_out_of_range", "unparsable_row"]


def test_casme2_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"CASME2-coding-20140508\.xlsx"):
        list(get_adapter("casme2").records(tmp_path))
    write_sheet(tmp_path / "CASME2-coding.xlsx", [], header=("Subject", "Filename", "OnsetFrame", "OffsetFrame"))
    with pytest.raises(LayoutError, match=r"Estimated Emotion"):
        list(get_adapter("casme2").records(tmp_path))
    (tmp_path / "CASME2-coding.xlsx").write_bytes(b"not a zip")
    with pytest.raises(LayoutError, match=r"not a readable \.xlsx"):
        list(get_adapter("casme2").records(tmp_path))


# ------------------------------------------------------------------------------------- generated sample data


@pytest.fixture(scope="module")
def video_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    start = time.process_time()  # CPU seconds: other work on a shared machine does not count
    roots = write_video_samples(tmp_path_factory.mktemp("video_raw"))
    elapsed = time.process_time() - start
    assert elapsed < 15, f"writing the video samples took {elapsed:.1f} CPU s"
    return roots


@pytest.fixture(scope="module")
def expected(video_roots: dict[str, Path]) -> dict[str, dict]:
    return expected_video_counts(video_roots)


def test_sample_data_is_small_and_deterministic(video_roots: dict[str, Path]) -> None:
    files = [p for root in video_roots.values() for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 16 * 2**20
    # One file of each kind, rebuilt from the same seed: the same bytes; another seed: different ones.
    picks = {"_dfew": ".mp4", "_ferv39k": ".csv", "_bp4d": ".jpg", "_disfa": ".avi", "_casme2": ".xlsx"}
    for planner in PLANNERS:
        suffix = picks[planner.__name__]
        plans = [planner(np.random.default_rng([seed, zlib.crc32(planner.__name__.encode())])) for seed in (0, 1)]
        rel = next(r for r in sorted(plans[0].files) if r.endswith(suffix))
        written = (video_roots[plans[0].folder] / rel).read_bytes()
        assert plans[0].files[rel]() == written, rel
        other = plans[1].files.get(rel) or plans[1].files[next(r for r in sorted(plans[1].files) if r.endswith(suffix))]
        assert other() != written, rel


@pytest.mark.parametrize("name", VIDEO_DATASETS)
def test_adapters_on_sample_data(video_roots: dict[str, Path], expected: dict[str, dict], name: str) -> None:
    recs, rejects = split_items(name, video_roots[name])
    want = expected[name]
    assert (len(recs), reasons(rejects)) == (want["samples"], want["reasons"])
    for rec in recs:
        lab = want["labels"][rec.sample_id]
        assert rec.split == lab["split"]
        if "emotion" in lab:
            assert rec.emotion == lab["emotion"], rec.sample_id
        if "aus" in lab:
            assert {str(au): p for au, (p, _) in rec.aus.items()} == lab["aus"], rec.sample_id
        if "fold" in lab:
            assert rec.extra["fold"] == lab["fold"]
        if "intensity" in lab:
            assert {str(au): i for au, (_, i) in rec.aus.items()} == lab["intensity"]


def test_sample_rates_are_imbalanced_like_the_real_data(expected: dict[str, dict]) -> None:
    rate: Counter[int] = Counter()
    labeled: Counter[int] = Counter()
    for _, au, n_labeled, n_present in expected["bp4d"]["au_occurrence"]:
        rate[au] += n_present
        labeled[au] += n_labeled
    assert labeled[23] > 0 and rate[23] / labeled[23] < rate[12] / labeled[12]
    frames = sum(len(s) for s in BP4D_FOLDS.values()) * 2 * BP4D_FRAMES  # subjects x tasks (T1, T6) x coded frames
    assert sum(labeled.values()) < frames * 23  # some cells are 9 = unknown


def test_disfa_frame_index_reads_the_labelled_frame(video_roots: dict[str, Path]) -> None:
    """Every frame carries its number as a barcode: frame_index = frame - 1 must decode that frame."""
    recs, _ = split_items("disfa", video_roots["disfa"])
    for rec in recs[::7]:
        if rec.extra["frame"] > DISFA_FRAMES:
            continue  # past the end of the video (a decode reject)
        assert read_code(load(rec, SEGMENTS).frames[0]) == rec.extra["frame"], rec.sample_id


def test_casme2_clip_samples_onset_to_offset(video_roots: dict[str, Path], expected: dict[str, dict]) -> None:
    recs, _ = split_items("casme2", video_roots["casme2"])
    for rec in recs:
        onset, offset = expected["casme2"]["labels"][rec.sample_id]["frames"]
        got = load(rec, SEGMENTS)
        codes = [read_code(f) for f in got.frames]
        numbers = [int(p.stem[3:]) for p in frame_files(Path(rec.source_path))]
        assert len(codes) == SEGMENTS and codes == sorted(codes)
        assert codes == [numbers[i] for i in got.extra["frame_indices"]]
        assert onset <= codes[0] and codes[-1] <= offset
        assert got.extra.get("short_clip", False) == (offset - onset + 1 < SEGMENTS)


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ingested(video_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """All five sample datasets through ingest into one catalog (batches of 4 so both workers detect)."""
    out = tmp_path_factory.mktemp("video_out")
    results = {name: ingest(name, video_roots[name], out, segments=SEGMENTS, workers=2, batch_size=4)
               for name in VIDEO_DATASETS}
    return {"out": out, "results": results, "catalog": out / "catalog.duckdb"}


def query(ingested: dict[str, Any], sql: str, *params: Any) -> list[tuple]:
    """Rows as Python tuples (NULL -> None, not NaN as in a DataFrame)."""
    with catalog.connect(ingested["catalog"], read_only=True) as con:
        return [tuple(r) for r in con.execute(sql, list(params)).fetchall()]


@pytest.mark.parametrize("name", VIDEO_DATASETS)
def test_rows_read_equal_samples_plus_rejects(ingested: dict[str, Any], expected: dict[str, dict], name: str) -> None:
    result = ingested["results"][name]
    assert result.rows_read == expected[name]["rows"] == result.n_samples + result.n_rejects
    stages = dict(query(ingested, "SELECT stage, count(*) FROM rejects WHERE dataset = ? AND stage = 'adapter' "
                                  "GROUP BY stage", name))
    assert stages.get("adapter", 0) == expected[name]["rejects"]


@pytest.mark.parametrize("name", ["dfew", "ferv39k", "bp4d", "disfa", "casme2"])
def test_every_expected_sample_reaches_the_catalog(ingested: dict[str, Any], expected: dict[str, dict],
                                                   name: str) -> None:
    want = expected[name]
    got = {sid for (sid,) in query(ingested, "SELECT sample_id FROM samples WHERE dataset = ?", name)}
    assert got == set(want["labels"]) - set(want["dropped"])
    later = query(ingested, "SELECT count(*) FROM rejects WHERE dataset = ? AND stage <> 'adapter'", name)[0][0]
    assert later == sum(want["ingest_reasons"].values())


def test_frame_past_the_video_end_is_an_empty_video_reject(ingested: dict[str, Any]) -> None:
    assert query(ingested, "SELECT reason FROM rejects WHERE dataset = 'disfa' AND stage = 'decode'") == [
        ("empty_video",)]


def test_frame_past_the_video_end_is_one_decode_reject(ingested: dict[str, Any]) -> None:
    rows = query(ingested, "SELECT source_path, detail FROM rejects WHERE dataset = 'disfa' AND stage = 'decode'")
    assert len(rows) == 1 and rows[0][0].endswith("LeftVideoSN003_comp.avi")
    assert f"{DISFA_FRAMES}..{DISFA_FRAMES}" in rows[0][1]


def shard_members(out: Path, shard: str) -> dict[str, bytes]:
    with tarfile.open(out / shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.mark.parametrize("name", ["dfew", "ferv39k", "casme2"])
def test_clips_are_16_frames_with_labels_and_short_flags(ingested: dict[str, Any], expected: dict[str, dict],
                                                        name: str) -> None:
    rows = query(ingested, "SELECT sample_id, shard, emotion, split, n_frames, extra->>'short_clip', "
                           "extra->>'frame_indices' FROM samples WHERE dataset = ? ORDER BY 1", name)
    assert rows, f"no {name} clip reached the catalog"
    members: dict[str, bytes] = {}
    for shard in {r[1] for r in rows}:
        members.update(shard_members(ingested["out"], shard))
    n_short = 0
    for sid, _, emotion, split, n_frames, short, indices in rows:
        lab = expected[name]["labels"][sid]
        key = shards.sample_key(sid)
        frames = sorted(m for m in members if m.startswith(key + ".") and m.endswith(".jpg"))
        assert frames == [f"{key}.{t:02d}.jpg" for t in range(SEGMENTS)], sid
        assert Image.open(io.BytesIO(members[frames[0]])).size == (224, 224)
        assert (emotion, split) == (lab["emotion"], lab["split"]), sid
        assert n_frames == lab["n_frames"], sid
        assert (short == "true") == (lab["n_frames"] < SEGMENTS), sid
        assert len(json.loads(indices)) == SEGMENTS
        n_short += short == "true"
    assert n_short > 0  # the sample data exercises the repeat-and-flag path


# ------------------------------------------------------------------------------------- face tracks


def wild_clips(expected: dict[str, dict]) -> dict[str, dict]:
    """The DFEW originals with a scene cut, a second person, a face leaving: sample id -> expected track."""
    return {sid: lab["track"] for sid, lab in expected["dfew"]["labels"].items() if "track" in lab}


def test_wild_clips_follow_the_main_face(ingested: dict[str, Any], expected: dict[str, dict]) -> None:
    """Track choice, coverage and rejects as the sample data wrote them down: every sampled frame of a
    kept clip lies in the main face's span (none after the cut, none after the face left), every
    aligned box is the main face's (not the second person's), and a face that leaves early is a reject."""
    wild = wild_clips(expected)
    assert {t["kind"] for t in wild.values()} == {"cut", "second_person", "leaves_late", "leaves_early"}
    for sid, track in wild.items():
        n = expected["dfew"]["labels"][sid]["n_frames"]
        slack = track["slack"] / n
        if sid in expected["dfew"]["dropped"]:
            [(reason, detail)] = query(ingested, "SELECT reason, detail FROM rejects WHERE source_path = ?",
                                       f"Clip/original/{sid[5:]}.mp4")
            assert reason == "low_face_coverage", sid
            assert float(re.search(r"face_coverage ([\d.]+)", detail)[1]) == pytest.approx(track["coverage"], abs=slack)
            continue
        [(coverage, n_tracks, detector, indices)] = query(
            ingested, "SELECT face_coverage, n_tracks, detector, extra->>'frame_indices' FROM samples "
                      "WHERE sample_id = ?", sid)
        assert coverage == pytest.approx(track["coverage"], abs=slack), (track["kind"], coverage)
        assert n_tracks >= track["min_tracks"] and detector == "centerface", track["kind"]
        indices = json.loads(indices)
        assert len(indices) == SEGMENTS and track["first"] <= min(indices), track["kind"]
        assert max(indices) <= track["last"] + (0 if track["kind"] == "cut" else track["slack"]), track["kind"]
        boxes = query(ingested, "SELECT face_box FROM clip_frames WHERE sample_id = ? ORDER BY t", sid)
        centres = [(b[0] + b[2]) / 2 for (b,) in boxes]
        assert len(centres) == SEGMENTS and all(88 < x < 168 for x in centres), (track["kind"], centres)  # 256 px wide


def test_tracked_clips_record_every_sampled_frame(ingested: dict[str, Any]) -> None:
    """clip_frames: one row per sampled frame at the frame `frame_indices` names; boxes and landmarks
    where the detector ran (NULL for the aligned releases, whose tracks columns are NULL too)."""
    rows = query(ingested, "SELECT s.sample_id, s.detector, s.extra->>'frame_indices', list(f.frame ORDER BY f.t), "
                           "count(f.landmarks), count(f.interpolated), s.face_coverage, s.n_tracks "
                           "FROM samples s JOIN clip_frames f USING (sample_id) WHERE s.kind = 'clip' GROUP BY ALL")
    assert {r[1] for r in rows} == {"centerface", "none"}
    for sid, detector, indices, frames, n_marks, n_flags, coverage, n_tracks in rows:
        assert frames == json.loads(indices), sid
        tracked = detector == "centerface"
        assert (n_marks, n_flags) == ((SEGMENTS, SEGMENTS) if tracked else (0, 0)), sid
        assert (coverage is not None, n_tracks is not None) == (tracked, tracked), sid
    n_clips = query(ingested, "SELECT count(*) FROM samples WHERE kind = 'clip'")[0][0]
    assert len(rows) == n_clips


@pytest.mark.slow  # ~25 CPU-seconds of detection on 2 cores
def test_every_kept_clip_frame_shows_a_face(ingested: dict[str, Any]) -> None:
    """The detector, run again on the aligned frames of every clip the tracker made, finds a face in
    at least 15 of 16 (a background warp of a frame where the face had gone would not)."""
    from fer_data.faces.detectors import CenterFaceDetector

    detect = CenterFaceDetector(input_size=224, threads=2)  # the crops' size: no letterbox margin to pay for
    rows = query(ingested, "SELECT sample_id, shard FROM samples WHERE detector = 'centerface' AND kind = 'clip'")
    assert len(rows) >= 10
    members: dict[str, bytes] = {}
    for shard in {r[1] for r in rows}:
        members.update(shard_members(ingested["out"], shard))
    for sid, _ in rows:
        key = shards.sample_key(sid)
        crops = [np.asarray(Image.open(io.BytesIO(members[f"{key}.{t:02d}.jpg"]))) for t in range(SEGMENTS)]
        found = sum(bool(faces) for faces in detect(crops))
        assert found >= 15, (sid, found)


def test_a_video_without_a_face_is_a_no_face_reject(tmp_path: Path) -> None:
    from fer_data.samples.video import _video

    root = write_dfew(tmp_path / "dfew", {1: (1, 1)})
    (root / "Clip/original").mkdir(parents=True)
    grey = np.full((96, 128, 3), 90, np.uint8)
    (root / "Clip/original/00001.mp4").write_bytes(_video([grey] * 12, "mp4"))
    result = ingest("dfew", root, tmp_path / "out", segments=SEGMENTS)
    assert (result.n_samples, result.n_rejects) == (0, 1)
    assert query({"catalog": result.catalog}, "SELECT stage, reason FROM rejects") == [("detect", "no_face")]


@pytest.mark.parametrize("name", ["bp4d", "disfa", "casme2"])
def test_au_occurrence_matches_what_was_written(ingested: dict[str, Any], expected: dict[str, dict], name: str) -> None:
    got = query(ingested, "SELECT split, au, n_labeled, n_present FROM au_occurrence WHERE dataset = ? "
                          "ORDER BY split, au", name)
    assert [list(r) for r in got] == expected[name]["au_occurrence"]


def test_au_image_samples_keep_subject_fold_and_intensity(ingested: dict[str, Any], expected: dict[str, dict]) -> None:
    rows = query(ingested, "SELECT sample_id, subject, split, CAST(extra->>'fold' AS INTEGER), kind FROM samples "
                           "WHERE dataset IN ('bp4d', 'disfa') ORDER BY 1")
    for sid, subject, split, fold, kind in rows:
        lab = expected[sid.split(":")[0]]["labels"][sid]
        assert (subject, split, fold, kind) == (lab["subject"], lab["split"], lab["fold"], "image"), sid
    intensity = query(ingested, "SELECT a.sample_id, a.au, a.intensity FROM au_labels a "
                                "JOIN samples s USING (sample_id) WHERE s.dataset = 'disfa'")
    assert intensity and all(v == expected["disfa"]["labels"][sid]["intensity"][str(au)] for sid, au, v in intensity)
    # fold k test = the subjects of fold k: the three folds partition the subjects
    folds = query(ingested, "SELECT CAST(extra->>'fold' AS INTEGER) AS k, list(DISTINCT subject ORDER BY subject) "
                            "FROM samples WHERE dataset = 'bp4d' GROUP BY k ORDER BY k")
    assert folds == [(k, sorted(subjects)) for k, subjects in sorted(BP4D_FOLDS.items())]
    assert all(len(subjects) == 3 for subjects in BP4D_FOLDS.values())  # each fold trains on six faces
    assert all(set(subjects) <= set(PUBLISHED_FOLDS[k]) for k, subjects in BP4D_FOLDS.items())


# ------------------------------------------------------------------------------------- bad videos


def test_corrupt_and_empty_videos_are_rejects_not_crashes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dfew = write_dfew(tmp_path / "dfew", {1: (1, 1), 2: (2, 2)})
    (dfew / "Clip" / "original").mkdir(parents=True)
    (dfew / "Clip/original/00001.mp4").write_bytes(rng.bytes(20_000))
    (dfew / "Clip/original/00002.mp4").write_bytes(b"")
    disfa = tmp_path / "disfa"
    write_text(disfa / "ActionUnit_Labels/SN001/SN001_au1.txt", "1,0\n2,3\n")
    write_text(disfa / "ActionUnit_Labels/SN002/SN002_au1.txt", "1,0\n")
    (disfa / "Videos_LeftCamera").mkdir()
    (disfa / "Videos_LeftCamera/LeftVideoSN001_comp.avi").write_bytes(b"RIFF" + rng.bytes(20_000))
    (disfa / "Videos_LeftCamera/LeftVideoSN002_comp.avi").write_bytes(b"")
    out = tmp_path / "out"
    for name, root, n in (("dfew", dfew, 2), ("disfa", disfa, 3)):
        result = ingest(name, root, out, segments=SEGMENTS, workers=2)
        assert (result.rows_read, result.n_samples, result.n_rejects) == (n, 0, n)
    got = query({"catalog": out / "catalog.duckdb"},
                "SELECT dataset, reason, count(*) FROM rejects GROUP BY ALL ORDER BY ALL")
    assert got == [("dfew", "corrupt_video", 1), ("dfew", "empty_file", 1),
                   ("disfa", "corrupt_video", 2), ("disfa", "empty_file", 1)]


def test_truncated_video_is_a_reject(video_roots: dict[str, Path], tmp_path: Path) -> None:
    data = sorted((video_roots["dfew"] / "Clip/original").iterdir())[0].read_bytes()
    root = write_dfew(tmp_path / "dfew", {1: (1, 1)})
    (root / "Clip/original").mkdir(parents=True)
    (root / "Clip/original/00001.mp4").write_bytes(data[: len(data) // 2])  # mp4 index (moov) cut off
    result = ingest("dfew", root, tmp_path / "out", segments=SEGMENTS, workers=1)
    assert (result.n_samples, result.n_rejects) == (0, 1)
    assert query({"catalog": result.catalog}, "SELECT reason FROM rejects") == [("corrupt_video",)]


@pytest.mark.parametrize("dataset", ["bp4d", "disfa"])
def test_fold_selection_holds_out_each_fold(ingested: dict[str, Any], expected: dict[str, dict], dataset: str) -> None:
    """Fold k's test set is exactly the samples the planner put in fold k; training takes the rest."""
    labels = {sid: lab for sid, lab in expected[dataset]["labels"].items() if sid not in expected[dataset]["dropped"]}
    for fold in (1, 2, 3):
        where = f"dataset = '{dataset}' AND split = '{{}}'"
        _, test_ids = select(ingested["catalog"], where.format("test"), fold=fold)
        _, train_ids = select(ingested["catalog"], where.format("train"), fold=fold)
        assert test_ids == {sid for sid, lab in labels.items() if lab["fold"] == fold}
        assert train_ids == {sid for sid, lab in labels.items() if lab["fold"] not in (fold, None)}


def test_disfa_folds_hold_every_evaluated_au_on_several_faces(ingested: dict[str, Any]) -> None:
    """The 3-fold AU protocol on the sample (dvc: auformer_disfa@1..3): each fold trains on six faces and
    both its sets hold each of the 8 evaluated AUs present and absent, so per-fold F1 and the label-blind
    baselines mean something. One 20-frame subject per fold trained on two faces and left AUs with no
    or one positive in a fold."""
    for fold in (1, 2, 3):
        rates = {part: au_rates(ingested["catalog"], f"dataset = 'disfa' AND split = '{part}'", DISFA_AUS, fold=fold)
                 for part in ("train", "test")}
        for part, got in rates.items():
            assert sorted(got) == list(DISFA_AUS) and all(0.1 <= r <= 0.6 for r in got.values()), (fold, part, got)
        (faces,), = query(ingested, f"SELECT count(DISTINCT subject) FROM {samples_source(fold)} AS samples "
                                    "WHERE dataset = 'disfa' AND split = 'train'")
        assert faces == 6, fold


def test_au_rates_of_a_selection_match_the_view(ingested: dict[str, Any]) -> None:
    """The trainer's occurrence rates for fold 1's training set are the `au_occurrence` view's
    rates of split 'train' (fold 1 is the split column's protocol) and the planner's counts."""
    view = catalog.query(ingested["catalog"], "SELECT au, rate FROM au_occurrence WHERE dataset = 'bp4d' "
                                              "AND split = 'train' AND rate IS NOT NULL")
    rates = au_rates(ingested["catalog"], "dataset = 'bp4d' AND split = 'train'", fold=1)
    assert rates == pytest.approx(dict(zip(view.au.astype(int), view.rate)))
    assert set(au_rates(ingested["catalog"], "dataset = 'bp4d' AND split = 'train'", aus=[12, 1], fold=1)) == {1, 12}
