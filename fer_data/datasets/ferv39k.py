"""FERV39K: multi-scene video clips, 7 emotions, official train/test lists.

Layout: `4_setups/All_scenes/train_All.csv` and `test_All.csv`, one clip a line: its path, then
its class (`Action/Sad/0010 Sad`); face-crop frames under `2_ClipsforFaceCrop/<path>/`.

Choices the release leaves open, and why:
- Separator and header are sniffed per line: comma, tab or semicolon when present, else the
  last whitespace run (so a path with a space survives). A first line whose class is no known
  class and whose path has no `/` is a header and skipped.
- The class column is the label; the class folder inside the path is kept in `extra` only
  (`path_class`) and a mismatch is flagged (`class_mismatch`), not guessed at.
- `split` is the list a clip comes from (train_All -> train, test_All -> test); FERV39K has no
  official validation set. `extra.scene` is the path's first part (`Action`), the scene the
  paper reports per-scene results on.
- The face-crop release is aligned crops, so `aligned=True` (plain resizing, no detector, no face
  tracking: `face_coverage` and `n_tracks` are NULL).
- A listed clip without a frame folder is a `missing_file` reject from the adapter.
- Both list files are required (LayoutError naming the missing one).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, find_file, guard, inside, read_lines, register
from fer_data.labels import EMOTION_ID
from fer_data.records import Record

FERV39K_CLASSES = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                   "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}
FRAMES = "2_ClipsforFaceCrop"
LISTS = {"train": "4_setups/All_scenes/train_All.csv", "test": "4_setups/All_scenes/test_All.csv"}


def split_line(line: str) -> list[str]:
    """Fields of one list line: delimited by , tab or ; when present, else path + last whitespace field."""
    for delimiter in (",", "\t", ";"):
        if delimiter in line:
            return [f.strip() for f in next(csv.reader(io.StringIO(line), delimiter=delimiter))]
    return line.strip().rsplit(None, 1)


def class_of(text: str) -> str:
    """Canonical emotion name of a FERV39K class (case-insensitive); BadRow for anything else."""
    name = FERV39K_CLASSES.get(text.strip().lower())
    if name is None:
        raise BadRow("label_out_of_range", f"class {text!r} not in {sorted(c.capitalize() for c in FERV39K_CLASSES)}")
    return name


def list_rows(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(data-row index, line, fields) of a list file, header and blank lines skipped."""
    index = -1
    first = True
    for line in read_lines(path):
        if not line.strip():
            continue
        fields = split_line(line)
        if first:
            first = False
            if fields and "/" not in fields[0] and fields[-1].strip().lower() not in FERV39K_CLASSES:
                continue  # header
        index += 1
        yield index, line, fields


def _record(root: Path, split: str, fields: list[str], line: str) -> Record:
    if len(fields) < 2 or not fields[0]:
        raise BadRow("unparsable_row", f"expected 'path class', got {line[:80]!r}")
    rel, label = fields[0].strip().strip("/"), fields[1]
    emotion = class_of(label)
    folder = inside(root / FRAMES, rel)
    if not folder.is_dir():
        raise BadRow("missing_file", f"{folder}/ does not exist")
    parts = rel.split("/")
    extra: dict = {"scene": parts[0] if len(parts) > 1 else None, "class_name": label}
    if len(parts) >= 3:
        extra["path_class"] = parts[-2]
        if parts[-2].lower() != label.lower():
            extra["class_mismatch"] = True
    return Record(
        sample_id=f"ferv39k:{rel}",
        dataset="ferv39k",
        split=split,
        source_path=str(folder),
        kind="clip",
        emotion=EMOTION_ID[emotion],
        aligned=True,
        extra=extra,
    )


@register("ferv39k", ("emotion",), "FERV39K: multi-scene clips, 7 emotions, face-crop frames", kind="clip")
def read(root: Path) -> Iterator[Item]:
    files = {split: find_file(root, rel) for split, rel in LISTS.items()}
    for split, path in files.items():
        for index, line, fields in list_rows(path):
            yield guard("ferv39k", f"{path}#row={index}",
                        lambda split=split, fields=fields, line=line: _record(root, split, fields, line))

