"""CelebA / CelebA-HQ: list_attr_celeba.txt (count line, header, name + 40 attributes of 1/-1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, find_file, guard, inside_text, read_lines, register
from fer_data.labels import hash_split
from fer_data.records import Record, Reject

PARTITION = {"0": "train", "1": "val", "2": "test"}
IMAGE_DIRS = ("img_align_celeba", "img_align_celeba_png", "CelebA-HQ-img", "img_celeba")
ALIGNED_DIRS = {"img_align_celeba", "img_align_celeba_png", "CelebA-HQ-img"}


def _two_columns(path: Path) -> dict[str, str]:
    """`name value` files (list_eval_partition.txt, identity_CelebA.txt) as a dict; {} when absent."""
    if not path.is_file():
        return {}
    return dict(ln.split()[:2] for ln in read_lines(path) if len(ln.split()) >= 2)


@register("celeba", ("gender",), "CelebA(-HQ): gender from the Male attribute, 40 attributes, identities")
def read(root: Path) -> Iterator[Item]:
    attr_file = find_file(root, "list_attr_celeba.txt", "Anno/list_attr_celeba.txt", "CelebAMask-HQ-attribute-anno.txt")
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    partition = _two_columns(root / "list_eval_partition.txt") or _two_columns(root / "Eval/list_eval_partition.txt")
    identity = _two_columns(root / "identity_CelebA.txt") or _two_columns(root / "Anno/identity_CelebA.txt")
    lines = read_lines(attr_file)
    names = lines[1].split() if len(lines) > 1 else []
    if "Male" not in names:
        yield Reject("celeba", f"{attr_file}#line=2", "adapter", "unparsable_row", "header line lacks the Male attribute")
        return

    def parse(fields: list[str]) -> Record:
        if len(fields) != len(names) + 1:
            raise BadRow("unparsable_row", f"expected a name and {len(names)} attributes, got {len(fields)} fields")
        values = dict(zip(names, fields[1:]))
        if any(v not in ("1", "-1") for v in values.values()):
            raise BadRow("label_out_of_range", "attributes must be 1 or -1")
        name = fields[0]
        return Record(
            sample_id=f"celeba:{name}",
            dataset="celeba",
            split=PARTITION.get(partition.get(name, ""), "") or hash_split(identity.get(name, name)),
            source_path=inside_text(image_dir, name),
            subject=identity.get(name),
            gender=0 if values["Male"] == "1" else 1,
            aligned=image_dir.name in ALIGNED_DIRS,
            extra={"attributes": [a for a, v in values.items() if v == "1"]},
        )

    for lineno, line in enumerate(lines[2:], start=3):
        if line.strip():
            yield guard("celeba", f"{attr_file}#line={lineno}", lambda fields=line.split(): parse(fields))
