"""RAF-DB basic: list_patition_label.txt (sic), original and aligned images, manual attributes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, find_file, inside, parse_rows, register, to_int
from fer_data.labels import EMOTION_ID
from fer_data.records import Record

# RAF-DB labels 1..7 in the release's order.
RAF_EMOTIONS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
RAF_AGE_GROUPS = ("0-3", "4-19", "20-39", "40-69", "70+")  # no one-to-one canonical bin: kept as text
RAF_RACES = ("Caucasian", "African-American", "Asian")


def _manual_attributes(path: Path) -> tuple[tuple[tuple[float, float], ...], dict]:
    """5 landmarks and gender/race/age group from STEM_manu_attri.txt."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    landmarks = tuple((float(x), float(y)) for x, y in lines[:5])
    gender, race, age = (int(v[0]) for v in lines[5:8])
    attrs = {"gender": gender, "race": RAF_RACES[race], "age_group": RAF_AGE_GROUPS[age]}
    return landmarks, attrs


@register("rafdb", ("emotion", "gender"), "RAF-DB basic: 7 emotions, manual gender/race/age group")
def read(root: Path) -> Iterator[Item]:
    label_file = find_file(root, *(f"{base}EmoLabel/list_{spelling}_label.txt"
                                   for base in ("basic/", "") for spelling in ("patition", "partition")))
    base = label_file.parent.parent

    def parse(_: int, row: dict[str, str]) -> Record:
        name = row["name"]
        split = name.split("_", 1)[0]
        if split not in ("train", "test"):
            raise BadRow("unparsable_row", f"image name {name!r} lacks the train_/test_ prefix")
        label = to_int(row["label"], RAF_EMOTIONS, "RAF-DB label")
        stem = Path(name).stem
        original = inside(base / "Image" / "original", name)
        aligned = inside(base / "Image" / "aligned", f"{stem}_aligned.jpg")
        use_aligned = not original.exists() and aligned.exists()
        rec = Record(
            sample_id=f"rafdb:{stem}",
            dataset="rafdb",
            split=split,
            source_path=str(aligned if use_aligned else original),
            emotion=EMOTION_ID[RAF_EMOTIONS[label]],
            aligned=use_aligned,
            extra={"raf_label": label},
        )
        manual = base / "Annotation" / "manual" / f"{stem}_manu_attri.txt"
        if manual.is_file():
            try:
                landmarks, attrs = _manual_attributes(manual)
            except (ValueError, IndexError) as err:
                rec.extra["manual_attributes_error"] = f"{manual.name}: {err}"
            else:
                gender = attrs.pop("gender")
                rec.gender = gender if gender in (0, 1) else None  # 2 = unsure
                rec.extra.update(attrs, raf_gender=gender)
                if not use_aligned:
                    rec.landmarks = landmarks
        return rec

    yield from parse_rows("rafdb", label_file, ("name", "label"), parse, delimiter=" ")
