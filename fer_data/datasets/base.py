"""The adapter interface, its registry and the layout helpers adapters share.

An adapter is a function `root -> iterator of Record | Reject` registered under a dataset
name. It knows its raw layout and nothing else: no decoding, no faces, no shards.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from fer_data.records import BadRow, Record, Reject, TextSpan, printable

Item = Record | Reject
Reader = Callable[[Path], Iterator[Item]]


class LayoutError(FileNotFoundError):
    """The raw root does not have the layout the adapter reads (one clear message, names the file)."""


@dataclass(frozen=True)
class Adapter:
    name: str
    tasks: tuple[str, ...]
    kind: str  # image | clip
    description: str
    read: Reader

    def check_root(self, root: str | Path) -> Path:
        """The raw root, resolved; LayoutError if it is no directory."""
        root = Path(root).resolve()
        if not root.is_dir():
            raise LayoutError(f"{self.name}: raw root {root} is not a directory")
        return root

    def records(self, root: str | Path) -> Iterator[Item]:
        return (encodable(item) for item in self.read(self.check_root(root)))


def encodable(item: Item) -> Item:
    """`item` if every text in it is valid Unicode, else a Reject (`bad_filename` for a record) naming the
    file with its undecodable bytes written as \\xNN. Bytes of a file name that are no UTF-8 reach
    Python as lone surrogates, which no catalog, Parquet or JSON writer encodes: they stop here."""
    if isinstance(item, Reject):
        text = item.source_path + item.detail
    else:
        text = item.sample_id + item.split + item.source_path + (item.subject or "") + _strings(item.extra)
    try:
        text.encode()  # one encode of the concatenation: 2 µs a record
    except UnicodeEncodeError:
        if isinstance(item, Reject):
            return replace(item, source_path=printable(item.source_path), detail=printable(item.detail))
        return bad_filename(item.dataset, item.source_path)
    return item


def _strings(value: Any) -> str:
    """Every string in a JSON-like value, concatenated."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "".join(_strings(k) + _strings(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return "".join(map(_strings, value))
    return ""


def bad_filename(dataset: str, source: str) -> Reject:
    return Reject(dataset, printable(source), "adapter", "bad_filename",
                  f"{printable(source)}: a name in this path is not valid UTF-8")


ADAPTERS: dict[str, Adapter] = {}


def register(name: str, tasks: tuple[str, ...], description: str, kind: str = "image") -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        ADAPTERS[name] = Adapter(name, tasks, kind, description, fn)
        return fn

    return wrap


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None


# ---------------------------------------------------------------- layout helpers


def find_file(root: Path, *candidates: str) -> Path:
    """First of the candidate relative paths that exists (official name first, known variants after)."""
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise LayoutError(f"expected {' or '.join(str(root / c) for c in candidates)} (label file not found)")


