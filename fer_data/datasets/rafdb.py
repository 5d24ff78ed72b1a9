"""RAF-DB basic: list_patition_label.txt (sic), original and aligned images, manual attributes.

An image listed twice with the same label is one sample (the later row a `duplicate_sample_id`);
listed with two labels, every row of it is rejected (`conflicting_labels`), as DFEW does: keeping
either label would mislabel it silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Files, Item, find_file, inside_text, parse_rows, read_lines, register, rows, to_int
from fer_data.labels import EMOTION_ID
from fer_data.records import Record

# RAF-DB labels 1..7 in the release's order.
RAF_EMOTIONS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
RAF_AGE_GROUPS = ("0-3", "4-19", "20-39", "40-69", "70+")  # no one-to-one canonical bin: kept as text
RAF_RACES = ("Caucasian", "African-American", "Asian")


def _manual_attributes(path: Path) -> tuple[tuple[tuple[float, float], ...], dict]:
    """5 landmarks and gender/race/age group from STEM_manu_attri.txt."""
    lines = [ln.split() for ln in read_lines(path) if ln.strip()]
    landmarks = tuple((float(x), float(y)) for x, y in lines[:5])
    gender, race, age = (int(v[0]) for v in lines[5:8])
    attrs = {"gender": gender, "race": RAF_RACES[race], "age_group": RAF_AGE_GROUPS[age]}
    return landmarks, attrs


def _stem(name: str) -> str:
    """`Path(name).stem` without making a Path (twice a row)."""
    return os.path.splitext(os.path.basename(name.rstrip("/")))[0]


def _conflicting_labels(label_file: Path) -> dict[str, str]:
    """Image stem -> "label N in rows [...]" text, for the images listed with more than one valid label."""
    seen: dict[str, dict[int, list[int]]] = {}
    for item in rows(label_file, ("name", "label"), delimiter=" "):
        if isinstance(item, tuple):
            index, row = item
            try:
                label = to_int(row["label"], RAF_EMOTIONS, "RAF-DB label")
            except BadRow:
                continue  # a bad label rejects its own row
            seen.setdefault(_stem(row["name"]), {}).setdefault(label, []).append(index)
    return {stem: "; ".join(f"{label} in rows {at}" for label, at in sorted(labels.items()))
            for stem, labels in seen.items() if len(labels) > 1}


@register("rafdb", ("emotion", "gender"), "RAF-DB basic: 7 emotions, manual gender/race/age group")
def read(root: Path) -> Iterator[Item]:
    label_file = find_file(root, *(f"{base}EmoLabel/list_{spelling}_label.txt"
                                   for base in ("basic/", "") for spelling in ("patition", "partition")))
    base = label_file.parent.parent
    originals, aligned_dir = base / "Image" / "original", base / "Image" / "aligned"
    manual_dir = base / "Annotation" / "manual"
    conflicts = _conflicting_labels(label_file)
    original_files, aligned_files, manual_files = Files(originals), Files(aligned_dir), Files(manual_dir)

    def parse(_: int, row: dict[str, str]) -> Record:
        name = row["name"]
        split = name.split("_", 1)[0]
        if split not in ("train", "test"):
            raise BadRow("unparsable_row", f"image name {name!r} lacks the train_/test_ prefix")
        label = to_int(row["label"], RAF_EMOTIONS, "RAF-DB label")
        stem = _stem(name)
        if stem in conflicts:
            raise BadRow("conflicting_labels", f"image {stem} has labels {conflicts[stem]}")
        original = inside_text(originals, name)
        aligned = os.path.join(aligned_files.folder, f"{stem}_aligned.jpg")  # a file name: inside its folder
        use_aligned = original not in original_files and aligned in aligned_files
        rec = Record(
            sample_id=f"rafdb:{stem}",
            dataset="rafdb",
            split=split,
            source_path=aligned if use_aligned else original,
            emotion=EMOTION_ID[RAF_EMOTIONS[label]],
            aligned=use_aligned,
            extra={"raf_label": label},
        )
        manual = os.path.join(manual_files.folder, f"{stem}_manu_attri.txt")
        if manual in manual_files:
            try:
                landmarks, attrs = _manual_attributes(Path(manual))
            except (ValueError, IndexError) as err:
                rec.extra["manual_attributes_error"] = f"{os.path.basename(manual)}: {err}"
            else:
                gender = attrs.pop("gender")
                rec.gender = gender if gender in (0, 1) else None  # 2 = unsure
                rec.extra.update(attrs, raf_gender=gender)
                if not use_aligned:
                    rec.landmarks = landmarks
        return rec

    yield from parse_rows("rafdb", label_file, ("name", "label"), parse, delimiter=" ")
