"""Image decoding that defends itself: the budgets a decoded input must fit, and images decoded
upright, in 8 bits, within them.

A file is checked before it is read (its size) and before it is decoded (the pixel count in its
header), so a small file claiming a huge image, or a huge file posing as one, costs neither memory
nor time; large JPEGs decode at a reduced size (libjpeg's DCT scaling, `Image.draft`).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_data.records import BadRow, printable

MAX_FILE_BYTES = 2**27  # an image file is read whole: 128 MiB is past any photo
MAX_PIXELS = 2**22  # one image sample, decoded (2048 x 2048): the detector sees 320 px, a crop 224
MAX_CLIP_PIXELS = 2**23  # one clip, all its frames together (16 frames of 724 x 724)
MAX_SOURCE_PIXELS = 2**25  # decoded in full (then downscaled) up to this; past it (after JPEG scaling) too_large
# Formats decoded at all: the photo formats (JPEG includes the MPO phones write). Pillow's others
# (EPS runs Ghostscript, animated GIF, ...) are no face photos, and each decoder is attack surface.
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
_HIGH_BIT_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": None, "F": None}
_EXIF_ORIENTATION = 0x0112
TEXT_SIDE = 48  # FER2013's and FERPlus's images, carried in their CSV as text


def text_pixels(text: str | bytes, side: int = TEXT_SIDE) -> np.ndarray:
    """The side x side grey image a label file carries as text (FER2013's space-separated values),
    read where the record is processed, not while the release is listed: numpy's text parser (6x
    `np.array(text.split())`), strict: a token that is not an integer is an error, not the end of
    the image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy's warning for unparsed trailing text
        try:
            arr = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            raise BadRow("corrupt_image", "pixels holds a value that is not an integer") from None
    if arr.size != side * side:
        raise BadRow("corrupt_image", f"pixels has {arr.size} values, expected {side * side}")
    if arr.min() < 0 or arr.max() > 255:
        raise BadRow("corrupt_image", "pixel values outside 0..255")
    return arr.astype(np.uint8).reshape(side, side)


def fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, to at most `max_pixels`; unchanged when within it."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def check_size(path: str | Path, size: int) -> int:
    """The file's size, once checked to be neither empty nor over `MAX_FILE_BYTES`: a 2 GiB file
    named .jpg is refused on its size (the open file's `fstat`), before a byte is read."""
    if size == 0:
        raise BadRow("empty_file", f"{printable(path)} has 0 bytes")
    if size > MAX_FILE_BYTES:
        raise BadRow("too_large", f"{printable(path)} has {size} bytes, over the {MAX_FILE_BYTES}-byte limit "
                                  f"of an image file")
    return size


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, bytes, tuple[int, int]]:
    """(RGB pixels within `max_pixels`, the file's bytes, the upright image's full (width, height))."""
    # one open and its fstat: a stat, an open and a read were a tenth of an aligned image's time
    with open(path, "rb") as f:
        check_size(path, os.fstat(f.fileno()).st_size)
        data = f.read()
    rgb, size = decode_image(data, str(path), max_pixels)
    return rgb, data, size


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 pixels of an encoded image, upright (EXIF orientation applied), high bit depths
    scaled to 8 bits, and at most `max_pixels` (downscaled, aspect kept); with the upright image's
    full (width, height). BadRow `corrupt_image` or `too_large` naming `name` otherwise."""
    name = printable(name)
    plain = plain_jpeg(data, max_pixels)
    if plain is not None:
        rgb = _opencv_jpeg(data)
        if rgb is not None and rgb.shape[1::-1] == plain:
            return rgb, plain
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            full = im.size
            if im.format in ("JPEG", "MPO") and full[0] * full[1] > max_pixels:
                im.draft(im.mode, fit(*full, max_pixels))  # libjpeg decodes at 1/2, 1/4 or 1/8: never the full image
            if im.size[0] * im.size[1] > MAX_SOURCE_PIXELS:
                raise BadRow("too_large", f"{name}: {full[0]} x {full[1]} pixels, over the {MAX_SOURCE_PIXELS}-pixel "
                                          f"limit of a decoded image")
            drafted = im.size
            ImageOps.exif_transpose(im, in_place=True)
            if im.size != drafted:  # a quarter turn swapped the sides
                full = full[::-1]
            rgb = _eight_bit_rgb(im)
            target = fit(rgb.width, rgb.height, max_pixels)
            if target != rgb.size:
                rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            return np.asarray(rgb), full  # a copy: valid once the file is closed
    except UnidentifiedImageError:  # its message names the in-memory buffer, a new address each run
        raise BadRow("corrupt_image", f"{name}: expected an image file ({', '.join(FORMATS)}), found none of "
                                      f"those formats in its {len(data)} bytes") from None
    except Image.DecompressionBombError as err:
        raise BadRow("too_large", f"{name}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadRow):
            raise
        raise BadRow("corrupt_image", f"{name}: expected a decodable image ({type(err).__name__}: {err})") from None


def plain_jpeg(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) of the common JPEG whose pixels OpenCV decodes exactly as the Pillow path
    would: one Huffman-coded 8-bit frame, grey or colour (1 or 3 components), within `max_pixels`,
    upright (no EXIF orientation but 1, and no XMP, where Pillow also looks for one), not a
    multi-picture file; None for anything else, which then takes the Pillow path (EXIF turns, CMYK,
    large files decoded at a reduced size, whatever this does not recognise). Read from the markers
    before the scan: a few µs, where opening the file with Pillow to ask took 80 (its marker parsing
    is Python that reads every table), 7 % of ingesting an aligned JPEG."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    size: tuple[int, int] | None = None
    exif_seen = False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            return size
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > len(data):
            return None
        pos += 2 + length
        if marker == 0xC4 or marker == 0xDB or marker == 0xE0:  # Huffman and quantization tables, JFIF: not read
            continue  # no slice of them made: 3.4 -> 2.5 µs a 100 px RAF-DB JPEG
        segment = data[pos - length + 2:pos]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if size is not None or marker > 0xC2 or len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3):
                return None  # a second frame, lossless, arithmetic, 12-bit, CMYK: Pillow's
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            if not 0 < width * height <= max_pixels:
                return None
            size = (width, height)
        elif marker == 0xE1 and segment.startswith(b"Exif\0\0") and not exif_seen:  # Pillow reads the first
            exif_seen = True
            if _orientation(segment[6:]) != 1:
                return None
        elif (marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/")) or \
                (marker == 0xE2 and segment.startswith(b"MPF\0")):
            return None
    return None


def _orientation(tiff: bytes) -> int | None:
    """The orientation tag of an EXIF block's first directory (1 when it has none), None if unreadable."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for i in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[:2], order) == _EXIF_ORIENTATION:  # a SHORT, in the value field's first bytes
            return int.from_bytes(entry[8:10], order) if int.from_bytes(entry[2:4], order) == 3 else None
    return 1


def _opencv_jpeg(data: bytes) -> np.ndarray | None:
    """RGB pixels of a plain JPEG, or None where OpenCV cannot decode it (a truncated file: Pillow then
    says why). OpenCV decodes what Pillow would, pixel for pixel (both libjpeg-turbo, same DCT and
    upsampling), in a third of the time: Pillow's per-image Python (tiles, the array copy) was most of
    it. Imported here: the adapters import this module and the command line imports them."""
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)


def _eight_bit_rgb(im: Image.Image) -> Image.Image:
    """RGB in 8 bits. Pillow's convert clips 16-bit and float pixels to 255 (a 16-bit grey PNG turns
    white, a float TIFF in [0, 1] black): those are scaled by their range instead. Integers by the
    16-bit range (a 32-bit integer image by 8 or 16 bits, whichever holds its values), floats from
    [0, 1]; values outside those ranges are stretched from their minimum to their maximum."""
    if im.mode not in _HIGH_BIT_MODES:
        return im if im.mode == "RGB" else im.convert("RGB")
    values = np.nan_to_num(np.array(im, dtype=np.float32), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = _HIGH_BIT_MODES[im.mode]
    if top is None:  # "I" (32-bit integers) or "F" (floats)
        top = 1.0 if im.mode == "F" else 255 if high <= 255 else 65535
    if low >= 0 and high <= top:
        low = 0.0
    else:
        top = high
    values -= low  # in place: one float32 copy of the image at most
    values *= 255.0 / max(top - low, 1e-12)
    grey = np.round(values, out=values).clip(0, 255, out=values).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
