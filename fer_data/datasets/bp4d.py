"""BP4D(-Spontaneous): AU occurrence per video frame, 41 subjects x 8 tasks.

Layout: `AUCoding/AU_OCC/F001_T1.csv`, a header row of AU numbers whose column `0` is the frame
number, then one row per coded frame with 0 (absent), 1 (present) or 9 (unknown); images
`BP4D-training/F001/T1/<frame>.jpg`, frame numbers zero-padded or not.

Choices the release leaves open, and why:
- One image record per coded frame that has an image (`bp4d:F001/T1/0098`). A coded frame
  without one is a `missing_file` reject, one per frame, so rows read = samples + rejects.
  Images are found by the numeric value of their stem, whatever the padding (0098.jpg, 098.jpg,
  98.jpg); the folder is listed once per task.
- Every AU column of the csv goes into `aus` (9 -> present NULL); the 12 AUs the literature
  evaluates are `BP4D_AUS`, which loaders pass as their AU list. Any other value (or a short row)
  rejects that frame's row: a guessed AU label is worse than a missing sample.
- ~140k coded frames: `fer ingest --frame-step K` reads frame numbers 1, 1 + K, ... only
  (`extra.frame`; the others are not rows read).
- Folds: the subject-independent 3-fold split in `extra.fold` (1, 2, 3; NULL for a subject in
  none of the published lists). Fold k's test set is `CAST(extra->>'fold' AS INTEGER) = k`, its
  training set the other two folds. `split` follows fold 1 ("test" for fold-1 subjects, else
  "train"), so `split = 'train'` alone is one valid protocol and `au_occurrence` /
  `au_loss_weights` of split "train" are the fold-1 training statistics.
- A csv whose name is not SUBJECT_TASK.csv, or whose header is not AU numbers, is one reject
  for the file (the rest of the dataset still loads); no csv at all is a LayoutError.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, guard, inside, open_text, register
from fer_data.records import Record, Reject

BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
BP4D_FOLDS: dict[int, tuple[str, ...]] = {
    1: tuple("F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008".split()),
    2: tuple("M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005".split()),
    3: tuple("F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014".split()),
}
FOLD_OF = {subject: fold for fold, subjects in BP4D_FOLDS.items() for subject in subjects}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CODES = {"0": False, "1": True, "9": None}
LABELS = "AUCoding/AU_OCC"
IMAGES = "BP4D-training"
_NAME = re.compile(r"^([A-Za-z]\d+)_(T\d+)$")


def frame_images(folder: Path) -> dict[int, Path]:
    """Frame number -> image in a task folder (numeric stems only; the first name wins on ties)."""
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit():
            found.setdefault(int(path.stem), path)
    return found


def code(text: str, au: int) -> bool | None:
    """0/1/9 (also written 0.0, 1.0, 9.0) -> False/True/None."""
    t = text.strip()
    if t.endswith(".0"):
        t = t[:-2]
    if t not in CODES:
        raise BadRow("label_out_of_range", f"AU{au} value {text!r} not in 0, 1, 9")
    return CODES[t]


def _header(path: Path, header: list[str]) -> list[int]:
    try:
        aus = [int(float(h)) for h in header]
    except ValueError:
        raise BadRow("unparsable_header", f"{path.name}: header {header[:6]!r}... is not AU numbers") from None
    if not aus or aus[0] != 0:
        raise BadRow("unparsable_header", f"{path.name}: the first column must be 0 (the frame number)")
    return aus[1:]


def read_file(root: Path, path: Path) -> Iterator[Item]:
    """The records of one SUBJECT_TASK.csv (one reject for the whole file if its name or header is wrong)."""
    match = _NAME.match(path.stem)
    if not match:
        yield Reject("bp4d", str(path), "adapter", "unparsable_name", f"{path.name} is not SUBJECT_TASK.csv")
        return
    subject, task = match.groups()
    with open_text(path) as f:
        table = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    if not table:
        yield Reject("bp4d", str(path), "adapter", "empty_file", f"{path} has no rows")
        return
    try:
        aus = _header(path, table[0])
    except BadRow as err:
        yield Reject("bp4d", str(path), "adapter", err.reason, err.detail)
        return
    folder = inside(root, f"{IMAGES}/{subject}/{task}")
    images = frame_images(folder)
    fold = FOLD_OF.get(subject)

    def make(values: list[str]) -> Record:
        if len(values) != len(aus) + 1:
            raise BadRow("unparsable_row", f"{len(values)} fields, header has {len(aus) + 1}")
        try:
            frame = int(float(values[0]))
        except ValueError:
            raise BadRow("unparsable_row", f"frame number {values[0]!r} is not a number") from None
        labels = {au: (code(v, au), None) for au, v in zip(aus, values[1:])}
        image = images.get(frame)
        if image is None:
            raise BadRow("missing_file", f"no image for frame {frame} in {folder} (any zero padding)")
        return Record(
            sample_id=f"bp4d:{subject}/{task}/{frame:04d}",
            dataset="bp4d",
            split="test" if fold == 1 else "train",
            source_path=str(image),
            subject=subject,
            aus=labels,
            extra={"task": task, "frame": frame, "fold": fold},
        )

    for index, values in enumerate(table[1:]):
        yield guard("bp4d", f"{path}#row={index}", lambda values=values: make(values))


@register("bp4d", ("au",), "BP4D: 12 standard AUs (all coded AUs kept), 3 subject folds in extra.fold")
def read(root: Path) -> Iterator[Item]:
    folder = root / LABELS
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise LayoutError(f"bp4d: expected label files such as {folder}/F001_T1.csv (none found)")
    if not (root / IMAGES).is_dir():
        raise LayoutError(f"bp4d: expected the image folder {root / IMAGES} (not found)")
    for path in files:
        yield from read_file(root, path)
