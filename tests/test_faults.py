"""Fault suite: broken inputs, kill -9 and concurrent runs, each checked for loss and duplication.

After every case, `audit` checks what the issue asks of every ingest: rows read = samples +
rejects (in the result, the catalog's `ingests` row and the row counts of `samples` and
`rejects`), no sample id twice (in `samples` and across every tar), each sample in the shard the
catalog names, the shard sha256s in the catalog equal to the files', and a re-run into a fresh
folder giving byte-identical shards. The datasets are tiny but in their real layouts (RAF-DB,
DFEW, DISFA, FERV39K, BP4D, LAGENDA), with real faces (scikit-image's astronaut) so the detector
finds them; the long cases (a SIGKILLed ingest, two ingests at once) run `fer ingest` in
subprocesses and are marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from conftest import _astronaut, fer2013_csv, write_image
from fer_data import catalog, shards
from fer_data.ingest import IngestResult, ingest

SEGMENTS = 8  # frames per clip: fewer than the default 16 keeps the video cases fast
SIZE = 112

# ------------------------------------------------------------------------------------- invariants


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def audit(out: Path, result: IngestResult) -> dict[str, str]:
    """Every invariant of one ingest of `result.dataset` into `out`; returns {shard path: sha256}."""
    name = result.dataset
    with catalog.connect(out / "catalog.duckdb", read_only=True) as con:
        rows_read, n_samples, n_rejects = con.execute(
            "SELECT rows_read, n_samples, n_rejects FROM ingests WHERE dataset = ?", [name]).fetchone()
        samples = con.execute("SELECT sample_id, shard FROM samples WHERE dataset = ?", [name]).fetchall()
        (rejected,) = con.execute("SELECT count(*) FROM rejects WHERE dataset = ?", [name]).fetchone()
        shard_rows = con.execute("SELECT path, sha256, n_samples FROM shards WHERE dataset = ?", [name]).fetchall()
    assert rows_read == n_samples + n_rejects == result.rows_read
    assert (len(samples), rejected) == (n_samples, n_rejects) == (result.n_samples, result.n_rejects)
    ids = [sid for sid, _ in samples]
    assert len(ids) == len(set(ids)), "a sample id twice in the samples table"
    in_tars: dict[str, str] = {}
    per_shard: dict[str, int] = {}
    shard_dir = out / "shards" / name
    for path in sorted(shard_dir.rglob("*.tar")):
        rel = path.relative_to(out).as_posix()
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            assert len(names) == len(set(names)), f"a member twice in {rel}"
            for m in members:
                if m.name.endswith(".json"):
                    sid = json.loads(tar.extractfile(m).read())["sample_id"]
                    assert sid not in in_tars, f"{sid} in {in_tars.get(sid)} and {rel}"
                    in_tars[sid] = rel
                    per_shard[rel] = per_shard.get(rel, 0) + 1
    assert in_tars == dict(samples), "shards and the samples table disagree"
    files = {path.relative_to(out).as_posix(): sha256(path) for path in sorted(shard_dir.rglob("*.tar"))}
    assert files == {path: digest for path, digest, _ in shard_rows}
    assert per_shard == {path: n for path, _, n in shard_rows}
    info = json.loads((shard_dir / "_info.json").read_text())
    assert sum(s["n_samples"] for s in info["splits"].values()) == n_samples
    assert sorted(f"shards/{name}/{s}" for v in info["splits"].values() for s in v["shards"]) == sorted(files)
    leftovers = {p.relative_to(out).as_posix() for p in shard_dir.rglob("*") if p.is_file()} - set(files) - {
        f + ".stats.json" for f in files} - {f"shards/{name}/_info.json"}
    assert not leftovers, f"files in {shard_dir} that no catalog row accounts for: {leftovers}"
    return files


def ingest_twice(dataset: str, root: Path, tmp_path: Path, **options: Any) -> tuple[IngestResult, Path]:
    """Ingest into two fresh folders; both pass `audit` and their shards are byte-identical."""
    results = [ingest(dataset, root, tmp_path / run, size=SIZE, **options) for run in ("a", "b")]
    hashes = [audit(tmp_path / run, r) for run, r in zip(("a", "b"), results)]
    assert hashes[0] == hashes[1]
    assert results[0] == IngestResult(dataset, results[1].rows_read, results[1].n_samples, results[1].n_rejects,
                                      tmp_path / "a" / "catalog.duckdb")
    for q in ("SELECT * FROM samples ORDER BY sample_id", "SELECT * FROM rejects ORDER BY ALL"):
        assert catalog.query(results[0].catalog, q).equals(catalog.query(results[1].catalog, q)), q
    return results[0], tmp_path / "a"


def rejects_of(result: IngestResult) -> list[tuple[str, str, str]]:
    """(source path, reason, detail) of every reject, sorted; the catalog keeps paths relative to the
    raw root (`ingests.raw_root`), the detail's too: the path comes back absolute here."""
    with catalog.connect(result.catalog, read_only=True) as con:
        (root,), = con.execute("SELECT raw_root FROM ingests WHERE dataset = ?", [result.dataset]).fetchall()
        rows = con.execute("SELECT source_path, reason, detail FROM rejects WHERE dataset = ? ORDER BY ALL",
                           [result.dataset]).fetchall()
    return [(os.path.normpath(os.path.join(root, path)), reason, detail) for path, reason, detail in rows]