class Files:
    """The files of one folder, listed once (links followed): an adapter asking per row whether a file
    exists paid a stat a question (RAF-DB asks three a row). A path elsewhere is asked of the disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = os.fspath(folder)
        try:
            with os.scandir(folder) as entries:
                self.names = frozenset(e.name for e in entries if e.is_file())
        except OSError:  # no such folder (a release without it), or one it may not list
            self.names = frozenset()

    def __contains__(self, path: str | Path) -> bool:
        head, name = os.path.split(os.fspath(path))
        return name in self.names if head == self.folder else os.path.isfile(path)


def inside(root: Path, rel: str) -> Path:
    """`root/rel`, refusing label-file paths that escape the dataset root (absolute paths, `..`).

    The check is on the path as written, not on symlink targets: users link big image folders
    into a release (e.g. Manually_Annotated_Images on another disk), and those links are theirs.
    """
    return Path(inside_text(root, rel))


def inside_text(root: Path, rel: str) -> str:
    """`inside` as text, for a record's `source_path`: no Path made and turned back into a string
    (a tenth of reading a row of a folder of aligned JPEGs)."""
    path = os.path.normpath(os.path.join(root, rel.strip()))
    top = os.fspath(root)
    if path != top and not path.startswith(top.rstrip(os.sep) + os.sep):  # `is_relative_to`, on strings: a row's time
        raise BadRow("path_escapes_root", f"{rel!r} resolves outside {root}")
    return path


def rows(path: Path, columns: tuple[str, ...], delimiter: str | None = None,
         optional: tuple[str, ...] = (), spans: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, Any]] | Reject]:
    """(data-row index, row as a dict keyed by `columns`) of a delimited label file, header or not.

    The index counts every data row, short ones included, so row-aligned files (FER2013 and
    FERPlus) stay aligned. `optional` columns follow `columns` and read as "" when absent.
    The header is detected by its first field naming the first column (case-insensitive);
    without one the fields are taken in `columns` order. The delimiter is sniffed among
    comma, tab, semicolon and whitespace unless given. Rows with too few fields come back as
    Rejects (dataset filled in by the caller); blank lines are skipped.

    `spans` columns come back as where their text sits in the file (`TextSpan`, stripped as the text
    would be) on a plain line: a UTF-8 file (BOM or not), a line of ASCII without quotes, a delimiter
    given and not whitespace; as their text elsewhere. The text is what `open_text` reads either way.
    """
    if spans and delimiter not in (None, " ") and _encoding(path) == "utf-8-sig":
        with path.open("rb") as f:
            yield from _rows(_plain_lines(f), path, columns, delimiter, optional, spans)
    else:
        with open_text(path) as f:
            yield from _rows(((line, None) for line in f), path, columns, delimiter, optional, ())


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # after a carriage return that ends a line by itself (old Mac files)


def _plain_lines(f: BinaryIO) -> Iterator[tuple[str, int | None]]:
    """The lines of a UTF-8 file opened in binary, as `open_text` gives them (newlines kept: "\n",
    "\r\n" or a lone "\r"; a UTF-8 BOM dropped; bad bytes as U+FFFD), each with its byte offset in the
    file where the line is ASCII (a character a byte), else None."""
    pos = 3 if f.read(3) == codecs.BOM_UTF8 else 0
    f.seek(pos)
    for raw in f:
        end = len(raw) - 2 if raw.endswith(b"\n") else len(raw) - 1
        for piece in (raw,) if raw.find(b"\r", 0, max(end, 0)) == -1 else _LONE_CR.split(raw):
            if piece:
                yield piece.decode("utf-8", "replace"), pos if piece.isascii() else None
                pos += len(piece)


def open_text(path: Path) -> TextIO:
    """A label file opened as text in the encoding its byte-order mark names: UTF-32 or UTF-16 (what
    spreadsheets save as "Unicode text"), else UTF-8 with or without a BOM. Bytes that do not decode
    read as U+FFFD, so a bad byte spoils one field, not the file. Newlines are left as written."""
    return path.open(encoding=_encoding(path), errors="replace", newline="")


def _encoding(path: Path) -> str:
    """The encoding a label file's byte-order mark names: utf-32, utf-16, else utf-8-sig (BOM or not)."""
    with path.open("rb") as f:
        head = f.read(4)
    if head in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):
        return "utf-32"
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    return "utf-8-sig"


def read_lines(path: Path) -> list[str]:
    """The lines of a small label file, decoded as `open_text` does."""
    with open_text(path) as f:
        return f.read().splitlines()


