"""Every adapter on a small hand-written fixture in its release's native layout.

The label files are literal text (the exact native format is visible here); images are tiny
solid-colour JPEG/PNG files. Expected values are worked out by hand from each release's
documented label order (../shared/DATASETS.md) into the canonical ids (DESIGN.md):
emotion 0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt;
gender 0 male, 1 female; age_bin 0 "0-2", 1 "3-9", 2 "10-19", 3 "20-29", ..., 8 "70+".
Each fixture also checks that every row or file written comes back as exactly one Record or Reject.
"""

from __future__ import annotations

import codecs
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_data import catalog
from fer_data.datasets import ADAPTERS, LayoutError, get_adapter
from fer_data.decode import text_pixels
from fer_data.ingest import ingest
from fer_data.labels import hash_split
from fer_data.record_store import _pack, unpack
from fer_data.records import BadRow, Record, Reject, TextSpan, read_spans

# ------------------------------------------------------------------------------------- helpers


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """A real 32x32 solid-colour image, JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    """A label file from an indented literal (dedented, first newline dropped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def read(name: str, root: Path) -> tuple[dict[str, Record], list[Reject]]:
    """All items of an adapter: records by sample id, rejects in order; checks their types and dataset."""
    items = list(get_adapter(name).records(root))
    assert all(isinstance(item, (Record, Reject)) and item.dataset == name for item in items)
    records = [item for item in items if isinstance(item, Record)]
    rejects = [item for item in items if isinstance(item, Reject)]
    by_id = {rec.sample_id: rec for rec in records}
    assert len(by_id) == len(records), "sample ids must be unique"
    return by_id, rejects


def reasons(rejects: list[Reject]) -> list[str]:
    return [rej.reason for rej in rejects]


def pixel_text(seed: int) -> str:
    """A 48x48 FER2013 pixel string (2304 space-separated grey values), different per seed."""
    return " ".join(str((seed * 37 + 5 * i) % 256) for i in range(48 * 48))


def pixel_array(seed: int) -> np.ndarray:
    return np.array(pixel_text(seed).split(), dtype=np.uint8).reshape(48, 48)


def test_every_registered_adapter_is_covered_here() -> None:
    """The image adapters are tested here; the video and AU ones in test_video_adapters.py."""
    assert set(ADAPTERS) == {"affectnet", "celeba", "fairface", "fer2013", "ferplus", "imagefolder",
                             "lagenda", "mma", "rafdb", "sfew", "utkface", "vggface2",
                             "bp4d", "casme2", "dfew", "disfa", "ferv39k"}


# ------------------------------------------------------------------------------------- layout errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("affectnet", "training.csv"),
        ("celeba", "list_attr_celeba.txt"),
        ("fairface", "fairface_label_train.csv"),
        ("fer2013", "fer2013.csv"),
        ("ferplus", "fer2013new.csv"),
        ("lagenda", "lagenda_annotation.csv"),
        ("mma", "Train"),
        ("rafdb", "EmoLabel/list_patition_label.txt"),
        ("sfew", "Train"),
        ("utkface", "."),  # labels live in the file names: the message names the root
        ("vggface2", "identity_meta.csv"),
        ("imagefolder", "."),
    ],
)
def test_empty_root_raises_layout_error_naming_the_expected_file(tmp_path: Path, name: str, expected: str) -> None:
    root = tmp_path / name
    root.mkdir()
    with pytest.raises(LayoutError) as err:
        list(get_adapter(name).records(root))
    assert str((root / expected) if expected != "." else root) in str(err.value)


def test_rafdb_layout_error_names_both_spellings_under_basic(tmp_path: Path) -> None:
    (tmp_path / "basic").mkdir()
    with pytest.raises(LayoutError) as err:
        list(get_adapter("rafdb").records(tmp_path))
    assert str(tmp_path / "basic/EmoLabel/list_patition_label.txt") in str(err.value)
    assert str(tmp_path / "basic/EmoLabel/list_partition_label.txt") in str(err.value)


def test_ferplus_without_fer2013_csv_names_it(tmp_path: Path) -> None:
    write_text(tmp_path / "fer2013new.csv", """
        Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
        Training,fer0000000.png,10,0,0,0,0,0,0,0,0,0
    """)
    with pytest.raises(LayoutError) as err:
        list(get_adapter("ferplus").records(tmp_path))
    assert str(tmp_path / "fer2013.csv") in str(err.value)


