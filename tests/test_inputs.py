"""Inputs built to hurt: lying video headers, huge and odd images, names no file system or encoder
takes, label files in other encodings. Each becomes a sample decoded as its author meant it, or
one reject naming the file; none takes the ingest down or its memory past the budget.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import _astronaut, write_image
from fer_data import catalog, decode
from fer_data.datasets import BadRow, get_adapter
from fer_data.datasets.base import encodable
from fer_data.ingest import ingest, load
from fer_data.records import Record, Reject
from fer_data.video import Clip, probe
from test_faults import audit, rejects_of, sample_ids, write_dfew, write_video

SIZE = 112
SEGMENTS = 8

# ------------------------------------------------------------------------------------- writers


def lying_mkv(path: Path, duration_ms: float = 1e12) -> Path:
    """A real 4-frame Matroska video (named as the caller likes) whose header claims `duration_ms`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode())
    data = bytearray(buf.getvalue())
    at = data.index(b"\x44\x89\x88")  # EBML Duration element, an 8-byte float (in TimecodeScale units, 1 ms)
    data[at + 3:at + 11] = struct.pack(">d", duration_ms)
    path.write_bytes(bytes(data))
    return path


def big_png(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    """A valid all-black PNG of any size in a few KB, written a row at a time (no full image in memory)."""
    channels = {"L": (0, 1), "RGB": (2, 3)}[mode]
    deflate = zlib.compressobj(9)
    row = bytes(1 + width * channels[1])  # filter byte 0 and black pixels
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, channels[0], 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole), e.g. a 2 GiB ".jpg"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


def face() -> np.ndarray:
    """The conftest face photo (astronaut), 200 x 200, upright."""
    return np.ascontiguousarray(_astronaut()[30:230, 125:325])


