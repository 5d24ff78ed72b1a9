"""UTKFace: labels in the file name `age_gender_race_datetime.jpg.chip.jpg`; malformed names are rejected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, guard, inside_text, register, to_int
from fer_data.datasets.folders import image_files
from fer_data.labels import age_to_bin, hash_split
from fer_data.records import Record

RACES = ("White", "Black", "Asian", "Indian", "Others")
MAX_AGE = 116  # the oldest age in the release


def _record(root: Path, path: Path) -> Record:
    parts = path.name.split("_")
    if len(parts) < 4:
        raise BadRow("malformed_name", f"{path.name!r} is not age_gender_race_datetime.jpg")
    age = to_int(parts[0], range(MAX_AGE + 1), "age")
    gender = to_int(parts[1], (0, 1), "gender")
    race = to_int(parts[2], range(len(RACES)), "race")
    rel = path.relative_to(root).as_posix()
    return Record(
        sample_id=f"utkface:{rel}",
        dataset="utkface",
        split=hash_split(rel),
        source_path=inside_text(root, rel),
        age=float(age),
        age_bin=age_to_bin(age),
        gender=gender,
        aligned=path.name.endswith(".chip.jpg"),  # the "Aligned&Cropped Faces" release
        extra={"race": RACES[race]},
    )


@register("utkface", ("age", "gender"), "UTKFace: exact age, gender, race from file names (split by hash)")
def read(root: Path) -> Iterator[Item]:
    files = image_files(root)
    if not files:
        raise LayoutError(f"utkface: expected images named age_gender_race_datetime.jpg.chip.jpg under {root}")
    for path in files:
        yield guard("utkface", str(path), lambda path=path: _record(root, path))
