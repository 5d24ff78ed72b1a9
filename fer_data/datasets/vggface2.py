"""VGGFace2: train|test/<Class_ID>/*.jpg, gender per identity in identity_meta.csv, optional 5 landmarks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, find_file, guard, inside, register, rows
from fer_data.datasets.folders import image_files
from fer_data.labels import gender_from_text
from fer_data.records import Record, Reject

META_COLUMNS = ("Class_ID", "Name", "Sample_Num", "Flag", "Gender")
LANDMARK_COLUMNS = ("NAME_ID", *(f"P{i}{a}" for i in range(1, 6) for a in "XY"))


def _landmarks(root: Path, split: str) -> dict[str, tuple[tuple[float, float], ...]]:
    """NAME_ID ('n000002/0001_01') -> 5 points from bb_landmark/loose_landmark_<split>.csv, when shipped.

    A malformed row only costs that image its given landmarks (the detector finds them instead).
    """
    path = root / "bb_landmark" / f"loose_landmark_{split}.csv"
    if not path.is_file():
        return {}
    out = {}
    for item in rows(path, LANDMARK_COLUMNS, ","):
        if not isinstance(item, Reject):
            row = item[1]
            try:
                xy = [float(row[c]) for c in LANDMARK_COLUMNS[1:]]
            except ValueError:
                continue
            out[row["NAME_ID"]] = tuple(zip(xy[0::2], xy[1::2]))
    return out


@register("vggface2", ("gender",), "VGGFace2: gender per identity, identities as subjects, loose 5 landmarks")
def read(root: Path) -> Iterator[Item]:
    meta_file = find_file(root, "identity_meta.csv", "meta/identity_meta.csv")
    genders = {row["Class_ID"]: row["Gender"] for _, row in (r for r in rows(meta_file, META_COLUMNS, ",") if not isinstance(r, Reject))}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        landmarks = _landmarks(root, split)
        for path in image_files(split_dir):
            identity = path.parent.name

            def make(path: Path = path, identity: str = identity) -> Record:
                if identity not in genders:
                    raise BadRow("unknown_identity", f"{identity} is not in {meta_file.name}")
                gender = gender_from_text(genders[identity])
                if gender is None:
                    raise BadRow("label_out_of_range", f"gender {genders[identity]!r} of {identity} is not m/f")
                name_id = f"{identity}/{path.stem}"
                return Record(
                    sample_id=f"vggface2:{split}/{name_id}",
                    dataset="vggface2",
                    split=split,
                    source_path=str(inside(root, path.relative_to(root).as_posix())),
                    subject=identity,
                    gender=gender,
                    landmarks=landmarks.get(name_id),
                )

            yield guard("vggface2", str(path), make)