def sample_ids(result: IngestResult) -> list[str]:
    return catalog.query(result.catalog, "SELECT sample_id FROM samples WHERE dataset = ? ORDER BY 1",
                         [result.dataset]).sample_id.tolist()


# ------------------------------------------------------------------------------------- writers


def face_frames(n: int, size: int = 128) -> list[np.ndarray]:
    """n frames of the astronaut's face drifting right by a pixel a frame."""
    photo = _astronaut()
    return [np.asarray(Image.fromarray(photo[30:230, 115 + i:315 + i]).resize((size, size), Image.BILINEAR))
            for i in range(n)]


def write_video(path: Path, n_frames: int) -> Path:
    """A real mpeg4 .mp4/.avi (by suffix) of face frames, written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=path.suffix[1:]) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for rgb in face_frames(n_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def rafdb_image(root: Path, name: str) -> Path:
    return root / "basic" / "Image" / "original" / name


def add_rows(root: Path, *lines: str) -> None:
    with (root / "basic" / "EmoLabel" / "list_patition_label.txt").open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def write_dfew(root: Path, clips: dict[int, int]) -> Path:
    """DFEW with original mp4s: clip number -> label, every clip in set 1's train list (the other lists empty)."""
    lists = root / "EmoLabel_DataSplit"
    for part in ("train", "test"):
        for k in range(1, 6):
            rows = [f"{n},{label}" for n, label in clips.items()] if (part, k) == ("train", 1) else []
            path = lists / f"{part}(single-labeled)" / f"set_{k}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(["video_name,label", *rows]) + "\n")
    return root


# ------------------------------------------------------------------------------------- images


def half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


IMAGE_FAULTS = {
    "zero_byte": (lambda p: p.write_bytes(b""), "empty_file"),
    "truncated_half": (half, "corrupt_image"),
    "random_bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), "corrupt_image"),
    "png_header_only": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40)), "corrupt_image"),
}


@pytest.mark.parametrize("fault", sorted(IMAGE_FAULTS))
def test_broken_image_is_one_reject_naming_the_file(rafdb_root: Path, tmp_path: Path, fault: str) -> None:
    break_it, reason = IMAGE_FAULTS[fault]
    bad = rafdb_image(rafdb_root, "train_00001.jpg")
    break_it(bad)
    result, _ = ingest_twice("rafdb", rafdb_root, tmp_path)
    assert (result.rows_read, result.n_samples, result.n_rejects) == (4, 3, 1)
    (path, got_reason, detail), = rejects_of(result)
    assert (path, got_reason) == (str(bad), reason) and str(bad.relative_to(rafdb_root)) in detail
    assert "object at" not in detail  # no object addresses: the same input gives the same catalog
    assert "rafdb:train_00001" not in sample_ids(result)


# ------------------------------------------------------------------------------------- label files


