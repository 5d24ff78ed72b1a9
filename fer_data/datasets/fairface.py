"""FairFace: fairface_label_{train,val}.csv with age-bin text, gender and race; padding-0.25 crops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, inside_text, parse_rows, register
from fer_data.labels import age_bin_from_text, gender_from_text
from fer_data.records import Record

COLUMNS = ("file", "age", "gender", "race")
SPLIT_FILES = {"train": "fairface_label_train.csv", "val": "fairface_label_val.csv"}


@register("fairface", ("age", "gender"), "FairFace: 9 age bins (one-to-one), gender, race")
def read(root: Path) -> Iterator[Item]:
    present = {split: root / f for split, f in SPLIT_FILES.items() if (root / f).is_file()}
    if not present:
        raise LayoutError(f"expected {root / SPLIT_FILES['train']} and/or {root / SPLIT_FILES['val']} (label files not found)")
    for split, path in present.items():

        def parse(_: int, row: dict[str, str], split: str = split) -> Record:
            age_bin = age_bin_from_text(row["age"])
            gender = gender_from_text(row["gender"])
            if age_bin is None:
                raise BadRow("label_out_of_range", f"age {row['age']!r} is no FairFace age bin")
            if gender is None:
                raise BadRow("label_out_of_range", f"gender {row['gender']!r} is not Male/Female")
            return Record(
                sample_id=f"fairface:{row['file']}",
                dataset="fairface",
                split=split,
                source_path=inside_text(root, row["file"]),
                age_bin=age_bin,
                gender=gender,
                extra={"age_text": row["age"], "race": row["race"], "service_test": row["service_test"]},
            )

        # service_test is missing in the first release.
        yield from parse_rows("fairface", path, COLUMNS, parse, delimiter=",", optional=("service_test",))
