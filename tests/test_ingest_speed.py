"""What makes the default ingest fast, asserted on behaviour: plain JPEGs decoded by OpenCV to the pixels
Pillow gives, everything else still through Pillow, and no insightface import for an ingest that never
aligns on landmarks."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from conftest import write_image
from fer_data.decode import decode_image


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def no_pillow_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("Pillow decoded the pixels of a plain JPEG")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_plain_jpeg_decodes_without_pillow_to_the_same_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               mode: str) -> None:
    with Image.open(write_image(tmp_path / "a.png", size=100)) as im:
        buf = io.BytesIO()
        im.convert(mode).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    expected = pillow_pixels(data)
    no_pillow_decoding(monkeypatch)
    rgb, full = decode_image(data, "a.jpg")
    assert full == (100, 100) and rgb.shape == (100, 100, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, expected)


@pytest.mark.parametrize("kind", ["exif_turned", "cmyk", "over_budget"])
def test_other_jpegs_still_take_pillows_path(tmp_path: Path, kind: str) -> None:
    with Image.open(write_image(tmp_path / "a.png", size=96)) as im:
        im = im.convert("RGB").resize((96, 64))
        buf = io.BytesIO()
        if kind == "exif_turned":
            exif = Image.Exif()
            exif[0x0112] = 6  # stored on its side: shown turned a quarter
            im.save(buf, "JPEG", quality=90, exif=exif)
        else:
            (im.convert("CMYK") if kind == "cmyk" else im).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    budget = 48 * 32 if kind == "over_budget" else 2**22
    rgb, full = decode_image(data, "a.jpg", budget)
    if kind == "exif_turned":
        assert full == (64, 96) and np.array_equal(rgb, pillow_pixels(data))
    elif kind == "cmyk":
        assert full == (96, 64) and np.array_equal(rgb, pillow_pixels(data))
    else:
        assert full == (96, 64) and rgb.shape[0] * rgb.shape[1] <= budget


def test_importing_the_ingest_does_not_import_insightface() -> None:
    code = "import sys, fer_data.ingest; sys.exit('insightface' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_a_jpeg_cut_short_after_its_header_is_still_corrupt(tmp_path: Path) -> None:
    from fer_data.records import BadRow

    with Image.open(write_image(tmp_path / "a.png", size=100)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    with pytest.raises(BadRow) as err:
        decode_image(data[:len(data) // 2], "a.jpg")
    assert err.value.reason == "corrupt_image"


def test_relative_paths_are_relpaths_without_calling_it_for_plain_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from fer_data.ingest import relative

    cases = [("/r/a/b.jpg", "/r"), ("/r/a/../b.jpg", "/r"), ("/r/./a.jpg", "/r"), ("/r", "/r"), ("/rr/a", "/r"),
             ("/x/y", "/r"), ("rel/a", "/r"), ("/r/a.csv#row=3", "/r"), ("/a", "/"), ("/r//a", "/r")]
    expected = [os.path.relpath(p, r) if os.path.isabs(p) else p for p, r in cases]
    assert [relative(p, r) for p, r in cases] == expected

    def refuse(*args: object) -> str:
        raise AssertionError("relpath called for a plain path under the root")

    monkeypatch.setattr(os.path, "relpath", refuse)
    assert relative("/data/raw/Image/aligned/train_00001_aligned.jpg", "/data/raw") == "Image/aligned/train_00001_aligned.jpg"
    assert relative("/data/raw/fer2013.csv#row=7", "/data/raw") == "fer2013.csv#row=7"


def test_inside_keeps_pathlibs_answer(tmp_path: Path) -> None:
    """`inside` compares strings now (a sixth of RAF-DB's per-row reading): the same paths as
    `Path.is_relative_to` accepts, the same refused, symlinks taken as written."""
    import os

    from fer_data.datasets.base import inside
    from fer_data.records import BadRow

    root = tmp_path / "raw"
    (root / "Image").mkdir(parents=True)
    os.symlink(tmp_path, root / "Image" / "linked")  # a user's link out of the release: theirs
    for rel in ["a.jpg", " a.jpg ", "Image/b.jpg", "Image/../a.jpg", "Image/linked/c.jpg", "", ".",
                "../raw/a.jpg", "../raw2/a.jpg", "..", "../..", "/etc/passwd", "Image/../../x.jpg"]:
        path = Path(os.path.normpath(root / rel.strip()))
        if path.is_relative_to(root):
            assert inside(root, rel) == path, rel
        else:
            with pytest.raises(BadRow, match="resolves outside"):
                inside(root, rel)


def pillow_plain(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """What the Pillow path would call plain: a JPEG in L or RGB, within budget, upright."""
    with Image.open(io.BytesIO(data)) as im:
        plain = (im.format == "JPEG" and im.mode in ("RGB", "L") and im.size[0] * im.size[1] <= max_pixels
                 and im.getexif().get(0x0112, 1) == 1)
        return im.size if plain else None


JPEG_KINDS = {  # kind: Image.save keywords, and whether the header reading must take the fast path
    "baseline": ({}, True), "grey": ({}, True), "progressive": ({"progressive": True}, True),
    "no_subsampling": ({"subsampling": 0}, True), "comment_icc": ({"comment": b"hi", "icc_profile": b"\0" * 200}, True),
    "restarts": ({"restart_marker_rows": 1}, True), "exif_upright": ({"exif_orientation": 1}, True),
    "exif_turned": ({"exif_orientation": 6}, False), "exif_mirrored": ({"exif_orientation": 2}, False),
    "xmp": ({"xmp": b'<x:xmpmeta><rdf:Description tiff:Orientation="1"/></x:xmpmeta>'}, False),
    "cmyk": ({}, False), "over_budget": ({}, False), "mpo": ({}, False),
}


@pytest.mark.parametrize("kind", sorted(JPEG_KINDS))
def test_the_jpeg_header_reading_agrees_with_pillow(tmp_path: Path, kind: str) -> None:
    """`plain_jpeg` reads the markers itself: where it says plain, Pillow must too, with the same size,
    and OpenCV's pixels must be Pillow's; on the common files it must say so (else no speed-up)."""
    from fer_data.decode import plain_jpeg

    keywords, fast = JPEG_KINDS[kind]
    keywords = dict(keywords)
    with Image.open(write_image(tmp_path / "a.png", size=96)) as im:
        im = im.convert("L" if kind == "grey" else "CMYK" if kind == "cmyk" else "RGB").resize((96, 64))
        if "exif_orientation" in keywords:
            exif = Image.Exif()
            exif[0x0112] = keywords.pop("exif_orientation")
            keywords["exif"] = exif
        buf = io.BytesIO()
        if kind == "mpo":
            im.save(buf, "MPO", save_all=True, append_images=[im.rotate(90)])
        else:
            im.save(buf, "JPEG", quality=90, **keywords)
    data = buf.getvalue()
    budget = 48 * 32 if kind == "over_budget" else 2**22
    ours, theirs = plain_jpeg(data, budget), pillow_plain(data, budget)
    assert ours == (theirs if fast else None), (ours, theirs)
    rgb, full = decode_image(data, "a.jpg", budget)
    assert full == (64, 96) if kind == "exif_turned" else full == (96, 64)
    if kind != "over_budget":
        assert np.array_equal(rgb, pillow_pixels(data))
    for cut in (3, 20, data.find(b"\xff\xda")):  # a header cut short, up to the scan, is never plain
        assert plain_jpeg(data[:cut], budget) is None