def test_bad_rows_out_of_range_labels_and_escaping_paths(rafdb_root: Path, tmp_path: Path) -> None:
    outside = write_image(tmp_path / "elsewhere" / "train_00007.jpg", seed=7)  # a real face outside the root
    add_rows(rafdb_root,
             "train_00005.jpg",  # no label
             "train_00008.jpg 9",  # RAF-DB labels are 1..7
             "train_00009.jpg 0",
             "train_00010.jpg -3",
             "train_../../../../../elsewhere/train_00007.jpg 4",  # `train_..` is cancelled by the next `..`
             f"{outside} 4",  # absolute: no train_/test_ prefix, so no RAF-DB name
             "test_0001.jpg 7")  # the same image twice
    result, _ = ingest_twice("rafdb", rafdb_root, tmp_path)
    assert (result.rows_read, result.n_samples, result.n_rejects) == (11, 4, 7)
    reasons = {p.rsplit("#", 1)[-1]: r for p, r, _ in rejects_of(result)}
    assert reasons == {"row=4": "unparsable_row", "row=5": "label_out_of_range", "row=6": "label_out_of_range",
                       "row=7": "label_out_of_range", "row=8": "path_escapes_root", "row=9": "unparsable_row",
                       str(rafdb_image(rafdb_root, "test_0001.jpg")): "duplicate_sample_id"}
    assert not any("00007" in sid for sid in sample_ids(result))


def test_lagenda_age_and_paths(tmp_path: Path) -> None:
    root = tmp_path / "lagenda"
    for i in range(3):
        write_image(root / "images" / f"{i}.jpg", seed=i)
    outside = write_image(tmp_path / "outside.jpg", seed=5)
    box = "30,20,100,110"
    (root / "lagenda_annotation.csv").write_text("\n".join([
        "img_name,age,gender,face_x0,face_y0,face_x1,face_y1",
        f"images/0.jpg,25,M,{box}",
        f"images/1.jpg,-1,F,{box}",  # -1 = missing
        f"images/2.jpg,-5,F,{box}",  # not -1: out of range
        f"images/2.jpg,130,F,{box}",
        "images/2.jpg,thirty,F,30,20,100,110",
        "images/2.jpg,30,F,30,20",  # short row
        f"../outside.jpg,30,M,{box}",
        f"{outside},30,M,{box}",
    ]) + "\n")
    result, _ = ingest_twice("lagenda", root, tmp_path / "out")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (8, 2, 6)
    assert sorted(r for _, r, _ in rejects_of(result)) == [
        "label_out_of_range", "label_out_of_range", "path_escapes_root", "path_escapes_root", "unparsable_row",
        "unparsable_row"]
    ages = catalog.query(result.catalog, "SELECT sample_id, age FROM samples ORDER BY 1")
    assert ages.sample_id.tolist() == ["lagenda:images/0.jpg#0", "lagenda:images/1.jpg#0"]
    assert ages.age[0] == 25 and np.isnan(ages.age[1])


def test_bp4d_au_code_out_of_range(tmp_path: Path) -> None:
    root = tmp_path / "bp4d"
    header = "0,1,2,4,6,7,10,12,14,15,17,23,24"
    rows = ["1,0,0,1,0,0,0,1,0,0,0,0,0",
            "2,1,0,0,0,0,0,9,0,0,0,0,0",
            "3,0,0,7,0,0,0,1,0,0,0,0,0",  # AU4 coded 7: codes are 0, 1, 9
            "4,0,0,0,0,0,0,1,0,0,0,0"]  # a field short
    (root / "AUCoding" / "AU_OCC").mkdir(parents=True)
    (root / "AUCoding" / "AU_OCC" / "F001_T1.csv").write_text("\n".join([header, *rows]) + "\n")
    for frame in range(1, 5):
        write_image(root / "BP4D-training" / "F001" / "T1" / f"{frame:04d}.jpg", seed=frame)
    result, _ = ingest_twice("bp4d", root, tmp_path / "out")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (4, 2, 2)
    assert sorted(r for _, r, _ in rejects_of(result)) == ["label_out_of_range", "unparsable_row"]
    with catalog.connect(result.catalog, read_only=True) as con:
        au = con.execute("SELECT sample_id, au, present FROM au_labels WHERE au IN (4, 12) ORDER BY 1, 2").fetchall()
    assert [list(r) for r in au] == [["bp4d:F001/T1/0001", 4, True], ["bp4d:F001/T1/0001", 12, True],
                                     ["bp4d:F001/T1/0002", 4, False], ["bp4d:F001/T1/0002", 12, None]]


# ------------------------------------------------------------------------------------- videos


