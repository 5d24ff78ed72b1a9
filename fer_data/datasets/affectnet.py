"""AffectNet: training.csv / validation.csv (validation is the usual test set), 68 landmarks, V/A."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_data.datasets.base import BadRow, Item, LayoutError, inside_text, parse_rows, register, to_float, to_int
from fer_data.faces.landmarks import landmarks68_to_5
from fer_data.labels import valid_affect
from fer_data.records import Record

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
NOT_EMOTIONS = {8: "None", 9: "Uncertain"}  # kept as samples without an emotion (V/A may still be valid)
NO_FACE = 10
SPLIT_FILES = {"train": "training.csv", "test": "validation.csv"}


def _landmarks(text: str) -> tuple[tuple[float, float], ...] | None:
    values = [float(v) for v in text.replace(",", ";").split(";") if v.strip()]
    if not values:
        return None
    if len(values) != 136:
        raise BadRow("unparsable_row", f"facial_landmarks has {len(values)} numbers, expected 136 (68 x;y)")
    return tuple(map(tuple, landmarks68_to_5(np.array(values)).tolist()))


@register("affectnet", ("emotion", "valence_arousal"), "AffectNet: 8 emotions incl. contempt, valence/arousal")
def read(root: Path) -> Iterator[Item]:
    images = root / "Manually_Annotated_Images" if (root / "Manually_Annotated_Images").is_dir() else root
    present = {split: root / f for split, f in SPLIT_FILES.items() if (root / f).is_file()}
    if not present:
        raise LayoutError(f"expected {root / 'training.csv'} and/or {root / 'validation.csv'} (label files not found)")
    for split, path in present.items():

        def parse(_: int, row: dict[str, str], split: str = split) -> Record:
            expression = to_int(row["expression"], range(11), "expression")
            if expression == NO_FACE:
                raise BadRow("no_face", "expression 10 (No-Face)")
            rel = row["subDirectory_filePath"]
            x, y, w, h = (to_float(row[c]) for c in ("face_x", "face_y", "face_width", "face_height"))
            box = (x, y, x + w, y + h) if None not in (x, y, w, h) and w > 0 and h > 0 else None
            rec = Record(
                sample_id=f"affectnet:{rel}",
                dataset="affectnet",
                split=split,
                source_path=inside_text(images, rel),
                emotion=None if expression in NOT_EMOTIONS else expression,
                valence=valid_affect(to_float(row["valence"])),
                arousal=valid_affect(to_float(row["arousal"])),
                face_box=box,
                landmarks=_landmarks(row["facial_landmarks"]),
                extra={"expression": expression},
            )
            if expression in NOT_EMOTIONS:
                rec.extra["expression_name"] = NOT_EMOTIONS[expression]
            return rec

        yield from parse_rows("affectnet", path, COLUMNS, parse, delimiter=",")
