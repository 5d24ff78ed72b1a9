"""Every face of a photo (`--faces all`), the detector chain (`--detector centerface,box`) and tiny
inputs enlarged before detection, on real photos and the sample data's real-format FER2013 rows."""

from __future__ import annotations

import json
import shutil
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_image
from fer_cli.main import app
from fer_data import catalog, loaders, shards
from fer_data.ingest import ingest
from fer_data.labels import EMOTION_ID
from fer_data.samples.images import write_sample_data

T1 = resources.files("insightface") / "data" / "images" / "t1.jpg"  # a real group photo: six faces


def fer(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def group_root(tmp_path: Path) -> Path:
    """imagefolder layout: the six-face group photo (happy) and a single portrait (sad)."""
    root = tmp_path / "photos"
    (root / "train" / "happy").mkdir(parents=True)
    shutil.copy(T1, root / "train" / "happy" / "group.jpg")
    write_image(root / "train" / "sad" / "one.jpg", size=192)
    return root


@pytest.fixture(scope="module")
def fer2013_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_data(tmp_path_factory.mktemp("samples"))["fer2013"]


def test_faces_all_makes_a_sample_of_every_face(group_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = fer("ingest", "imagefolder", group_root, "--out", out, "--faces", "all", "--runner", "none",
                 "--shard-samples", "1")
    assert result.exit_code == 0, result.output
    assert "2 rows read = 2 rows giving 7 samples + 0 rejects" in result.output
    db = out / "catalog.duckdb"
    df = catalog.query(db, "SELECT sample_id, emotion, face_size, detector, extra, shard FROM samples "
                           "WHERE source_path LIKE '%group.jpg' ORDER BY sample_id")
    base = "imagefolder:train/happy/group.jpg"
    assert df.sample_id.tolist() == [f"{base}#{k}" for k in range(6)]
    assert (df.emotion == EMOTION_ID["happiness"]).all() and (df.detector == "centerface").all()  # the row's label on every face
    assert df.face_size.is_monotonic_decreasing  # k = 0 is the largest
    assert [json.loads(e)["face_index"] for e in df.extra] == list(range(6))
    assert {json.loads(e)["n_faces"] for e in df.extra} == {6}
    assert df.shard.nunique() == 1  # one row's faces share a shard, whatever --shard-samples says
    one = catalog.query(db, "SELECT sample_id FROM samples WHERE source_path LIKE '%one.jpg'")
    assert one.sample_id.tolist() == ["imagefolder:train/sad/one.jpg#0"]

    # the shard holds each face as its own sample, its labels naming it
    with tarfile.open(out / df.shard[0]) as tar:
        labels = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
        keys = {m.name.split(".")[0] for m in tar.getmembers()}
    assert sorted(item["sample_id"] for item in labels) == df.sample_id.tolist()
    assert keys == {shards.sample_key(s) for s in df.sample_id}
    counts = catalog.query(db, "SELECT n_samples FROM shards ORDER BY n_samples").n_samples.tolist()
    assert counts == [1, 6]
    info = json.loads((out / "shards" / "imagefolder" / "_info.json").read_text())
    assert info["splits"]["train"]["n_samples"] == 7

    stats = json.loads(fer("stats", "--catalog", db, "--format", "json").output)
    assert stats["ingests"] == [{"dataset": "imagefolder", "rows_read": 2, "n_samples": 7, "n_rejects": 0,
                                 "accounted": True}]
    accounting = catalog.query(db, "SELECT rows_giving_samples FROM ingest_accounting")
    assert accounting.rows_giving_samples.tolist() == [2]

    # a training selection on pose: the loader yields exactly the faces the SQL picks, out of shared shards
    where = "dataset = 'imagefolder' AND abs(yaw) < 20"
    urls, ids = loaders.select(db, where)
    expected = set(catalog.query(db, f"SELECT sample_id FROM samples WHERE {where}").sample_id)
    assert ids == expected and 0 < len(ids) < 7
    seen = [sid for _, targets in loaders.make_loader(urls, train=False, sample_ids=ids, batch_size=4)
            for sid in targets["sample_id"]]
    assert sorted(seen) == sorted(expected)


def test_faces_all_resumes_without_splitting_a_row(group_root: Path, tmp_path: Path) -> None:
    """A run stopped after the first shard resumes from the rows, not from the samples, that shard holds."""
    from fer_data.ingest import IngestJob, Settings, process_chunk

    settings = Settings(faces="all", shard_samples=1)
    reference = ingest("imagefolder", group_root, tmp_path / "ref", faces="all", shard_samples=1)
    out = tmp_path / "out"
    with IngestJob("imagefolder", group_root, out, settings) as job:
        chunk = next(job.chunks("train"))
        job.write("train", process_chunk(settings, chunk).take())
        job.writers["train"].abandon()  # killed before close: only complete shards count
    resumed = ingest("imagefolder", group_root, out, faces="all", shard_samples=1)
    assert (resumed.rows_read, resumed.n_samples, resumed.n_rejects) == (2, 7, 0)
    assert (reference.rows_read, reference.n_samples, reference.n_rejects) == (2, 7, 0)
    # the group photo's shard, complete before the stop, is kept; the portrait's row is done once after it
    # (its bytes may differ in the last bits: onnxruntime's result depends on the detector batch it is in)
    ref, got = (catalog.query(o / "catalog.duckdb", "SELECT path, n_samples, sha256 FROM shards ORDER BY path")
                for o in (tmp_path / "ref", out))
    assert got.n_samples.tolist() == ref.n_samples.tolist() == [6, 1]
    assert got.sha256[0] == ref.sha256[0]
    ids = [catalog.query(o / "catalog.duckdb", "SELECT sample_id FROM samples ORDER BY 1").sample_id.tolist()
           for o in (tmp_path / "ref", out)]
    assert ids[0] == ids[1] and len(ids[1]) == 7


def test_a_lost_row_fails_the_accounting_however_many_faces_the_others_gave(group_root: Path, tmp_path: Path) -> None:
    from fer_data.ingest import IngestJob, Settings, process_chunk

    settings = Settings(faces="all")
    with IngestJob("imagefolder", group_root, tmp_path / "out", settings) as job:
        for split in job.splits:
            for chunk in job.chunks(split):
                results = process_chunk(settings, chunk).take()
                job.write(split, [r for r in results if "group" in r[0]])  # the portrait's row is lost
            job.close(split)
        with pytest.raises(AssertionError, match="2 rows read but 1 rows giving samples"):
            job.finish()
    assert not (tmp_path / "out" / "catalog.duckdb").exists()


def test_largest_stays_one_sample_per_row(group_root: Path, tmp_path: Path) -> None:
    result = ingest("imagefolder", group_root, tmp_path / "out")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (2, 2, 0)
    df = catalog.query(result.catalog, "SELECT sample_id, face_size, extra FROM samples ORDER BY 1")
    assert df.sample_id.tolist() == ["imagefolder:train/happy/group.jpg", "imagefolder:train/sad/one.jpg"]
    assert "face_index" not in df.extra[0]
    everyone = ingest("imagefolder", group_root, tmp_path / "all", faces="all")
    largest = catalog.query(everyone.catalog, "SELECT max(face_size) AS s FROM samples WHERE sample_id LIKE '%group.jpg#%'")
    assert df.face_size[0] == pytest.approx(largest.s[0])


def test_detector_chain_runs_the_next_only_on_rejects(group_root: Path, tmp_path: Path) -> None:
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(group_root / "train" / "sad" / "blank.png")
    alone = ingest("imagefolder", group_root, tmp_path / "alone", detector="centerface")
    assert (alone.n_samples, alone.n_rejects) == (2, 1)
    chained = ingest("imagefolder", group_root, tmp_path / "chain", detector="centerface,box")
    assert (chained.rows_read, chained.n_samples, chained.n_rejects) == (3, 3, 0)
    df = catalog.query(chained.catalog, "SELECT source_path, detector, face_box, face_size, yaw FROM samples "
                                        "ORDER BY source_path").set_index("source_path")
    assert df.detector.to_dict() == {"train/happy/group.jpg": "centerface", "train/sad/blank.png": "box",
                                     "train/sad/one.jpg": "centerface"}
    blank = df.loc["train/sad/blank.png"]
    assert list(blank.face_box) == [0, 0, 96, 96] and blank.face_size == 96 and np.isnan(blank.yaw)
    summary = catalog.query(chained.catalog, "SELECT detector, step, n_rows, recovered FROM detector_summary")
    assert summary.values.tolist() == [["centerface", 1, 2, False], ["box", 2, 1, True]]
    assert "box" in fer("stats", "--catalog", chained.catalog).output


@pytest.mark.slow
def test_tiny_fer2013_crops_are_enlarged_and_box_takes_the_rest(fer2013_root: Path, tmp_path: Path) -> None:
    """The sample data's 140 FER2013 rows (48x48 grey, 133 faces): CenterFace found 11 faces at their
    size, 38 enlarged to 128 px; `box` takes the rest as whole-image faces."""
    out = tmp_path / "chain"
    result = fer("ingest", "fer2013", fer2013_root, "--out", out, "--detector", "centerface,box", "--runner", "none")
    assert result.exit_code == 0, result.output
    assert "140 rows read = 140 samples + 0 rejects" in result.output
    db = out / "catalog.duckdb"
    by = dict(catalog.query(db, "SELECT detector, n_rows FROM detector_summary").values.tolist())
    assert by["centerface"] >= 30 and by["centerface"] + by["box"] == 140, by
    detected = catalog.query(db, "SELECT face_box, landmarks FROM samples WHERE detector = 'centerface'")
    assert all(0 <= v <= 48 for lm in detected.landmarks for v in lm)  # mapped back to the 48x48 rows' pixels
    assert all(-12 <= v <= 60 for box in detected.face_box for v in box)
    boxed = catalog.query(db, "SELECT face_box, face_size, yaw FROM samples WHERE detector = 'box'")
    assert all(list(b) == [0, 0, 48, 48] for b in boxed.face_box) and (boxed.face_size == 48).all()
    assert boxed.yaw.isna().all()  # no landmarks: no pose

    stats = json.loads(fer("stats", "--catalog", db, "--format", "json").output)
    quality = {row["measure"]: row for row in stats["face pose and quality"]}
    assert quality["yaw"]["n"] == by["centerface"] and quality["yaw"]["n_null"] == by["box"]
    assert quality["face_size"]["n"] == 140
    # a selection on a pose column, as `fer sql` and training selections run it
    frontal = fer("sql", "SELECT count(*) AS n FROM samples WHERE abs(yaw) < 20", "--catalog", db, "--format", "csv")
    assert 0 < int(frontal.output.splitlines()[1]) <= by["centerface"]


def test_centerface_canvas_fits_the_batch_and_finds_the_same_faces(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """CenterFace runs on the batch's largest image rounded up to its stride of 32, not on a fixed
    320 px square: 256x192 video frames cost a 256x192 pass (under half of 320x320). The faces are
    the same as on the 320 square (each image padded to it by hand): boxes and landmarks within 2 px,
    on the sample clips' frames (every sample photo) and the six-face group photo shrunk to 320 px.
    A 48 px crop is still enlarged to 128 px first, on a 128 px canvas."""
    import cv2

    from fer_data.faces.detectors import CenterFaceDetector
    from fer_data.samples.video import PHOTOS, write_face_video
    from fer_data.video import Clip

    frames = []
    for i in range(len(PHOTOS)):
        write_face_video(tmp_path / f"{i}.mp4", 4, index=i)
        frames.append(Clip(tmp_path / f"{i}.mp4", 2**19).read([2])[0])
    group = np.asarray(Image.open(T1).convert("RGB"))
    group = cv2.resize(group, (320, round(320 * group.shape[0] / group.shape[1])), interpolation=cv2.INTER_AREA)
    detect = CenterFaceDetector(threads=2)
    shapes: list[tuple[int, ...]] = []
    run = detect.sess.run

    def recorded(names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        shapes.append(feeds["input.1"].shape)
        return run(names, feeds)

    monkeypatch.setattr(detect.sess, "run", recorded)
    for images, canvas in ((frames, (192, 256)), ([group], (224, 320))):
        fitted = detect(images)
        square = detect([np.pad(im, ((0, 320 - im.shape[0]), (0, 320 - im.shape[1]), (0, 0))) for im in images])
        assert shapes[-2:] == [(len(images), 3, *canvas), (len(images), 3, 320, 320)]
        assert [len(f) for f in fitted] == [len(f) for f in square] == ([1] * len(PHOTOS) if len(images) > 1 else [6])
        for got, want in zip(fitted, square):
            for face in got:
                near = min(want, key=lambda w: np.abs(np.subtract(w.box, face.box)).max())
                assert np.subtract(near.box, face.box) == pytest.approx(np.zeros(4), abs=2)
                assert near.landmarks == pytest.approx(face.landmarks, abs=2)
    tiny = cv2.resize(frames[0], (48, 36), interpolation=cv2.INTER_AREA)
    detect([tiny])
    assert shapes[-1] == (1, 3, 96, 128)  # 48x36 enlarged to 128x96: a canvas of that size

@pytest.mark.parametrize(("chain", "message"), [
    ("centerface,foo", "detector 'foo'"),
    ("centerface,centerface", "names a backend twice"),
    ("box,auto", "'auto' picks per record"),
    ("centerface,scrfd", "--detector-model"),
])
def test_a_bad_chain_is_one_line(group_root: Path, tmp_path: Path, chain: str, message: str) -> None:
    result = fer("ingest", "imagefolder", group_root, "--out", tmp_path / "out", "--detector", chain)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
