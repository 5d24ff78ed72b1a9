"""Pose and quality of faces (fer_data.faces.quality): the sign conventions on real photos through the
real detector, and the columns every ingested sample gets."""

from __future__ import annotations

from fractions import Fraction
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import write_image
from fer_data import catalog
from fer_data.faces import quality
from fer_data.faces.align import template
from fer_data.faces.detectors import CenterFaceDetector
from fer_data.faces.stage import AlignedFace
from fer_data.ingest import ingest


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector(input_size=640)


def t1() -> np.ndarray:
    """insightface's group photo: six real faces, several turned well to one side."""
    return np.asarray(Image.open(resources.files("insightface") / "data" / "images" / "t1.jpg").convert("RGB"))


def test_the_template_is_frontal_and_moving_the_nose_turns_it() -> None:
    points = template(112)
    yaw, pitch, roll = quality.pose(points)
    assert abs(yaw) < 1e-3 and abs(pitch) < 1e-3 and abs(roll) < 0.5
    right, up = points.copy(), points.copy()
    right[2, 0] += 5  # nose towards the image's right
    up[2, 1] -= 5  # nose towards the eyes
    assert quality.pose(right)[0] > 15 and abs(quality.pose(right)[1]) < 1
    assert quality.pose(up)[1] > 15 and abs(quality.pose(up)[0]) < 1
    assert quality.pose(np.zeros((5, 2))) is None  # eyes on one point: no geometry


def test_a_face_turned_left_and_its_mirror_turned_right(detector: CenterFaceDetector) -> None:
    photo = t1()
    faces, mirrored = detector([photo, np.ascontiguousarray(photo[:, ::-1])])
    assert len(faces) == len(mirrored) == 6
    width = photo.shape[1]
    turned = 0
    for face in faces:
        centre = (face.box[0] + face.box[2]) / 2
        twin = min(mirrored, key=lambda g: abs(width - (g.box[0] + g.box[2]) / 2 - centre))
        yaw, _, roll = quality.pose(face.landmarks)
        twin_yaw, _, twin_roll = quality.pose(twin.landmarks)
        if abs(yaw) > 15:  # a face clearly turned one way is turned the other way in the mirror
            turned += 1
            assert np.sign(twin_yaw) == -np.sign(yaw) and abs(twin_yaw) > 10, (yaw, twin_yaw)
        if abs(roll) > 8:
            assert np.sign(twin_roll) == -np.sign(roll), (roll, twin_roll)
    assert turned >= 3  # the photo has faces turned both ways: 54, 29, 30 and 15 degrees


def test_rotating_a_photo_rolls_the_face(detector: CenterFaceDetector) -> None:
    photo = skimage.data.astronaut()
    centre = (226.0, 118.0)  # the face

    def roll_at(angle: float) -> float:
        rotated = cv2.warpAffine(photo, cv2.getRotationMatrix2D(centre, angle, 1.0), photo.shape[1::-1])
        return quality.pose(detector([rotated])[0][0].landmarks)[2]

    upright = roll_at(0)
    assert abs(upright) < 8
    # OpenCV turns positive angles counter-clockwise on screen: roll (clockwise positive) falls by as much
    assert roll_at(20) == pytest.approx(upright - 20, abs=7)
    assert roll_at(-20) == pytest.approx(upright + 20, abs=7)


def test_sharpness_falls_with_blur_and_columns_average() -> None:
    crop = cv2.resize(skimage.data.astronaut()[40:240, 120:320], (224, 224))
    blurred = cv2.GaussianBlur(crop, (0, 0), 3)
    assert quality.sharpness(blurred) < quality.sharpness(crop) / 5
    # the variance of the 4-neighbour Laplacian (reflected borders), exact: the one rounding is the last
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.int64)
    p = np.pad(grey, 1, mode="reflect")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * grey
    assert quality.sharpness(crop) == float(Fraction(int((lap * lap).sum()) * lap.size - int(lap.sum()) ** 2, lap.size ** 2))
    assert quality.face_size((10, 20, 110, 70)) == pytest.approx(np.sqrt(100 * 50))
    lm = template(224)
    geometry = {"landmarks": lm.reshape(-1).tolist(), "face_box": [0, 0, 100, 100], "face_score": 0.8,
                "align_matrix": [1, 0, 0, 0, 1, 0]}
    aligned = [AlignedFace(crop, geometry), AlignedFace(blurred, {**geometry, "landmarks": None, "face_score": None})]
    cols = quality.columns(aligned)
    assert cols["sharpness"] == pytest.approx((quality.sharpness(crop) + quality.sharpness(blurred)) / 2)
    assert cols["face_score"] == 0.8 and cols["face_size"] == 100 and abs(cols["yaw"]) < 1e-3  # the one with landmarks
    no_box = quality.columns([AlignedFace(crop, {"landmarks": None, "face_box": None, "face_score": None,
                                                 "align_matrix": [224 / 48, 0, 0, 0, 224 / 48, 0]})])
    assert no_box["yaw"] is None and no_box["face_size"] == pytest.approx(48)  # a pre-aligned crop: its side


def test_every_sample_gets_pose_and_quality_in_source_pixels(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    write_image(root / "train" / "happy" / "big.jpg", size=256)
    write_image(root / "train" / "happy" / "small.jpg", size=128)
    ingest("imagefolder", root, tmp_path / "out")
    df = catalog.query(tmp_path / "out" / "catalog.duckdb",
                       "SELECT source_path, detector, yaw, pitch, roll, face_size, sharpness, face_score, face_box "
                       "FROM samples ORDER BY source_path").set_index("source_path")
    big, small = df.loc["train/happy/big.jpg"], df.loc["train/happy/small.jpg"]
    assert big.detector == small.detector == "centerface"
    assert big.face_size == pytest.approx(2 * small.face_size, rel=0.1)  # source pixels: twice the photo, twice the face
    x0, y0, x1, y1 = big.face_box
    assert big.face_size == pytest.approx(np.sqrt((x1 - x0) * (y1 - y0)), rel=1e-5)
    assert abs(big.yaw) < 20 and abs(big.roll) < 20 and -40 < big.pitch < 20 and big.sharpness > 0
    assert big.face_score == pytest.approx(small.face_score, abs=0.2)
    # the same photo, its face rescaled: same pose within a few degrees
    assert big.yaw == pytest.approx(small.yaw, abs=6) and big.roll == pytest.approx(small.roll, abs=6)
    selected = catalog.query(tmp_path / "out" / "catalog.duckdb",
                             "SELECT count(*) AS n FROM samples WHERE abs(yaw) < 30 AND face_size >= 100")
    assert selected.n[0] == 1  # the big one only: training selections filter on these columns in SQL


def test_pre_aligned_crops_have_no_pose_and_their_side_as_face_size(tmp_path: Path) -> None:
    root = tmp_path / "RAF-DB" / "basic"
    write_image(root / "Image" / "aligned" / "train_00001_aligned.jpg", size=100)
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\n")
    ingest("rafdb", tmp_path / "RAF-DB", tmp_path / "out")
    row = catalog.query(tmp_path / "out" / "catalog.duckdb",
                        "SELECT detector, yaw, pitch, roll, face_size, sharpness, face_score FROM samples").iloc[0]
    assert row.detector == "none"
    assert all(v is None or np.isnan(v) for v in (row.yaw, row.pitch, row.roll, row.face_score))
    assert row.face_size == pytest.approx(100) and row.sharpness > 0