def test_broken_videos_are_rejects(tmp_path: Path) -> None:
    """DFEW original mp4s: good, cut in half, zero bytes, garbage in the middle, garbage throughout."""
    root = write_dfew(tmp_path / "dfew", {n: 1 for n in range(1, 6)})
    videos = root / "Clip" / "original"
    good = write_video(videos / "00001.mp4", 12)
    half(write_video(videos / "00002.mp4", 12))
    (videos / "00003.mp4").write_bytes(b"")
    data = bytearray(good.read_bytes())
    data[len(data) // 3: len(data) // 3 + 2000] = np.random.default_rng(1).bytes(2000)
    (videos / "00004.mp4").write_bytes(bytes(data))
    (videos / "00005.mp4").write_bytes(np.random.default_rng(2).bytes(20_000))
    result, _ = ingest_twice("dfew", root, tmp_path / "out", segments=SEGMENTS)
    assert result.rows_read == 5
    assert sample_ids(result) == ["dfew:00001"]
    bad = {Path(p).name: (r, detail) for p, r, detail in rejects_of(result)}
    assert {name: r for name, (r, _) in bad.items()} == {
        "00002.mp4": "corrupt_video", "00003.mp4": "empty_file", "00004.mp4": "corrupt_video",
        "00005.mp4": "corrupt_video"}
    assert all(str((videos / name).relative_to(root)) in detail for name, (_, detail) in bad.items())
    assert "expected frames" in bad["00004.mp4"][1]  # it opens; a packet fails to decode


def test_avi_cut_short(tmp_path: Path) -> None:
    """DISFA: frames labelled past what survives of a truncated .avi become empty_video rejects, the rest samples."""
    root = tmp_path / "disfa"
    video = write_video(root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi", 32)
    video.write_bytes(video.read_bytes()[: video.stat().st_size * 3 // 4])
    labels = root / "ActionUnit_Labels" / "SN001"
    labels.mkdir(parents=True)
    (labels / "SN001_au12.txt").write_text("".join(f"{f},{f % 4}\n" for f in range(1, 33)))
    result, _ = ingest_twice("disfa", root, tmp_path / "out", detector="none")
    kept = [int(sid.rsplit("/", 1)[1]) for sid in sample_ids(result)]
    assert 0 < len(kept) < 32 and kept == list(range(1, len(kept) + 1))  # the readable head of the video
    bad = rejects_of(result)
    assert {(p, r) for p, r, _ in bad} == {(str(video), "empty_video")}
    # the detail names the 0-based frame asked for: frame n is index n - 1
    asked = sorted(int(d.split(" in range ")[1].split("..")[0]) + 1 for _, _, d in bad)
    assert asked == list(range(len(kept) + 1, 33))


def write_ferv39k(root: Path, clips: dict[str, int]) -> Path:
    """FERV39K: clip path -> frames (aligned face crops), all in train_All; test_All empty."""
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    (setups / "train_All.csv").write_text("".join(f"{rel} Happy\n" for rel in clips))
    (setups / "test_All.csv").write_text("")
    for rel, n in clips.items():
        for i, rgb in enumerate(face_frames(n, 112)):
            write_jpeg(root / "2_ClipsforFaceCrop" / rel / f"{i + 1:05d}.jpg", rgb)
    return root


@pytest.mark.parametrize("fault", ["truncated", "zero_byte"])
def test_frame_folder_with_one_corrupt_frame(tmp_path: Path, fault: str) -> None:
    root = write_ferv39k(tmp_path / "ferv39k", {"Action/Happy/0001": 16, "Action/Happy/0002": 16,
                                                 "Action/Happy/0003": 16})
    # TSN centres of 16 frames in 8 segments: frames 1, 3, ..., 15 (0-based), files 00002, 00004, ...
    sampled = root / "2_ClipsforFaceCrop" / "Action/Happy/0002" / "00004.jpg"
    skipped = root / "2_ClipsforFaceCrop" / "Action/Happy/0003" / "00003.jpg"
    for path in (sampled, skipped):
        half(path) if fault == "truncated" else path.write_bytes(b"")
    result, _ = ingest_twice("ferv39k", root, tmp_path / "out", segments=SEGMENTS)
    assert sample_ids(result) == ["ferv39k:Action/Happy/0001", "ferv39k:Action/Happy/0003"]
    (path, reason, detail), = rejects_of(result)
    assert (path, reason) == (str(sampled.parent), "corrupt_video") and str(sampled.relative_to(root)) in detail


# ------------------------------------------------------------------------------------- no faces


def test_dataset_without_faces_is_empty_but_valid(rafdb_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    ingest("rafdb", rafdb_root, out, size=SIZE)  # first with faces: the blank re-ingest must replace all of it
    for path in (rafdb_root / "basic" / "Image" / "original").iterdir():
        Image.fromarray(np.full((128, 128, 3), 180, np.uint8)).save(path)
    result, out = ingest_twice("rafdb", rafdb_root, tmp_path, detector="centerface")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (4, 0, 4)
    assert [r for _, r, _ in rejects_of(result)] == ["no_face"] * 4
    assert not list((out / "shards" / "rafdb").rglob("*.tar"))
    info = json.loads((out / "shards" / "rafdb" / "_info.json").read_text())
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"test": 0, "train": 0}
    # The Parquet copy shows the same: no samples of the earlier run are left behind.
    assert not (out / "catalog" / "samples" / "dataset=rafdb").exists()
    assert len(list((out / "catalog" / "rejects" / "dataset=rafdb").glob("*.parquet"))) == 1


def test_vanished_split_leaves_no_stale_shards(rafdb_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest("rafdb", rafdb_root, out, size=SIZE)
    assert list((out / "shards" / "rafdb").glob("test-*/test-*.tar"))
    label_file = rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text("".join(ln + "\n" for ln in label_file.read_text().splitlines() if ln.startswith("train")))
    audit(out, ingest("rafdb", rafdb_root, out, size=SIZE))
    assert not list((out / "shards" / "rafdb").rglob("test-*"))


def test_every_row_rejected_by_the_adapter(rafdb_root: Path, tmp_path: Path) -> None:
    (rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\nnonsense\n")
    result, out = ingest_twice("rafdb", rafdb_root, tmp_path)
    assert (result.rows_read, result.n_samples, result.n_rejects) == (2, 0, 2)
    assert json.loads((out / "shards" / "rafdb" / "_info.json").read_text())["splits"] == {}


def test_shard_bytes_are_what_tarfile_writes(tmp_path: Path) -> None:
    """The writer streams pre-encoded members; the tar must still be byte for byte tarfile's (a resumed
    run appends to shards an older run wrote), for payloads on and off the 512-byte block grid."""
    samples = {f"{i:03d}": {"jpg": bytes([i]) * n, "json": b"{}"} for i, n in enumerate((0, 1, 511, 512, 10240, 700))}
    writer = shards.ShardWriter(tmp_path / "set", "train", "fp", max_samples=4)
    for key, files in samples.items():
        sample = shards.encode_sample(key, files)
        writer.add(sample.blob, sample.size, shards.meta_json({"sample_id": key}))
    writer.close()
    for i, chunk in enumerate((list(samples)[:4], list(samples)[4:])):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for key in chunk:
                for ext, data in sorted(samples[key].items()):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode, info.uname, info.gname = len(data), 0o644, "", ""
                    tar.addfile(info, io.BytesIO(data))
        shard = tmp_path / "set" / f"train-{i:05d}.tar"
        assert shard.read_bytes() == buf.getvalue()
        assert writer.done[i]["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "train-00000.tar", "train-00000.tar.stats.json", "train-00001.tar", "train-00001.tar.stats.json"]


# ------------------------------------------------------------------------------------- processes


def many_faces(root: Path, n: int) -> Path:
    """RAF-DB with n train faces: enough detector work that an ingest runs for a few seconds."""
    rows = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(n)}
    for i, name in enumerate(rows):
        write_image(rafdb_image(root, name), seed=i)
    (root / "basic" / "EmoLabel").mkdir(parents=True)
    (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{name} {label}\n" for name, label in rows.items()))
    return root


def fer_ingest(root: Path, out: Path, log: Path) -> subprocess.Popen:
    """`fer ingest` (plain threads: `--runner none`) in its own process, output to `log`."""
    cmd = [sys.executable, "-m", "fer_cli.main", "ingest", "rafdb", str(root), "--out", str(out), "--runner", "none",
           "--shard-samples", "3", "--size", str(SIZE)]
    with log.open("w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def poll(condition: Any, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Wait until `condition()` holds; fail if `proc` exits first or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the ingest exited (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


def same_as(reference: IngestResult, out: Path) -> None:
    """The catalog in `out` holds exactly the reference run's rows and shards."""
    result = IngestResult("rafdb", reference.rows_read, reference.n_samples, reference.n_rejects,
                          out / "catalog.duckdb")
    assert audit(out, result) == audit(reference.catalog.parent, reference)
    for q in ("SELECT * FROM samples ORDER BY sample_id", "SELECT * FROM shards ORDER BY path",
              "SELECT * FROM au_labels ORDER BY ALL", "SELECT * FROM rejects ORDER BY ALL"):
        assert catalog.query(result.catalog, q).equals(catalog.query(reference.catalog, q)), q


@pytest.mark.slow
def test_kill_9_mid_shard_then_resume(tmp_path: Path) -> None:
    root = many_faces(tmp_path / "RAF-DB", 40)
    reference = ingest("rafdb", root, tmp_path / "ref", size=SIZE, shard_samples=3)
    n_shards = len(list((tmp_path / "ref" / "shards" / "rafdb").rglob("*.tar")))
    out = tmp_path / "run"
    stats = out / "shards" / "rafdb"
    proc = fer_ingest(root, out, tmp_path / "killed.log")
    try:
        poll(lambda: stats.is_dir() and any(stats.rglob("*.stats.json")), proc, "a complete shard")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(list(stats.rglob("*.stats.json")))
    assert 0 < done < n_shards, f"killed with {done} of {n_shards} shards complete"
    assert not (out / "catalog.duckdb").exists()
    resumed = fer_ingest(root, out, tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    same_as(reference, out)


@pytest.mark.slow
def test_kill_9_with_worker_processes_then_resume(tmp_path: Path) -> None:
    """An ingest whose chunks run in spawned worker processes, killed mid-run: its workers do not
    outlive it, and the resumed run gives exactly the rows of an uninterrupted one."""
    import psutil

    root = fer2013_csv(tmp_path / "fer2013", 3000)
    settings = dict(size=112, shard_samples=100)
    reference = ingest("fer2013", root, tmp_path / "ref", workers=1, **settings)
    out = tmp_path / "run"
    code = (f"from fer_data.ingest import ingest; ingest('fer2013', {str(root)!r}, {str(out)!r}, workers=2, "
            f"processes=True, chunk_frames=100, **{settings!r})")

    def run(log: Path) -> subprocess.Popen:
        with log.open("w") as f:
            return subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT)

    proc = run(tmp_path / "killed.log")
    stats = out / "shards" / "fer2013"
    workers: list[psutil.Process] = []
    try:
        poll(lambda: stats.is_dir() and any(stats.rglob("*.stats.json")), proc, "a complete shard")
        workers = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(workers) >= 2, "no worker processes ran"
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"worker processes outlived the killed ingest: {alive}"
    done = len(list(stats.rglob("*.stats.json")))
    assert 0 < done < 30, f"killed with {done} of 30 shards complete"
    resumed = run(tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    for q in ("SELECT * FROM samples ORDER BY sample_id", "SELECT * FROM shards ORDER BY path",
              "SELECT * FROM rejects ORDER BY ALL"):
        assert catalog.query(out / "catalog.duckdb", q).equals(catalog.query(reference.catalog, q)), q


@pytest.mark.slow
def test_two_ingests_into_one_folder(tmp_path: Path) -> None:
    """The second waits for the first, names the lock and its holder, and writes nothing meanwhile.

    The first is paused (SIGSTOP) once it holds the lock, so the two overlap however fast they run."""
    root = many_faces(tmp_path / "RAF-DB", 20)
    reference = ingest("rafdb", root, tmp_path / "ref", size=SIZE, shard_samples=3)
    out = tmp_path / "out"
    lock = out / ".ingest.lock"
    first = fer_ingest(root, out, tmp_path / "first.log")
    second = None
    try:
        poll(lambda: lock.is_file() and f"pid {first.pid}" in lock.read_text(), first, "the first holding the lock")
        first.send_signal(signal.SIGSTOP)
        files = sorted(p.name for p in out.rglob("*"))
        second = fer_ingest(root, out, tmp_path / "second.log")
        poll(lambda: "waiting" in (tmp_path / "second.log").read_text(), second, "the second waiting")
        said = " ".join((tmp_path / "second.log").read_text().split())
        assert str(lock) in said and f"ingest of rafdb (pid {first.pid})" in said
        assert sorted(p.name for p in out.rglob("*")) == files  # the waiting ingest has touched nothing
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
        assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    same_as(reference, out)
    assert not lock.exists()
