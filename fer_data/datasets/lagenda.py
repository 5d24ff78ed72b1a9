"""LAGENDA: one CSV row per face (age, gender M/F, face and person boxes); -1 means missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, inside_text, parse_rows, register, to_float
from fer_data.labels import age_to_bin, gender_from_text, hash_split
from fer_data.records import Record

COLUMNS = ("img_name", "age", "gender", "face_x0", "face_y0", "face_x1", "face_y1")
OPTIONAL = ("person_x0", "person_y0", "person_x1", "person_y1")
MAX_AGE = 120


def _csv(root: Path) -> Path:
    candidates = [root / "lagenda_annotation.csv", *sorted(root.glob("*.csv"))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise LayoutError(f"expected {root / 'lagenda_annotation.csv'} (label file not found)")
    return found


@register("lagenda", ("age", "gender"), "LAGENDA: exact age and gender per face box (split by image)")
def read(root: Path) -> Iterator[Item]:
    path = _csv(root)
    faces_seen: dict[str, int] = {}

    def parse(_: int, row: dict[str, str]) -> Record:
        name = row["img_name"]
        age = to_float(row["age"])
        if age == -1:
            age = None  # -1 = missing; any other negative age is a typo, not a known code
        if age is not None and age < 0:
            raise BadRow("label_out_of_range", f"age {age} is neither -1 (missing) nor 0..{MAX_AGE}")
        if age is not None and age > MAX_AGE:
            raise BadRow("label_out_of_range", f"age {age} above {MAX_AGE}")
        gender_text = row["gender"].strip()
        gender = None if gender_text in ("-1", "") else gender_from_text(gender_text)
        if gender is None and gender_text not in ("-1", ""):
            raise BadRow("label_out_of_range", f"gender {gender_text!r} is not M/F/-1")
        box = tuple(to_float(row[c]) for c in COLUMNS[3:])
        if None in box or box[2] <= box[0] or box[3] <= box[1]:
            raise BadRow("unparsable_row", f"face box {box} is not x0 < x1, y0 < y1")
        face = faces_seen[name] = faces_seen.get(name, -1) + 1
        return Record(
            sample_id=f"lagenda:{name}#{face}",
            dataset="lagenda",
            split=hash_split(name),  # every face of one image in the same split
            source_path=inside_text(root, name),
            age=age,
            age_bin=age_to_bin(age),
            gender=gender,
            face_box=box,  # type: ignore[arg-type]
            extra={"person_box": [row[c] for c in OPTIONAL] if row["person_x0"] else None},
        )

    yield from parse_rows("lagenda", path, COLUMNS, parse, delimiter=",", optional=OPTIONAL)