def _rows(lines: Iterable[tuple[str, int | None]], path: Path, columns: tuple[str, ...], delimiter: str | None,
          optional: tuple[str, ...], spans: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]] | Reject]:
    """`rows` over an open file's (line, byte offset of a plain line or None), line by line: a 1M-row
    label file is never held whole in memory."""
    lines = ((ln.rstrip("\r\n"), at) for ln, at in lines)
    if delimiter is None:
        head: list[tuple[str, int | None]] = []  # up to the first non-blank line (the header or first row), which decides
        for line, at in lines:
            head.append((line, at))
            if line.strip():
                break
        sample = head[-1][0] if head else ""
        delimiter = next((d for d in (",", "\t", ";") if d in sample), " ")
        lines = itertools.chain(head, lines)
    split: Callable[[str], list[str]]
    if delimiter == " ":
        split = str.split
    else:
        def split(line: str) -> list[str]:
            """csv's reading of one line; a line without quotes is plain `str.split` (a FER2013 row of
            9 KB: 5 µs against csv's 60)."""
            if '"' not in line:
                return line.split(delimiter)
            return next(csv.reader(io.StringIO(line), delimiter=delimiter, skipinitialspace=True))
    names = [c.lower() for c in columns + optional]  # the fields' names without a header; lowered once, not a row
    required = names[:len(columns)]
    wanted = list(zip(columns + optional, names))
    spanned = [name for c, name in wanted if c in spans]
    where: list[tuple[str, int]] = []  # (name, field index) of the span columns in this file's lines
    file = os.fspath(path)
    header: list[str] | None = None
    first = True
    index = -1
    for lineno, (line, at) in enumerate(lines, start=1):
        if not line.strip():
            continue
        raw = split(line)
        fields = [f.strip() for f in raw]
        if first:
            first = False
            if fields[0].lower() == required[0]:
                header = [f.lower() for f in fields]
                missing = [c for c, name in zip(columns, required) if name not in header]
                if missing:
                    raise LayoutError(f"{path}: header lacks the columns {missing}")
            # a repeated name is the last field of that name, as in the row's dict
            where = [(name, max(i for i, n in enumerate(header or names) if n == name)) for name in spanned
                     if name in (header or names)]
            if header:
                continue
        index += 1
        row: dict[str, Any] = dict(zip(header or names, fields))
        if any(name not in row for name in required):
            yield Reject("", f"{path}#row={index}", "adapter", "unparsable_row",
                         f"line {lineno}: expected the fields {columns}, got {len(fields)}: {line[:80]!r}")
            continue
        if at is not None and where and '"' not in line:  # a plain line: a field's text is its bytes
            for name, i in where:
                if i < len(raw):
                    start = at + sum(len(f) for f in raw[:i]) + i * len(delimiter) + len(raw[i]) - len(raw[i].lstrip())
                    row[name] = TextSpan(file, start, start + len(fields[i]))
        yield index, {c: row.get(name, "") for c, name in wanted}


def parse_rows(dataset: str, path: Path, columns: tuple[str, ...], parse: Callable[[int, dict[str, Any]], Record],
               delimiter: str | None = None, optional: tuple[str, ...] = (), spans: tuple[str, ...] = ()) -> Iterator[Item]:
    """Run `parse(index, row)` over each data row, turning BadRow and short rows into Rejects."""
    for item in rows(path, columns, delimiter, optional, spans):
        if isinstance(item, Reject):
            yield Reject(dataset, item.source_path, item.stage, item.reason, item.detail)
            continue
        index, row = item
        yield guard(dataset, f"{path}#row={index}", lambda: parse(index, row))


def guard(dataset: str, source: str, make: Callable[[], Record]) -> Item:
    """`make()`, or a Reject that says why it could not be made. An OSError (a 300-character name in a
    label file, a folder it may not read) rejects this row only; a LayoutError still stops the read.
    A name from disk that is no UTF-8 is `bad_filename` (see `encodable`)."""
    try:
        return make()
    except BadRow as err:
        return Reject(dataset, source, "adapter", err.reason, err.detail)
    except UnicodeEncodeError:  # a name read from disk that is no UTF-8, met while making the record
        return bad_filename(dataset, source)
    except LayoutError:
        raise
    except OSError as err:
        bad = BadRow.from_os_error(err.filename or source, err)
        return Reject(dataset, source, "adapter", bad.reason, bad.detail)
    except (ValueError, IndexError, KeyError) as err:
        return Reject(dataset, source, "adapter", "unparsable_row", f"{type(err).__name__}: {err}")


def to_int(text: str, valid: Iterable[int], what: str) -> int:
    """Parse an integer label and check it is one of `valid` (else label_out_of_range)."""
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise BadRow("unparsable_row", f"{what} {text!r} is not a number") from None
    if value not in set(valid):
        raise BadRow("label_out_of_range", f"{what} {value} not in {sorted(set(valid))}")
    return value


def to_float(text: str) -> float | None:
    """Float or None for an empty field."""
    text = text.strip()
    return float(text) if text else None
