"""The adapter interface, its registry and the layout helpers adapters share.

An adapter is a function `root -> iterator of Record | Reject` registered under a dataset
name. It knows its raw layout and nothing else: no decoding, no faces, no shards.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fer_data.records import Record, Reject

Item = Record | Reject
Reader = Callable[[Path], Iterator[Item]]


class LayoutError(FileNotFoundError):
    """The raw root does not have the layout the adapter reads (one clear message, names the file)."""


class BadRow(ValueError):
    """One row or file that cannot become a sample; becomes a `Reject` with this reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
        return self.read(self.check_root(root))


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


def inside(root: Path, rel: str) -> Path:
    """`root/rel`, refusing label-file paths that escape the dataset root (absolute paths, `..`).

    The check is on the path as written, not on symlink targets: users link big image folders
    into a release (e.g. Manually_Annotated_Images on another disk), and those links are theirs.
    """
    path = Path(os.path.normpath(root / rel.strip()))
    if not path.is_relative_to(root):
        raise BadRow("path_escapes_root", f"{rel!r} resolves outside {root}")
    return path


def rows(path: Path, columns: tuple[str, ...], delimiter: str | None = None,
         optional: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]] | Reject]:
    """(data-row index, row as a dict keyed by `columns`) of a delimited label file, header or not.

    The index counts every data row, short ones included, so row-aligned files (FER2013 and
    FERPlus) stay aligned. `optional` columns follow `columns` and read as "" when absent.
    The header is detected by its first field naming the first column (case-insensitive);
    without one the fields are taken in `columns` order. The delimiter is sniffed among
    comma, tab, semicolon and whitespace unless given. Rows with too few fields come back as
    Rejects (dataset filled in by the caller); blank lines are skipped.
    """
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        yield from _rows(f, path, columns, delimiter, optional)


def _rows(lines: Iterable[str], path: Path, columns: tuple[str, ...], delimiter: str | None,
          optional: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]] | Reject]:
    """`rows` over an open file, line by line: a 1M-row label file is never held whole in memory."""
    lines = (ln.rstrip("\r\n") for ln in lines)
    if delimiter is None:
        head: list[str] = []  # up to the first non-blank line (the header or first row), which decides
        for line in lines:
            head.append(line)
            if line.strip():
                break
        sample = head[-1] if head else ""
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
    header: list[str] | None = None
    first = True
    index = -1
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in split(line)]
        if first:
            first = False
            if fields[0].lower() == columns[0].lower():
                header = [f.lower() for f in fields]
                missing = [c for c in columns if c.lower() not in header]
                if missing:
                    raise LayoutError(f"{path}: header lacks the columns {missing}")
                continue
        index += 1
        names = header or [c.lower() for c in columns + optional]
        row = dict(zip(names, fields))
        if any(c.lower() not in row for c in columns):
            yield Reject("", f"{path}#row={index}", "adapter", "unparsable_row",
                         f"line {lineno}: expected the fields {columns}, got {len(fields)}: {line[:80]!r}")
            continue
        yield index, {c: row.get(c.lower(), "") for c in columns + optional}


def parse_rows(dataset: str, path: Path, columns: tuple[str, ...], parse: Callable[[int, dict[str, str]], Record],
               delimiter: str | None = None, optional: tuple[str, ...] = ()) -> Iterator[Item]:
    """Run `parse(index, row)` over each data row, turning BadRow and short rows into Rejects."""
    for item in rows(path, columns, delimiter, optional):
        if isinstance(item, Reject):
            yield Reject(dataset, item.source_path, item.stage, item.reason, item.detail)
            continue
        index, row = item
        yield guard(dataset, f"{path}#row={index}", lambda: parse(index, row))


def guard(dataset: str, source: str, make: Callable[[], Record]) -> Item:
    """`make()`, or a Reject that says why it could not be made."""
    try:
        return make()
    except BadRow as err:
        return Reject(dataset, source, "adapter", err.reason, err.detail)
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