def rafdb_with(root: Path, images: dict[str, Path], labels: dict[str, int]) -> Path:
    """RAF-DB layout with the given label rows; `images` maps names to the files copied in."""
    base = root / "basic"
    for name, src in images.items():
        dest = base / "Image" / "original" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    (base / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {v}\n" for n, v in labels.items()))
    return root


def image_record(path: Path, **fields: object) -> Record:
    return Record(sample_id=f"test:{path.name}", dataset="test", split="train", source_path=str(path), **fields)


def shard_crops(out: Path) -> dict[str, np.ndarray]:
    """sample id -> decoded crop of every sample in the shards the catalog names."""
    crops: dict[str, np.ndarray] = {}
    for sid, shard in catalog.query(out / "catalog.duckdb", "SELECT sample_id, shard FROM samples").itertuples(index=False):
        with tarfile.open(out / shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    crops[sid] = np.asarray(Image.open(tar.extractfile(member)).convert("RGB"))
    return crops


def max_rss_mb(cmd: list[str]) -> tuple[int, float, str]:
    """(exit code, peak resident memory of `cmd` in MiB, its output), measured by a parent of its own
    so that no other child of this test process counts."""
    probe_cmd = [sys.executable, "-c",
                 "import resource, subprocess, sys\n"
                 "rc = subprocess.run(sys.argv[1:]).returncode\n"
                 "print('RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)", *cmd]
    done = subprocess.run(probe_cmd, capture_output=True, text=True, timeout=600)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RSS_KB"))
    _, kb, rc = line.split()
    return int(rc), int(kb) / 1024, done.stdout + done.stderr


def fer_ingest(dataset: str, root: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "fer_cli.main", "ingest", dataset, str(root), "--out", str(out), "--runner", "none",
            "--size", str(SIZE), *options]


# ------------------------------------------------------------------------------------- video headers


def test_lying_video_header_is_a_corrupt_video_reject_and_the_ingest_exits_0(tmp_path: Path) -> None:
    """A 1 KB Matroska file named .mp4 claiming a 1e12 ms duration: decord sized a frame table by
    it, threw std::bad_alloc and the process aborted (134). Run in a process of its own for that."""
    root = write_dfew(tmp_path / "dfew", {1: 1, 2: 1})
    write_video(root / "Clip" / "original" / "00001.mp4", 12)
    liar = lying_mkv(root / "Clip" / "original" / "00002.mp4")
    assert liar.stat().st_size < 3000
    done = subprocess.run(fer_ingest("dfew", root, tmp_path / "out", "--segments", str(SEGMENTS), "--detector", "none"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = catalog.query(tmp_path / "out" / "catalog.duckdb", "SELECT rows_read, n_samples, n_rejects FROM ingests")
    assert result.values.tolist() == [[2, 1, 1]]
    (reason, detail), = catalog.query(tmp_path / "out" / "catalog.duckdb",
                                      "SELECT reason, detail FROM rejects").values.tolist()
    assert reason == "corrupt_video"
    assert "00002.mp4" in detail and "header claims" in detail and "holds 4" in detail


def test_probe_believes_plausible_headers_and_counts_the_others(tmp_path: Path) -> None:
    assert probe(lying_mkv(tmp_path / "honest.mkv", duration_ms=160)) == (64, 64)  # 4 frames at 25 fps: true
    with pytest.raises(ValueError, match=r"liar\.mkv: its header claims 25000000000 frames .* holds 4"):
        probe(lying_mkv(tmp_path / "liar.mkv"))


# ------------------------------------------------------------------------------------- names


def test_300_character_name_in_a_label_file_rejects_its_row(rafdb_root: Path, tmp_path: Path) -> None:
    """`OSError: File name too long` from one row lost the whole ingest; now it rejects that row."""
    long_name = "train_" + "x" * 300 + ".jpg"
    with (rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt").open("a") as f:
        f.write(f"{long_name} 4\n")
    result = ingest("rafdb", rafdb_root, tmp_path / "out", size=SIZE, detector="none")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (5, 4, 1)
    (path, reason, detail), = rejects_of(result)  # the adapter lists the folder once; reading the file fails
    assert reason == "name_too_long" and long_name in detail and path.endswith(f"basic/Image/original/{long_name}")
    audit(tmp_path / "out", result)


def test_os_error_while_decoding_rejects_the_record(tmp_path: Path) -> None:
    with pytest.raises(BadRow) as err:
        load(image_record(tmp_path / ("y" * 300 + ".jpg")), SEGMENTS)
    assert err.value.reason == "name_too_long" and "y" * 300 in err.value.detail


def test_no_unencodable_text_leaves_an_adapter() -> None:
    """Whatever path an adapter took, a record or reject holding a lone surrogate is caught on its way out."""
    name = os.fsdecode(b"/data/caf\xe9.jpg")
    rec = Record(sample_id=f"x:{name}", dataset="x", split="train", source_path=name, extra={"class": [name]})
    assert encodable(rec) == Reject("x", "/data/caf\\xe9.jpg", "adapter", "bad_filename",
                                    "/data/caf\\xe9.jpg: a name in this path is not valid UTF-8")
    rej = Reject("x", name, "decode", "missing_file", f"{name} does not exist")
    assert encodable(rej) == Reject("x", "/data/caf\\xe9.jpg", "decode", "missing_file",
                                    "/data/caf\\xe9.jpg does not exist")
    fine = Record(sample_id="x:café", dataset="x", split="train", source_path="/data/café.jpg")
    assert encodable(fine) is fine


def test_non_utf8_file_name_is_a_bad_filename_reject(tmp_path: Path) -> None:
    """A name whose bytes are no UTF-8 (Latin-1 `café`) reaches Python as a lone surrogate: it ended
    as a UnicodeEncodeError when the catalog was written, the file not named."""
    root = tmp_path / "faces"
    write_image(root / "happy" / "plain.jpg")
    bad = Path(os.fsdecode(bytes(root / "happy") + b"/caf\xe9.jpg"))
    write_image(bad)
    result = ingest("imagefolder", root, tmp_path / "out", size=SIZE, detector="none")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (2, 1, 1)
    (path, reason, detail), = rejects_of(result)
    assert reason == "bad_filename"
    assert path.endswith("happy/caf\\xe9.jpg") and "caf\\xe9.jpg" in detail
    assert sample_ids(result) == ["imagefolder:happy/plain.jpg"]
    audit(tmp_path / "out", result)


# ------------------------------------------------------------------------------------- budget


def test_file_over_the_size_limit_is_refused_on_its_stat(tmp_path: Path) -> None:
    """A 2 GiB non-image named .jpg was read whole before PIL looked at it."""
    huge = sparse_file(tmp_path / "huge.jpg", 2 * 2**30)
    with pytest.raises(BadRow) as err:
        load(image_record(huge), SEGMENTS)
    assert err.value.reason == "too_large" and str(huge) in err.value.detail and str(2 * 2**30) in err.value.detail


def test_huge_png_is_too_large_before_it_is_decoded(tmp_path: Path) -> None:
    """8192 x 8192 pixels in a 70 KB PNG: 200 MB once decoded (eight 12000 x 12000 took 4.4 GB)."""
    png = big_png(tmp_path / "bomb.png", 8192, 8192, "L")
    assert png.stat().st_size < 100_000
    with pytest.raises(BadRow) as err:
        load(image_record(png), SEGMENTS)
    assert err.value.reason == "too_large" and "8192 x 8192" in err.value.detail


def test_large_jpeg_decodes_at_reduced_size_with_its_given_face_scaled(tmp_path: Path) -> None:
    """A 24 MP photo decodes at 1/2 scale or less (libjpeg's DCT scaling) to fit `MAX_PIXELS`; the
    catalog keeps its full size, and a face box the release gives follows the pixels."""
    photo = tmp_path / "photo.jpg"
    Image.fromarray(face()).resize((6000, 4000)).save(photo, quality=80)
    rec = image_record(photo, face_box=(600.0, 400.0, 3000.0, 2000.0), landmarks=((1000.0, 1000.0),) * 5)
    got = load(rec, SEGMENTS)
    _, height, width, _ = got.frames.shape
    assert width * height <= decode.MAX_PIXELS and abs(width / height - 1.5) < 0.01
    assert (got.source.width, got.source.height) == (6000, 4000)
    assert got.extra == {"decoded_size": [width, height]}
    sx = width / 6000
    assert rec.face_box == pytest.approx((600 * sx, 400 * sx, 3000 * sx, 2000 * sx), rel=1e-3)
    assert rec.landmarks[0] == pytest.approx((1000 * sx, 1000 * sx), rel=1e-3)


def test_downscaled_photo_keeps_its_geometry_in_source_pixels(tmp_path: Path) -> None:
    """The catalog's face_box, landmarks and align_matrix are in source pixels even when the pixel
    budget decoded the photo smaller: the matrix takes the source landmarks onto the aligned crop's
    template, as for a photo decoded whole."""
    from fer_data.faces.align import template

    rows = {}
    for side in (1000, 6000):  # within the budget, and a 36 MP photo decoded at reduced size
        root = tmp_path / f"raw{side}"
        (root / "happy").mkdir(parents=True)
        Image.fromarray(face()).resize((side, side), Image.BICUBIC).save(root / "happy" / "a.jpg", quality=95)
        result = ingest("imagefolder", root, tmp_path / f"out{side}", size=SIZE)
        rows[side] = catalog.query(result.catalog, "SELECT width, face_box, landmarks, align_matrix, extra "
                                                   "FROM samples").iloc[0]
    small, big = rows[1000], rows[6000]
    assert big.width == 6000 and "decoded_size" in big.extra
    assert np.allclose(np.asarray(big.face_box) / 6, small.face_box, atol=4)
    assert np.allclose(np.asarray(big.landmarks) / 6, small.landmarks, atol=4)
    matrix = np.asarray(big.align_matrix).reshape(2, 3)
    points = np.asarray(big.landmarks).reshape(5, 2)
    on_crop = points @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(on_crop, template(SIZE), atol=6)


@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_large_video_frames_decode_downscaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    """A clip's frames share `MAX_CLIP_PIXELS`: 8 frames of 2048 x 1536 come at most 2**20 pixels each."""
    if reader == "pyav":
        monkeypatch.setitem(sys.modules, "decord", None)  # its import fails: the PyAV fallback reads
    video = tmp_path / "big.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 2048, 1536
        stream.pix_fmt = "yuv420p"
        frame = np.asarray(Image.fromarray(face()).resize((2048, 1536)))
        for _ in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    got = load(image_record(video, kind="clip"), SEGMENTS)
    n, height, width, _ = got.frames.shape
    assert n == SEGMENTS and width * height <= decode.MAX_CLIP_PIXELS // SEGMENTS and abs(width / height - 4 / 3) < 0.01
    assert (got.source.width, got.source.height) == (2048, 1536)
    assert got.extra["decoded_size"] == [width, height]
    assert Clip(video).size == (2048, 1536)


@pytest.mark.slow
def test_oversized_inputs_ingest_within_1_5_gb(tmp_path: Path) -> None:
    """The issue's inputs through `fer ingest --runner none`: eight 12000 x 12000 PNGs, a 2 GiB
    non-image .jpg and a 12000 x 9000 JPEG (imagefolder), then three 16-frame 4096 x 4096 clips
    (DFEW), with the default detector. Each run's peak resident memory stays under 1.5 GB (it was
    3.3 GB for the PNGs, 3.8 GB for the clips, 2 GB more for the .jpg)."""
    root = tmp_path / "images"
    png = big_png(tmp_path / "big.png", 12000, 12000).read_bytes()
    (root / "happy").mkdir(parents=True)
    for i in range(8):
        (root / "happy" / f"big{i}.png").write_bytes(png)
    sparse_file(root / "happy" / "huge.jpg", 2 * 2**30)
    (root / "sad").mkdir()
    Image.fromarray(face()).resize((12000, 9000)).save(root / "sad" / "photo.jpg", quality=70)
    rc, rss, output = max_rss_mb(fer_ingest("imagefolder", root, tmp_path / "out1"))
    assert rc == 0, output[-2000:]
    reasons = catalog.query(tmp_path / "out1" / "catalog.duckdb", "SELECT reason, count(*) FROM rejects GROUP BY 1")
    assert dict(reasons.values.tolist()) == {"too_large": 9}
    assert rss < 1536, f"peak RSS {rss:.0f} MiB"
    print(f"imagefolder: peak RSS {rss:.0f} MiB")

    clips = write_dfew(tmp_path / "dfew", {1: 1, 2: 1, 3: 1})
    big = np.asarray(Image.fromarray(face()).resize((4096, 4096)))
    (clips / "Clip" / "original").mkdir(parents=True)
    for n in (1, 2, 3):
        with av.open(str(clips / "Clip" / "original" / f"0000{n}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width = stream.height = 4096
            stream.pix_fmt = "yuv420p"
            for _ in range(16):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")))
            container.mux(stream.encode())
    rc, rss, output = max_rss_mb(fer_ingest("dfew", clips, tmp_path / "out2"))
    assert rc == 0, output[-2000:]
    assert catalog.query(tmp_path / "out2" / "catalog.duckdb", "SELECT n_samples FROM ingests").n_samples[0] == 3
    assert rss < 1536, f"peak RSS {rss:.0f} MiB"
    print(f"dfew: peak RSS {rss:.0f} MiB")


# ------------------------------------------------------------------------------------- silent corruption


def rotated_face_jpeg(path: Path) -> tuple[Path, np.ndarray]:
    """(the conftest face stored a quarter turn clockwise with EXIF Orientation 8 (turn 90 degrees
    counter-clockwise to display), as a phone held sideways writes it; the upright pixels)."""
    upright = write_image(path.with_suffix(".png"))
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.open(upright).transpose(Image.Transpose.ROTATE_270).save(path, quality=95, exif=exif)
    return path, np.asarray(Image.open(upright).convert("RGB"), float)


def test_exif_rotated_photo_is_decoded_upright(tmp_path: Path) -> None:
    path, upright = rotated_face_jpeg(tmp_path / "phone.jpg")
    got = load(image_record(path), SEGMENTS)
    assert np.abs(got.frames[0] - upright).mean() < 4
    assert np.abs(np.rot90(got.frames[0], -1) - upright).mean() > 30  # the stored pixels are not


def test_exif_rotated_face_is_found_by_the_default_detector(tmp_path: Path) -> None:
    """Sideways, this face scored under CenterFace's threshold: `no_face`."""
    root = rafdb_with(tmp_path / "raf", {"train_00001.jpg": rotated_face_jpeg(tmp_path / "phone.jpg")[0]},
                      {"train_00001.jpg": 4})
    result = ingest("rafdb", root, tmp_path / "out", size=SIZE)
    assert (result.n_samples, result.n_rejects) == (1, 0), rejects_of(result)


def test_exif_rotated_face_is_stored_upright_without_a_detector(tmp_path: Path) -> None:
    path, upright = rotated_face_jpeg(tmp_path / "phone.jpg")
    root = rafdb_with(tmp_path / "raf", {"train_00001.jpg": path}, {"train_00001.jpg": 4})
    ingest("rafdb", root, tmp_path / "out", size=SIZE, detector="none")
    crop = shard_crops(tmp_path / "out")["rafdb:train_00001"].astype(float)
    upright = np.asarray(Image.fromarray(upright.astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR), float)
    assert np.abs(crop - upright).mean() < 6
    assert np.abs(np.rot90(crop, -1) - upright).mean() > 30


def test_16_bit_grey_png_scales_to_8_bits(tmp_path: Path) -> None:
    """Pillow's convert clipped 16-bit values to 255: a 16-bit grey PNG became all white."""
    grey = face().mean(axis=2)
    sixteen = np.round(grey * 257).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(sixteen).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = load(image_record(path), SEGMENTS).frames[0]
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert np.abs(pixels[..., 0] - grey).max() <= 1


def test_float_tiff_scales_to_8_bits(tmp_path: Path) -> None:
    """Floats in [0, 1] became 0 or 1 of 255: an all-black sample."""
    grey = face().mean(axis=2)
    path = tmp_path / "float.tif"
    Image.fromarray((grey / 255).astype(np.float32)).save(path)
    assert Image.open(path).mode == "F"
    pixels = load(image_record(path), SEGMENTS).frames[0]
    assert np.abs(pixels[..., 1] - grey).max() <= 1


def test_every_file_under_an_imagefolder_root_is_a_sample_or_a_reject(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    write_image(root / "happy" / "a.jpg")
    write_image(root / "sad" / "b.png", seed=1)
    Image.fromarray(face()).save(root / "happy" / "anim.gif")
    (root / "sad" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (root / "sad" / ".DS_Store").write_bytes(bytes(16))
    (root / "notes.txt").write_text("beside the class folders")
    items = list(get_adapter("imagefolder").records(root))
    rejects = sorted((Path(r.source_path).relative_to(root).as_posix(), r.reason) for r in items if isinstance(r, Reject))
    assert rejects == [("happy/anim.gif", "unsupported_format"), ("notes.txt", "no_class_folder"),
                       ("sad/.DS_Store", "unsupported_format"), ("sad/IMG_0001.HEIC", "unsupported_format")]
    result = ingest("imagefolder", root, tmp_path / "out", size=SIZE, detector="none")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (6, 2, 4)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-32", "utf-8-sig"])
def test_label_file_in_utf16_or_utf32_with_a_bom(rafdb_root: Path, encoding: str) -> None:
    """A UTF-16 label file (what spreadsheets save as Unicode text) rejected every row and counted one too many."""
    label_file = rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    text = label_file.read_text()
    label_file.write_bytes(b"\xfe\xff" + text.encode("utf-16-be") if encoding == "utf-16-be-bom"
                           else text.encode(encoding))
    items = list(get_adapter("rafdb").records(rafdb_root))
    assert [type(i) for i in items] == [Record] * 4, items
    assert {i.sample_id: i.emotion for i in items} == {"rafdb:train_00001": 1, "rafdb:train_00002": 3,
                                                      "rafdb:test_0001": 0, "rafdb:test_0002": 6}


def test_rafdb_conflicting_labels_reject_the_image(rafdb_root: Path, tmp_path: Path) -> None:
    """Two labels for one image: both rows reject (as DFEW does), where the first label was kept."""
    with (rafdb_root / "basic" / "EmoLabel" / "list_patition_label.txt").open("a") as f:
        f.write("train_00001.jpg 1\ntest_0001.jpg 7\ntrain_00002.jpg 9\n")  # a conflict, a repeat, a bad label
    result = ingest("rafdb", rafdb_root, tmp_path / "out", size=SIZE, detector="none")
    assert (result.rows_read, result.n_samples, result.n_rejects) == (7, 3, 4)
    got = {path.rsplit("#", 1)[-1] if "#" in path else Path(path).name: (reason, detail)
           for path, reason, detail in rejects_of(result)}
    assert {k: r for k, (r, _) in got.items()} == {"row=0": "conflicting_labels", "row=4": "conflicting_labels",
                                                   "test_0001.jpg": "duplicate_sample_id",
                                                   "row=6": "label_out_of_range"}
    assert "4 in rows [0]" in got["row=0"][1] and "1 in rows [4]" in got["row=0"][1]
    assert "rafdb:train_00001" not in sample_ids(result)
