"""Faces and shards: alignment on a real photo, byte-identical reruns, kill-and-resume without loss."""

from __future__ import annotations

import json
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import write_image
from fer_data import catalog, shards
from fer_data.faces.align import align, template, transform_points
from fer_data.faces.detectors import CenterFaceDetector
from fer_data.ingest import ingest


def test_alignment_puts_landmarks_on_the_template() -> None:
    photo = skimage.data.astronaut()  # a real, frontal portrait, face about 85 px wide
    faces = CenterFaceDetector()([photo])[0]
    assert len(faces) == 1 and faces[0].score > 0.5
    face = faces[0]
    crop, matrix = align(photo, face.landmarks, 224)
    assert crop.shape == (224, 224, 3)
    error = np.linalg.norm(transform_points(matrix, face.landmarks) - template(224), axis=1)
    assert error.max() < 5.0  # pixels in the 224 crop: what a similarity transform leaves of pose


def test_insightface_sample_face_is_found_and_aligned() -> None:
    photo = resources.files("insightface") / "data" / "images" / "t1.jpg"  # a group photo: the largest face wins
    image = np.asarray(Image.open(photo).convert("RGB"))
    faces = CenterFaceDetector(input_size=640)([image])[0]
    assert len(faces) == 6 and [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    face = faces[0]
    assert face.area > 100 * 100
    crop, matrix = align(image, face.landmarks, 112)
    eyes = transform_points(matrix, face.landmarks[:2])
    assert np.linalg.norm(eyes - template(112)[:2], axis=1).max() < 4.0


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """imagefolder layout, 10 faces over 2 classes and splits, plus one image without a face."""
    root = tmp_path / "faces"
    for i in range(10):
        write_image(root / ("train" if i < 6 else "test") / ("happy" if i % 2 else "angry") / f"{i:02d}.jpg", seed=i)
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(root / "train" / "happy" / "blank.jpg")
    return root


def shard_hashes(out: Path) -> dict[str, str]:
    return dict(catalog.query(out / "catalog.duckdb", "SELECT path, sha256 FROM shards ORDER BY path").values.tolist())


def test_two_runs_give_identical_shards(folder_root: Path, tmp_path: Path) -> None:
    a = ingest("imagefolder", folder_root, tmp_path / "a", shard_samples=3)
    b = ingest("imagefolder", folder_root, tmp_path / "b", shard_samples=3)
    assert (a.rows_read, a.n_samples, a.n_rejects) == (11, 10, 1)
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    assert len(shard_hashes(tmp_path / "a")) == 2 + 2  # train 6 -> 3+3, test 4 -> 3+1
    for path in (tmp_path / "a").rglob("*.tar"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    reject = catalog.query(a.catalog, "SELECT stage, reason, source_path FROM rejects")
    assert reject.values.tolist() == [["detect", "no_face", "train/happy/blank.jpg"]]  # relative to the raw root


def test_shard_contents_and_catalog_agree(folder_root: Path, tmp_path: Path) -> None:
    result = ingest("imagefolder", folder_root, tmp_path / "out", shard_samples=4)
    rows = catalog.query(result.catalog, "SELECT sample_id, shard, emotion, detector, align_matrix FROM samples")
    assert rows.shard.notna().all() and (rows.detector == "centerface").all()
    seen = {}
    for path in sorted((tmp_path / "out" / "shards" / "imagefolder").rglob("*.tar")):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 for m in members)
            for m in members:
                if m.name.endswith(".json"):
                    labels = json.loads(tar.extractfile(m).read())
                    seen[labels["sample_id"]] = (path.relative_to(tmp_path / "out").as_posix(), labels["emotion"])
                    assert m.name == shards.sample_key(labels["sample_id"]) + ".json"
                else:
                    assert Image.open(tar.extractfile(m)).size == (224, 224)
    assert seen == {r.sample_id: (r.shard, r.emotion) for r in rows.itertuples()}
    info = json.loads((tmp_path / "out" / "shards" / "imagefolder" / "_info.json").read_text())
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"test": 4, "train": 6}
    assert info["label_spaces"]["emotion"][1] == "happiness"


def test_interrupted_ingest_resumes_to_the_same_rows(folder_root: Path, tmp_path: Path, monkeypatch) -> None:
    reference = ingest("imagefolder", folder_root, tmp_path / "ref", shard_samples=2)
    flushes = []
    real_flush = shards.ShardWriter._flush

    def die_after_two(self) -> None:
        if len(flushes) == 2:
            raise KeyboardInterrupt("killed")  # the run stops after 2 complete shards
        flushes.append(self)
        real_flush(self)

    monkeypatch.setattr(shards.ShardWriter, "_flush", die_after_two)
    with pytest.raises(KeyboardInterrupt):
        ingest("imagefolder", folder_root, tmp_path / "run", shard_samples=2)
    monkeypatch.setattr(shards.ShardWriter, "_flush", real_flush)
    done = sorted(p.name for p in (tmp_path / "run" / "shards" / "imagefolder").rglob("*.stats.json"))
    assert len(done) == 2

    resumed = ingest("imagefolder", folder_root, tmp_path / "run", shard_samples=2)
    assert (resumed.n_samples, resumed.n_rejects) == (reference.n_samples, reference.n_rejects)
    assert shard_hashes(tmp_path / "run") == shard_hashes(tmp_path / "ref")
    q = "SELECT sample_id, shard, sha256, align_matrix FROM samples ORDER BY sample_id"
    assert catalog.query(resumed.catalog, q).equals(catalog.query(reference.catalog, q))


def test_aligned_jpeg_at_crop_size_is_stored_as_it_came(tmp_path: Path) -> None:
    src = write_image(tmp_path / "raw" / "happy" / "a.jpg", size=112)
    write_image(tmp_path / "raw" / "happy" / "b.png", seed=1, size=112)  # not a JPEG: encoded
    ingest("imagefolder", tmp_path / "raw", tmp_path / "out", detector="none", size=112)
    stored = {}
    for path in (tmp_path / "out" / "shards" / "imagefolder").rglob("*.tar"):
        with tarfile.open(path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in files.items():
            if name.endswith(".json"):
                stored[json.loads(data)["sample_id"]] = files[name.replace(".json", ".jpg")]
    assert stored["imagefolder:happy/a.jpg"] == src.read_bytes()
    assert stored["imagefolder:happy/b.png"][:2] == b"\xff\xd8"