def test_root_that_is_no_directory_raises_layout_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not a directory"):
        get_adapter("rafdb").records(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------- RAF-DB

RAF_LABELS = """
    train_00001.jpg 1
    train_00002.jpg 2
    train_00003.jpg 3
    train_00004.jpg 4
    test_0001.jpg 5
    test_0002.jpg 6
    test_0003.jpg 7
"""
# RAF-DB 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral
RAF_EXPECTED = {
    "rafdb:train_00001": ("train", 3),  # surprise
    "rafdb:train_00002": ("train", 4),  # fear
    "rafdb:train_00003": ("train", 5),  # disgust
    "rafdb:train_00004": ("train", 1),  # happiness
    "rafdb:test_0001": ("test", 2),  # sadness
    "rafdb:test_0002": ("test", 6),  # anger
    "rafdb:test_0003": ("test", 0),  # neutral
}


@pytest.mark.parametrize("label_file", ["list_patition_label.txt", "list_partition_label.txt"])
def test_rafdb_labels_and_splits(tmp_path: Path, label_file: str) -> None:
    base = tmp_path / "basic"
    write_text(base / "EmoLabel" / label_file, RAF_LABELS)
    for stem in ("train_00001", "train_00002", "train_00003", "train_00004", "test_0001", "test_0002", "test_0003"):
        write_image(base / "Image" / "original" / f"{stem}.jpg")
    records, rejects = read("rafdb", tmp_path)
    assert rejects == []
    assert {sid: (r.split, r.emotion) for sid, r in records.items()} == RAF_EXPECTED
    rec = records["rafdb:train_00004"]
    assert rec.source_path == str(base / "Image" / "original" / "train_00004.jpg")
    assert rec.aligned is False and rec.extra["raf_label"] == 4


def test_rafdb_falls_back_to_the_aligned_image(tmp_path: Path) -> None:
    base = tmp_path / "basic"
    write_text(base / "EmoLabel" / "list_patition_label.txt", """
        train_00001.jpg 4
        train_00002.jpg 4
        train_00003.jpg 4
    """)
    write_image(base / "Image" / "original" / "train_00001.jpg")
    write_image(base / "Image" / "aligned" / "train_00001_aligned.jpg")  # original wins when both exist
    write_image(base / "Image" / "aligned" / "train_00002_aligned.jpg")  # only the aligned crop
    records, rejects = read("rafdb", tmp_path)  # train_00003: neither; left to the decode stage
    assert rejects == [] and len(records) == 3
    got = {sid: (r.source_path, r.aligned) for sid, r in records.items()}
    assert got == {
        "rafdb:train_00001": (str(base / "Image/original/train_00001.jpg"), False),
        "rafdb:train_00002": (str(base / "Image/aligned/train_00002_aligned.jpg"), True),
        "rafdb:train_00003": (str(base / "Image/original/train_00003.jpg"), False),
    }


def test_rafdb_manual_attributes(tmp_path: Path) -> None:
    base = tmp_path / "basic"
    write_text(base / "EmoLabel" / "list_patition_label.txt", """
        train_00001.jpg 4
        train_00002.jpg 7
        test_0001.jpg 1
    """)
    write_image(base / "Image" / "original" / "train_00001.jpg")
    write_image(base / "Image" / "original" / "train_00002.jpg")
    write_image(base / "Image" / "aligned" / "test_0001_aligned.jpg")
    # 5 landmark lines "x<TAB>y", then gender (0 male, 1 female, 2 unsure), race
    # (0 Caucasian, 1 African-American, 2 Asian), age group (0 0-3, 1 4-19, 2 20-39, 3 40-69, 4 70+).
    write_text(base / "Annotation" / "manual" / "train_00001_manu_attri.txt", """
        92.41\t111.09
        150.21\t109.55
        123.75\t145.75
        97.27\t175.23
        147.04\t174.56
        1
        2
        3
    """)
    write_text(base / "Annotation" / "manual" / "train_00002_manu_attri.txt", """
        80.5\t100.25
        140.0\t101.0
        110.0\t130.0
        90.0\t160.0
        130.0\t161.0
        2
        0
        0
    """)
    write_text(base / "Annotation" / "manual" / "test_0001_manu_attri.txt", """
        10.0\t20.0
        30.0\t20.0
        20.0\t30.0
        12.0\t40.0
        28.0\t40.0
        0
        1
        4
    """)
    records, rejects = read("rafdb", tmp_path)
    assert rejects == [] and len(records) == 3

    woman = records["rafdb:train_00001"]
    assert woman.landmarks == ((92.41, 111.09), (150.21, 109.55), (123.75, 145.75), (97.27, 175.23), (147.04, 174.56))
    assert (woman.gender, woman.age_bin, woman.age) == (1, None, None)
    assert (woman.extra["race"], woman.extra["age_group"]) == ("Asian", "40-69")

    unsure = records["rafdb:train_00002"]
    assert (unsure.gender, unsure.extra["raf_gender"], unsure.emotion) == (None, 2, 0)
    assert (unsure.extra["race"], unsure.extra["age_group"], unsure.age_bin) == ("Caucasian", "0-3", None)

    # The manual landmarks are in original-image coordinates: not attached to an aligned crop.
    man = records["rafdb:test_0001"]
    assert (man.aligned, man.landmarks, man.gender, man.emotion) == (True, None, 0, 3)
    assert (man.extra["race"], man.extra["age_group"]) == ("African-American", "70+")


def test_rafdb_bad_rows_become_rejects(tmp_path: Path) -> None:
    label_file = write_text(tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt", """
        train_00001.jpg 4
        train_00002.jpg
        train_00003.jpg 8
        train_00004.jpg 0
        train_00005.jpg happy
        val_00001.jpg 4
        train_../../../../etc/passwd 4
    """)
    records, rejects = read("rafdb", tmp_path)
    assert list(records) == ["rafdb:train_00001"]
    assert reasons(rejects) == ["unparsable_row", "label_out_of_range", "label_out_of_range",
                                "unparsable_row", "unparsable_row", "path_escapes_root"]
    assert [r.source_path for r in rejects] == [f"{label_file}#row={i}" for i in range(1, 7)]
    assert len(records) + len(rejects) == 7


@pytest.mark.parametrize("label", ["inf", "1e999"])
def test_rafdb_infinite_label_is_a_reject(tmp_path: Path, label: str) -> None:
    write_text(tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt", f"train_00001.jpg {label}\n")
    records, rejects = read("rafdb", tmp_path)
    assert records == {} and reasons(rejects) == ["unparsable_row"]


# ------------------------------------------------------------------------------------- AffectNet


def landmarks68(offset: float) -> str:
    """68 points "x;y;..." with point i = (offset + i, 100 + 2i)."""
    return ";".join(f"{offset + i:.1f};{100 + 2 * i:.1f}" for i in range(68))


LM = landmarks68(0.0)
# Eye centres are the means of points 36-41 and 42-47: x = 38.5 and 44.5, y = 100 + 2x.
LM_FIVE = ((38.5, 177.0), (44.5, 189.0), (30.0, 160.0), (48.0, 196.0), (54.0, 208.0))

AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


@pytest.mark.parametrize("validation_header", [True, False])
def test_affectnet_labels(tmp_path: Path, validation_header: bool) -> None:
    write_text(tmp_path / "training.csv", f"""
        {AFFECTNET_HEADER}
        689/e0.jpg,134,120,899,880,"{LM}",0,0.5,-0.25
        689/e1.jpg,10,20,30,40,{LM},1,0.785714,0.0952381
        689/e2.jpg,10,20,30,40,{LM},2,-0.5,0.1
        689/e3.jpg,10,20,30,40,{LM},3,0.1,0.9
        689/e4.jpg,10,20,30,40,{LM},4,-0.7,0.8
        689/e5.jpg,10,20,30,40,{LM},5,-0.6,0.3
        689/e6.jpg,10,20,30,40,{LM},6,-0.8,0.7
        689/e7.jpg,10,20,30,40,{LM},7,-0.3,0.2
        689/e8.jpg,10,20,30,40,{LM},8,0.2,-0.1
        689/e9.jpg,10,20,30,40,{LM},9,-2,-2
        689/e10.jpg,10,20,30,40,{LM},10,-2,-2
    """)
    header = AFFECTNET_HEADER + "\n" if validation_header else ""
    write_text(tmp_path / "validation.csv", header + f"1/v.jpg,5,6,7,8,{LM},7,-0.5,1.0\n")
    images = write_image(tmp_path / "Manually_Annotated_Images" / "689" / "e0.jpg").parents[1]
    records, rejects = read("affectnet", tmp_path)

    assert len(records) + len(rejects) == 12
    assert reasons(rejects) == ["no_face"]
    got = {sid: (r.split, r.emotion) for sid, r in records.items()}
    assert got == {
        **{f"affectnet:689/e{i}.jpg": ("train", i) for i in range(8)},  # 0..7 pass through, 7 contempt
        "affectnet:689/e8.jpg": ("train", None),  # None: kept, no emotion
        "affectnet:689/e9.jpg": ("train", None),  # Uncertain: kept, no emotion
        "affectnet:1/v.jpg": ("test", 7),  # validation.csv is the test split
    }
    first = records["affectnet:689/e0.jpg"]
    assert first.source_path == str(images / "689" / "e0.jpg")
    assert first.face_box == (134.0, 120.0, 1033.0, 1000.0)  # x, y, x + w, y + h
    assert first.landmarks == LM_FIVE
    assert (first.valence, first.arousal) == (0.5, -0.25)
    assert (records["affectnet:1/v.jpg"].valence, records["affectnet:1/v.jpg"].arousal) == (-0.5, 1.0)
    uncertain = records["affectnet:689/e9.jpg"]
    assert (uncertain.valence, uncertain.arousal) == (None, None)  # -2 = invalid
    assert uncertain.extra == {"expression": 9, "expression_name": "Uncertain"}
    assert records["affectnet:689/e8.jpg"].extra["expression_name"] == "None"


def test_affectnet_bad_rows_become_rejects(tmp_path: Path) -> None:
    short_lm = ";".join(["1.0"] * 10)
    write_text(tmp_path / "training.csv", f"""
        {AFFECTNET_HEADER}
        689/good.jpg,10,20,30,40,{LM},1,0.5,0.5
        689/short.jpg,10,20
        689/e11.jpg,10,20,30,40,{LM},11,0.5,0.5
        689/eneg.jpg,10,20,30,40,{LM},-1,0.5,0.5
        689/ex.jpg,10,20,30,40,{LM},happy,0.5,0.5
        689/lm.jpg,10,20,30,40,{short_lm},1,0.5,0.5
        689/box.jpg,ten,20,30,40,{LM},1,0.5,0.5
        ../../outside.jpg,10,20,30,40,{LM},1,0.5,0.5
        /etc/passwd,10,20,30,40,{LM},1,0.5,0.5
    """)
    (tmp_path / "Manually_Annotated_Images").mkdir()
    records, rejects = read("affectnet", tmp_path)
    assert list(records) == ["affectnet:689/good.jpg"]
    assert reasons(rejects) == ["unparsable_row", "label_out_of_range", "label_out_of_range", "unparsable_row",
                                "unparsable_row", "unparsable_row", "path_escapes_root", "path_escapes_root"]


# ------------------------------------------------------------------------------------- FER2013

# FER2013 0..6 = Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral
FER2013_ROWS = f"""
    0,{pixel_text(0)},Training
    1,{pixel_text(1)},Training
    2,{pixel_text(2)},Training
    3,{pixel_text(3)},PublicTest
    4,{pixel_text(4)},PublicTest
    5,{pixel_text(5)},PrivateTest
    6,{pixel_text(6)},PrivateTest
"""
FER2013_EXPECTED = {
    "fer2013:0000000": ("train", 6),  # anger
    "fer2013:0000001": ("train", 5),  # disgust
    "fer2013:0000002": ("train", 4),  # fear
    "fer2013:0000003": ("val", 1),  # happiness
    "fer2013:0000004": ("val", 2),  # sadness
    "fer2013:0000005": ("test", 3),  # surprise
    "fer2013:0000006": ("test", 0),  # neutral
}


@pytest.mark.parametrize("header", ["emotion,pixels,Usage\n", ""])
def test_fer2013_labels_splits_and_pixels(tmp_path: Path, header: str) -> None:
    path = write_text(tmp_path / "fer2013.csv", header + textwrap.dedent(FER2013_ROWS).lstrip("\n"))
    records, rejects = read("fer2013", tmp_path)
    assert rejects == []
    assert {sid: (r.split, r.emotion) for sid, r in records.items()} == FER2013_EXPECTED
    for i, rec in enumerate(records.values()):
        assert isinstance(rec.pixels, TextSpan)  # where the row's text is: the workers read and decode it
        assert rec.pixels.read() == pixel_text(i).encode()
        pixels = text_pixels(rec.pixels.read())
        assert pixels.dtype == np.uint8 and pixels.shape == (48, 48)
        np.testing.assert_array_equal(pixels, pixel_array(i))
        assert rec.source_path == f"{path}#row={i}"


def test_fer2013_bad_rows_become_rejects(tmp_path: Path) -> None:
    write_text(tmp_path / "fer2013.csv", f"""
        emotion,pixels,Usage
        3,{pixel_text(0)},Training
        7,{pixel_text(1)},Training
        happy,{pixel_text(2)},Training
        0,{pixel_text(3)}
        0,1 2 3,Training
        0,{pixel_text(5).replace("5", "300", 1)},Training
        0,{pixel_text(6)},Validation
    """)
    records, rejects = read("fer2013", tmp_path)
    assert list(records) == ["fer2013:0000000", "fer2013:0000004", "fer2013:0000005"]
    assert reasons(rejects) == ["label_out_of_range", "unparsable_row", "unparsable_row", "label_out_of_range"]
    # the pixels are the decode stage's: the workers read them, a bad one is a reject there
    result = ingest("fer2013", tmp_path, tmp_path / "out", size=112)
    assert (result.rows_read, result.n_samples, result.n_rejects) == (7, 1, 6)
    bad = catalog.query(result.catalog, "SELECT source_path, stage, reason, detail FROM rejects WHERE stage = 'decode' "
                                        "ORDER BY source_path")
    assert bad.values.tolist() == [
        ["fer2013.csv#row=4", "decode", "corrupt_image", "pixels has 3 values, expected 2304"],
        ["fer2013.csv#row=5", "decode", "corrupt_image", "pixel values outside 0..255"]]


def test_fer2013_infinite_emotion_is_a_reject(tmp_path: Path) -> None:
    write_text(tmp_path / "fer2013.csv", f"emotion,pixels,Usage\ninf,{pixel_text(0)},Training\n")
    records, rejects = read("fer2013", tmp_path)
    assert records == {} and reasons(rejects) == ["unparsable_row"]


# ------------------------------------------------------------------------------------- FERPlus

FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")


def test_ferplus_majority_votes(tmp_path: Path) -> None:
    write_text(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n" + "".join(
        f"{i % 7},{pixel_text(i)},Training\n" for i in range(15)))
    #          Usage,Image name,    neu,hap,sur,sad,ang,dis,fea,con,unk,NF
    write_text(tmp_path / "fer2013new.csv", """
        Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
        Training,fer0000000.png,6,4,0,0,0,0,0,0,0,0
        Training,fer0000001.png,0,10,0,0,0,0,0,0,0,0
        Training,fer0000002.png,0,0,9,0,0,0,0,0,1,0
        Training,fer0000003.png,1,0,0,8,1,0,0,0,0,0
        PublicTest,fer0000004.png,0,0,0,0,7,3,0,0,0,0
        PublicTest,fer0000005.png,0,0,0,0,2,6,0,0,0,1
        PrivateTest,fer0000006.png,0,0,3,0,0,0,7,0,0,0
        PrivateTest,fer0000007.png,2,0,0,0,0,0,0,8,0,0
        Training,fer0000008.png,5,5,0,0,0,0,0,0,0,0
        Training,fer0000009.png,4,3,3,0,0,0,0,0,0,0
        Training,fer0000010.png,0,0,0,0,0,0,0,0,0,0
        Training,fer0000011.png,1,0,0,0,0,0,0,0,8,1
        Training,fer0000012.png,0,0,0,0,0,0,0,0,0,10
        Training,,0,0,0,0,0,0,0,0,0,10
        Training,fer0000014.png,0,11,0,0,0,0,0,0,0,0
    """)
    records, rejects = read("ferplus", tmp_path)
    assert len(records) + len(rejects) == 15
    assert {sid: (r.split, r.emotion) for sid, r in records.items()} == {
        "ferplus:fer0000000.png": ("train", 0),  # neutral 6 of 10
        "ferplus:fer0000001.png": ("train", 1),  # happiness
        "ferplus:fer0000002.png": ("train", 3),  # surprise
        "ferplus:fer0000003.png": ("train", 2),  # sadness
        "ferplus:fer0000004.png": ("val", 6),  # anger
        "ferplus:fer0000005.png": ("val", 5),  # disgust 6 of 9
        "ferplus:fer0000006.png": ("test", 4),  # fear
        "ferplus:fer0000007.png": ("test", 7),  # contempt
    }
    assert reasons(rejects) == ["no_majority", "no_majority", "no_majority", "not_an_emotion", "not_an_emotion",
                                "not_a_face", "label_out_of_range"]
    assert records["ferplus:fer0000000.png"].extra["votes"] == dict(zip(FERPLUS_VOTES, [6, 4, 0, 0, 0, 0, 0, 0, 0, 0]))


def test_ferplus_rows_follow_fer2013_row_order(tmp_path: Path) -> None:
    # fer2013.csv without a header and with a short row 1: the row count still lines up.
    write_text(tmp_path / "fer2013.csv", f"""
        0,{pixel_text(10)},Training
        3,{pixel_text(11)}
        4,{pixel_text(12)},PublicTest
    """)
    write_text(tmp_path / "fer2013new.csv", """
        Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
        Training,fer0000000.png,0,0,0,0,10,0,0,0,0,0
        Training,fer0000001.png,0,10,0,0,0,0,0,0,0,0
        PublicTest,fer0000002.png,0,0,0,10,0,0,0,0,0,0
    """)
    records, rejects = read("ferplus", tmp_path)
    fer, _ = read("fer2013", tmp_path)
    assert list(records) == ["ferplus:fer0000000.png", "ferplus:fer0000002.png"]
    assert reasons(rejects) == ["missing_file"]
    assert records["ferplus:fer0000000.png"].pixels == fer["fer2013:0000000"].pixels
    assert records["ferplus:fer0000002.png"].pixels == fer["fer2013:0000002"].pixels
    np.testing.assert_array_equal(text_pixels(records["ferplus:fer0000002.png"].pixels.read()), pixel_array(12))
    assert records["ferplus:fer0000002.png"].source_path == f"{tmp_path / 'fer2013.csv'}#row=2"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_fer2013_pixels_read_where_the_file_holds_them_whatever_the_line(tmp_path: Path, newline: str,
                                                                       bom: bytes) -> None:
    """A plain line's pixels are a byte range of the CSV (no copy of the text); a quoted line, a line with
    a non-ASCII byte elsewhere in it, padded fields: the same values as the text reader gives, line ends
    "\n", "\r\n" or a lone "\r" (old Mac), with or without a UTF-8 BOM. A file changed since it was
    listed is a reject of the row, not a crash."""
    lines = ["emotion,pixels,Usage", f"3,{pixel_text(0)},Training", f'4,"{pixel_text(1)}",PublicTest',
             f"5,  {pixel_text(2)} ,Training ", f"6,{pixel_text(3)},Trainıng", f"0,{pixel_text(4)},PrivateTest,é",
             "", f"1,{pixel_text(5)},Training"]
    path = tmp_path / "fer2013.csv"
    path.write_bytes(bom + newline.join(lines).encode() + newline.encode())
    records, rejects = read("fer2013", tmp_path)
    assert reasons(rejects) == ["label_out_of_range"]  # "Trainıng" (a dotless i) is no Usage
    assert list(records) == ["fer2013:0000000", "fer2013:0000001", "fer2013:0000002", "fer2013:0000004",
                             "fer2013:0000005"]
    seeds = {"fer2013:0000000": 0, "fer2013:0000001": 1, "fer2013:0000002": 2, "fer2013:0000004": 4,
             "fer2013:0000005": 5}
    for sid, rec in records.items():
        spanned = sid not in ("fer2013:0000001", "fer2013:0000004")  # quoted, and a non-ASCII line: their text
        assert isinstance(rec.pixels, TextSpan) == spanned, sid
        text = rec.pixels.read() if spanned else rec.pixels
        np.testing.assert_array_equal(text_pixels(text), pixel_array(seeds[sid]))
        assert rec.source_path == f"{path}#row={sid[-1]}"
    stored = unpack(_pack(records["fer2013:0000000"]))  # the record store keeps the range, not the text
    assert stored.pixels == records["fer2013:0000000"].pixels and _pack(stored)[1] is None
    spans = [records[sid].pixels for sid in ("fer2013:0000005", "fer2013:0000000")]
    got = read_spans([*spans, TextSpan(str(tmp_path / "gone.csv"), 0, 3)])  # one open for both
    assert got[:2] == [pixel_text(5).encode(), pixel_text(0).encode()]
    assert isinstance(got[2], BadRow) and "gone.csv" in got[2].detail  # a missing file: why, not bytes
    path.write_bytes(bom + lines[0].encode())  # the file cut short after it was listed
    assert [(b.reason, "changed since it was listed" in b.detail) for b in read_spans(spans)] == [
        ("corrupt_image", True), ("corrupt_image", True)]
    with pytest.raises(BadRow, match="corrupt_image"):
        records["fer2013:0000005"].pixels.read()


# ------------------------------------------------------------------------------------- class folders: SFEW, MMA, imagefolder

SFEW_MMA_CLASSES = {"Angry": 6, "Disgust": 5, "Fear": 4, "Happy": 1, "Neutral": 0, "Sad": 2, "Surprise": 3}


@pytest.mark.parametrize(
    ("name", "split_folders", "class_case", "suffix"),
    [
        ("sfew", {"Train": "train", "Val": "val"}, str, ".png"),
        ("mma", {"train": "train", "valid": "val", "test": "test"}, str.lower, ".jpg"),
    ],
)
def test_class_folder_releases(tmp_path: Path, name: str, split_folders: dict[str, str], class_case, suffix: str) -> None:
    expected = {}
    for folder, split in split_folders.items():
        for cls, emotion in SFEW_MMA_CLASSES.items():
            rel = f"{folder}/{class_case(cls)}/{cls.lower()}_001{suffix}"
            write_image(tmp_path / rel)
            expected[f"{name}:{rel}"] = (split, emotion)
    (tmp_path / "README.txt").write_text("not an image")  # beside the split folders: not part of the release
    thumbs = tmp_path / next(iter(split_folders)) / class_case("Happy") / "Thumbs.db"
    thumbs.write_text("not an image")
    records, rejects = read(name, tmp_path)
    assert [(r.source_path, r.reason) for r in rejects] == [(str(thumbs), "unsupported_format")]
    assert {sid: (r.split, r.emotion) for sid, r in records.items()} == expected


def test_imagefolder_synonyms_and_hash_splits(tmp_path: Path) -> None:
    tree = {"happy/a.jpg": 1, "Angry/b.png": 6, "surprised/c.jpg": 3, "Sad/d.jpeg": 2, "Sad/sub/e.jpg": 2,
            "FEARFUL/f.jpg": 4, "contempt/g.jpg": 7, "Neutral/h.bmp": 0}
    for rel in [*tree, "pizza/x.jpg", "pizza/y.jpg"]:
        write_image(tmp_path / "one" / rel)
        write_image(tmp_path / "two" / rel)
    records, rejects = read("imagefolder", tmp_path / "one")
    assert {sid: r.emotion for sid, r in records.items()} == {f"imagefolder:{rel}": e for rel, e in tree.items()}
    assert reasons(rejects) == ["label_out_of_range", "label_out_of_range"]
    assert [r.source_path for r in rejects] == [str(tmp_path / "one/pizza/x.jpg"), str(tmp_path / "one/pizza/y.jpg")]
    # Deterministic: the split hashes the path relative to the root, so another copy splits alike.
    assert {sid: r.split for sid, r in records.items()} == {f"imagefolder:{rel}": hash_split(rel) for rel in tree}
    again, _ = read("imagefolder", tmp_path / "two")
    assert {sid: r.split for sid, r in again.items()} == {sid: r.split for sid, r in records.items()}


def test_imagefolder_with_split_folders(tmp_path: Path) -> None:
    for rel in ("Training/Happy/a.jpg", "Validation/sad/b.jpg", "testing/Surprise/c.jpg"):
        write_image(tmp_path / rel)
    records, rejects = read("imagefolder", tmp_path)
    assert rejects == []
    assert {sid: (r.split, r.emotion) for sid, r in records.items()} == {
        "imagefolder:Training/Happy/a.jpg": ("train", 1),
        "imagefolder:Validation/sad/b.jpg": ("val", 2),
        "imagefolder:testing/Surprise/c.jpg": ("test", 3),
    }


def test_imagefolder_follows_symlinks_the_user_made(tmp_path: Path) -> None:
    """Links inside the root are the user's (big image folders on another disk); only label paths are checked."""
    outside = write_image(tmp_path / "elsewhere" / "a.jpg")
    root = tmp_path / "root"
    write_image(root / "happy" / "in.jpg")
    (root / "sad").symlink_to(outside.parent, target_is_directory=True)
    records, rejects = read("imagefolder", root)
    assert sorted(records) == ["imagefolder:happy/in.jpg", "imagefolder:sad/a.jpg"]
    assert records["imagefolder:sad/a.jpg"].source_path == str(root / "sad" / "a.jpg")
    assert rejects == []


# ------------------------------------------------------------------------------------- FairFace


def test_fairface_labels(tmp_path: Path) -> None:
    write_text(tmp_path / "fairface_label_train.csv", """
        file,age,gender,race,service_test
        train/1.jpg,0-2,Male,East Asian,True
        train/2.jpg,3-9,Female,Indian,False
        train/3.jpg,10-19,Male,Black,False
        train/4.jpg,20-29,Female,White,True
        train/5.jpg,30-39,Male,Middle Eastern,False
        train/6.jpg,40-49,Female,Latino_Hispanic,True
        train/7.jpg,50-59,Male,Southeast Asian,False
        train/8.jpg,60-69,Female,White,False
        train/9.jpg,more than 70,Male,Indian,True
    """)
    # The first release has no service_test column.
    write_text(tmp_path / "fairface_label_val.csv", """
        file,age,gender,race
        val/1.jpg,more than 70,Female,Black
        val/2.jpg,3-9,Male,East Asian
    """)
    write_image(tmp_path / "train" / "1.jpg")
    records, rejects = read("fairface", tmp_path)
    assert rejects == []
    assert {sid: (r.split, r.age_bin, r.gender) for sid, r in records.items()} == {
        "fairface:train/1.jpg": ("train", 0, 0),
        "fairface:train/2.jpg": ("train", 1, 1),
        "fairface:train/3.jpg": ("train", 2, 0),
        "fairface:train/4.jpg": ("train", 3, 1),
        "fairface:train/5.jpg": ("train", 4, 0),
        "fairface:train/6.jpg": ("train", 5, 1),
        "fairface:train/7.jpg": ("train", 6, 0),
        "fairface:train/8.jpg": ("train", 7, 1),
        "fairface:train/9.jpg": ("train", 8, 0),
        "fairface:val/1.jpg": ("val", 8, 1),
        "fairface:val/2.jpg": ("val", 1, 0),
    }
    first = records["fairface:train/1.jpg"]
    assert first.source_path == str(tmp_path / "train" / "1.jpg") and first.age is None
    assert first.extra == {"age_text": "0-2", "race": "East Asian", "service_test": "True"}
    assert records["fairface:val/1.jpg"].extra == {"age_text": "more than 70", "race": "Black", "service_test": ""}


def test_fairface_bad_rows_become_rejects(tmp_path: Path) -> None:
    write_text(tmp_path / "fairface_label_train.csv", """
        file,age,gender,race,service_test
        train/1.jpg,20-29,Male,White,True
        train/2.jpg,20-29
        train/3.jpg,75-80,Male,White,True
        train/4.jpg,20-29,Unknown,White,True
        ../outside.jpg,20-29,Female,White,True
    """)
    records, rejects = read("fairface", tmp_path)
    assert list(records) == ["fairface:train/1.jpg"]
    assert reasons(rejects) == ["unparsable_row", "label_out_of_range", "label_out_of_range", "path_escapes_root"]


# ------------------------------------------------------------------------------------- UTKFace


def test_utkface_labels_from_file_names(tmp_path: Path) -> None:
    good = {
        # name: (age, age_bin, gender, race)
        "UTKFace/25_1_2_20170116174525125.jpg.chip.jpg": (25.0, 3, 1, "Asian"),
        "UTKFace/1_0_0_20161219140623097.jpg.chip.jpg": (1.0, 0, 0, "White"),
        "UTKFace/9_1_1_20170109202914427.jpg.chip.jpg": (9.0, 1, 1, "Black"),
        "UTKFace/70_0_3_20170111201948473.jpg.chip.jpg": (70.0, 8, 0, "Indian"),
        "UTKFace/116_1_4_20170120134744096.jpg.chip.jpg": (116.0, 8, 1, "Others"),
    }
    bad = {
        "UTKFace/61_1_20170109142408075.jpg.chip.jpg": "malformed_name",  # real: the race is missing
        "UTKFace/39_1_20170116174525125.jpg.chip.jpg": "malformed_name",  # real: the race is missing
        "UTKFace/53__0_20170116184028385.jpg.chip.jpg": "unparsable_row",  # real: the gender is empty
        "UTKFace/117_0_0_20170116174525125.jpg.chip.jpg": "label_out_of_range",
        "UTKFace/30_2_0_20170116174525125.jpg.chip.jpg": "label_out_of_range",
        "UTKFace/30_0_5_20170116174525125.jpg.chip.jpg": "label_out_of_range",
    }
    for rel in [*good, *bad]:
        write_image(tmp_path / rel)
    write_image(tmp_path / "in_the_wild" / "40_0_1_20170117134213422.jpg")
    records, rejects = read("utkface", tmp_path)
    assert len(records) + len(rejects) == len(good) + len(bad) + 1
    got = {sid: (r.age, r.age_bin, r.gender, r.extra["race"]) for sid, r in records.items()}
    assert got == {**{f"utkface:{rel}": v for rel, v in good.items()},
                   "utkface:in_the_wild/40_0_1_20170117134213422.jpg": (40.0, 5, 0, "Black")}
    assert {r.source_path: r.reason for r in rejects} == {str(tmp_path / rel): why for rel, why in bad.items()}
    assert all(r.split == hash_split(sid.removeprefix("utkface:")) for sid, r in records.items())
    assert records["utkface:UTKFace/25_1_2_20170116174525125.jpg.chip.jpg"].aligned is True
    assert records["utkface:in_the_wild/40_0_1_20170117134213422.jpg"].aligned is False


# ------------------------------------------------------------------------------------- LAGENDA


def test_lagenda_faces(tmp_path: Path) -> None:
    write_text(tmp_path / "lagenda_annotation.csv", """
        img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1
        images/0001.jpg,25,M,10,12,50,60,0,0,100,120
        images/0001.jpg,-1,F,60,10,90,40,55,0,100,100
        images/0002.jpg,71,-1,5,5,30,30,,,,
        images/0001.jpg,8.5,F,100,100,120,130,,,,
        images/0003.jpg,30,X,5,5,30,30,,,,
        images/0004.jpg,130,M,5,5,30,30,,,,
        images/0005.jpg,30,M,50,50,10,10,,,,
        images/0006.jpg,30
        ../../outside.jpg,30,M,5,5,30,30,,,,
    """)
    records, rejects = read("lagenda", tmp_path)
    assert len(records) + len(rejects) == 9
    got = {sid: (r.age, r.age_bin, r.gender, r.face_box) for sid, r in records.items()}
    assert got == {
        "lagenda:images/0001.jpg#0": (25.0, 3, 0, (10.0, 12.0, 50.0, 60.0)),
        "lagenda:images/0001.jpg#1": (None, None, 1, (60.0, 10.0, 90.0, 40.0)),  # age -1 = missing
        "lagenda:images/0002.jpg#0": (71.0, 8, None, (5.0, 5.0, 30.0, 30.0)),  # gender -1 = missing
        "lagenda:images/0001.jpg#2": (8.5, 1, 1, (100.0, 100.0, 120.0, 130.0)),
    }
    assert reasons(rejects) == ["label_out_of_range", "label_out_of_range", "unparsable_row", "unparsable_row",
                                "path_escapes_root"]
    # Every face of one image lands in the same split.
    assert {r.split for sid, r in records.items() if "0001" in sid} == {hash_split("images/0001.jpg")}
    assert records["lagenda:images/0001.jpg#0"].source_path == str(tmp_path / "images" / "0001.jpg")


# ------------------------------------------------------------------------------------- CelebA

CELEBA_HEADER = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                 "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                 "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                 "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                 "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young")


def test_celeba_gender_partition_identity(tmp_path: Path) -> None:
    # Count line, header line of 40 attribute names, then a name and 40 values of 1/-1 (Male is the 21st).
    write_text(tmp_path / "list_attr_celeba.txt", f"""
        6
        {CELEBA_HEADER}
        000001.jpg -1  1  1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1  1
        000002.jpg -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1
        000003.jpg -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1 -1
        000004.jpg -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1
        000005.jpg -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  0 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1
        000006.jpg -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1
    """)
    write_text(tmp_path / "list_eval_partition.txt", """
        000001.jpg 0
        000002.jpg 1
        000003.jpg 2
        000004.jpg 0
        000005.jpg 0
    """)
    write_text(tmp_path / "identity_CelebA.txt", """
        000001.jpg 2880
        000002.jpg 2937
        000003.jpg 8692
        000006.jpg 2880
    """)
    write_image(tmp_path / "img_align_celeba" / "000001.jpg")
    records, rejects = read("celeba", tmp_path)
    assert len(records) + len(rejects) == 6
    got = {sid: (r.split, r.gender, r.subject) for sid, r in records.items()}
    assert got == {
        "celeba:000001.jpg": ("train", 1, "2880"),  # Male -1: female
        "celeba:000002.jpg": ("val", 0, "2937"),  # Male 1: male
        "celeba:000003.jpg": ("test", 0, "8692"),
        "celeba:000006.jpg": (hash_split("2880"), 0, "2880"),  # no partition entry: split by identity
    }
    assert reasons(rejects) == ["unparsable_row", "label_out_of_range"]  # 39 values; a 0 value
    first = records["celeba:000001.jpg"]
    assert first.extra["attributes"] == ["Arched_Eyebrows", "Attractive", "Smiling", "Young"]
    assert first.source_path == str(tmp_path / "img_align_celeba" / "000001.jpg") and first.aligned is True
    assert records["celeba:000003.jpg"].extra["attributes"] == ["Eyeglasses", "Male", "Smiling"]


# ------------------------------------------------------------------------------------- VGGFace2

VGG_META = """
    Class_ID, Name, Sample_Num, Flag, Gender
    n000001, "14th_Dalai_Lama", 424, 0, m
    n000002, "Abdullah, King", 315, 1, f
    n000003, "A_Nobody", 10, 1, x
    n000004, "Aaron_Tveit", 362, 0, m
"""


def test_vggface2_gender_identities_landmarks(tmp_path: Path) -> None:
    write_text(tmp_path / "identity_meta.csv", VGG_META)
    write_text(tmp_path / "bb_landmark" / "loose_landmark_train.csv", """
        "NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"
        "n000002/0001_01",75.81253,110.2077,103.1778,104.6074,90.06353,133.4419,85.04079,149.0228,106.6574,145.8439
    """)
    for rel in ("train/n000001/0001_01.jpg", "train/n000002/0001_01.jpg", "train/n000002/0002_01.jpg",
                "train/n000003/0001_01.jpg", "train/n009999/0001_01.jpg", "test/n000004/0001_01.jpg"):
        write_image(tmp_path / rel)
    records, rejects = read("vggface2", tmp_path)
    assert len(records) + len(rejects) == 6
    got = {sid: (r.split, r.gender, r.subject) for sid, r in records.items()}
    assert got == {
        "vggface2:train/n000001/0001_01": ("train", 0, "n000001"),
        "vggface2:train/n000002/0001_01": ("train", 1, "n000002"),  # "Abdullah, King": quoted comma
        "vggface2:train/n000002/0002_01": ("train", 1, "n000002"),
        "vggface2:test/n000004/0001_01": ("test", 0, "n000004"),
    }
    assert {r.source_path: r.reason for r in rejects} == {
        str(tmp_path / "train/n000003/0001_01.jpg"): "label_out_of_range",  # gender x
        str(tmp_path / "train/n009999/0001_01.jpg"): "unknown_identity",
    }
    assert records["vggface2:train/n000002/0001_01"].landmarks == (
        (75.81253, 110.2077), (103.1778, 104.6074), (90.06353, 133.4419), (85.04079, 149.0228), (106.6574, 145.8439))
    assert records["vggface2:train/n000002/0002_01"].landmarks is None


def test_vggface2_bad_landmark_row_does_not_abort_the_read(tmp_path: Path) -> None:
    write_text(tmp_path / "identity_meta.csv", VGG_META)
    write_text(tmp_path / "bb_landmark" / "loose_landmark_train.csv", """
        "NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"
        "n000002/0001_01",1,2,3,4,5,6,7,8,9,10
        "n000002/0002_01",n/a,2,3,4,5,6,7,8,9,10
    """)
    write_image(tmp_path / "train/n000002/0001_01.jpg")
    write_image(tmp_path / "train/n000002/0002_01.jpg")
    records, rejects = read("vggface2", tmp_path)
    assert len(records) + len(rejects) == 2
    assert records["vggface2:train/n000002/0001_01"].landmarks == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10))
