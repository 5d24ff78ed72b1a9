"""What adapters yield: one `Record` per sample, or one `Reject` per row that cannot become one
(`BadRow`, raised wherever a row or file turns out bad, becomes that Reject).

Records carry harmonized labels only (ids of fer_data.labels, None = missing); everything a
release has without a canonical slot goes to `extra`, which the catalog keeps as JSON.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class TextSpan(NamedTuple):
    """Bytes `start:end` of a label file: an image it carries as text (FER2013's pixel values), kept as
    where it is rather than the text itself, so the 9 KB of a row is not copied into the record store,
    through the pipe and out again; the worker reads it (`read`). The reader makes one only of a plain
    line (UTF-8 file, ASCII line, no quotes), where a character is a byte."""

    path: str
    start: int
    end: int

    def read(self) -> bytes:
        """The span's bytes; BadRow if the file is gone, unreadable or shorter than when it was listed."""
        got = read_spans([self])[0]
        if isinstance(got, BadRow):
            raise got
        return got


def read_spans(spans: list[TextSpan]) -> list[bytes | BadRow]:
    """Each span's bytes, each file opened once for all its spans (an open and a close took ten times a
    9 KB `pread` here: 33 against 3 µs), or the BadRow saying why it cannot be read whole: the file is
    gone or unreadable, or shorter than when it was listed."""
    out: dict[int, bytes | BadRow] = {}
    for path in dict.fromkeys(span.path for span in spans):
        mine = [i for i, span in enumerate(spans) if span.path == path]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            for i in mine:
                out[i] = BadRow.from_os_error(path, err)
            continue
        try:
            for i in mine:
                span = spans[i]
                try:
                    data = os.pread(fd, span.end - span.start, span.start)
                except OSError as err:
                    out[i] = BadRow.from_os_error(path, err)
                    continue
                out[i] = data if len(data) == span.end - span.start else BadRow(
                    "corrupt_image", f"{printable(path)} ends before bytes {span.start}-{span.end} "
                                     f"(changed since it was listed)")
        finally:
            os.close(fd)
    return [out[i] for i in range(len(spans))]


@dataclass
class Record:
    sample_id: str
    dataset: str
    split: str
    source_path: str  # absolute path (image, video file or frame folder); "FILE#row=N" inside a label file
    kind: str = "image"  # image | clip
    subject: str | None = None
    emotion: int | None = None
    valence: float | None = None
    arousal: float | None = None
    age: float | None = None
    age_bin: int | None = None
    gender: int | None = None
    # AU number -> (present, intensity); present None = annotated as unknown.
    aus: dict[int, tuple[bool | None, float | None]] = field(default_factory=dict)
    # Face geometry given by the release (used by the `given` detector).
    face_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    landmarks: tuple[tuple[float, float], ...] | None = None  # 5 points, ArcFace order
    aligned: bool = False  # the source image is already an aligned face crop
    # An image carried inside a label file: decoded, or its text as the file holds it (FER2013's grey
    # values, `decode.text_pixels`; its UTF-8 bytes once through the record store), or where the file
    # holds that text (`TextSpan`), which the workers decode: a bad one is then a decode reject.
    pixels: np.ndarray | str | bytes | TextSpan | None = None
    frame_index: int | None = None  # image sample that is one frame of the video at source_path (DISFA)
    frame_range: tuple[int, int] | None = None  # clip: inclusive frame range of the video/folder (CASME II)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    dataset: str
    source_path: str
    stage: str  # adapter | decode | detect | shard
    reason: str  # short code: missing_file, corrupt_image, label_out_of_range, ...
    detail: str = ""


# errno -> reject reason of an OSError on one input; any other errno is `unreadable_file`.
_OS_REASONS = {errno.ENAMETOOLONG: "name_too_long", errno.EACCES: "permission_denied",
               errno.EPERM: "permission_denied", errno.ELOOP: "symlink_loop", errno.EISDIR: "is_a_directory",
               errno.EIO: "io_error"}


class BadRow(ValueError):
    """One row or file that cannot become a sample; becomes a `Reject` with this reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @classmethod
    def from_os_error(cls, path: str | Path, err: OSError) -> BadRow:
        """An OSError on one input (a 300-character name, no permission, a failing disk) rejects that input only."""
        return cls(_OS_REASONS.get(err.errno or 0, "unreadable_file"), f"{printable(path)}: {err.strerror or err}")


def printable(path: str | Path) -> str:
    """A path as text every encoder takes: bytes of a file name that are no UTF-8 (which Python keeps
    as lone surrogates, unencodable) written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
