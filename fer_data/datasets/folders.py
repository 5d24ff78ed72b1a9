"""Class-folder trees: SFEW 2.0, MMA and any `root/[split/]<class>/*.jpg` tree (imagefolder).

One reader serves all three; the table says which split folder names each release uses. Every
file in the folders that hold the classes (the split folders, or the root without them) is a sample
or a reject: a GIF, HEIC or Thumbs.db in a class folder is `unsupported_format`, a file beside the
class folders `no_class_folder`, so rows read = samples + rejects counts every file there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, guard, inside_text, register
from fer_data.labels import emotion_from_name, hash_split
from fer_data.records import Record, Reject

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

# Split folder names, matched case-insensitively; the first that exists wins for each split.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


def _children(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}


def all_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order."""
    return [p for p in all_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]


def read_class_folders(dataset: str, root: Path, require_splits: bool) -> Iterator[Item]:
    """Samples of `root/<split>/<class>/...`; without split folders, `root/<class>/...` split by hash."""
    children = _children(root)
    splits: dict[str, Path] = {}
    for split, names in SPLIT_FOLDERS.items():
        found = next((children[n] for n in names if n in children), None)
        if found is not None:
            splits[split] = found
    if not splits:
        if require_splits:
            expected = ", ".join(f"{root}/{names[0].capitalize()}" for names in SPLIT_FOLDERS.values())
            raise LayoutError(f"{dataset}: expected split folders such as {expected}")
        splits = {"": root}
    if not any(_children(folder) for folder in splits.values()):
        raise LayoutError(f"{dataset}: expected class folders such as {root}/happy/*.jpg (none found)")
    for split, folder in splits.items():
        for path in sorted(p for p in folder.iterdir() if not p.is_dir()):
            yield Reject(dataset, str(path), "adapter", "no_class_folder",
                         f"{path.name} lies beside the class folders of {folder}, in none of them")
        for class_dir in _children(folder).values():
            emotion = emotion_from_name(class_dir.name)
            for path in all_files(class_dir):
                rel = path.relative_to(root).as_posix()
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    yield Reject(dataset, str(path), "adapter", "unsupported_format",
                                 f"{path}: expected an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
                    continue

                def make(rel: str = rel, emotion: int | None = emotion, class_dir: Path = class_dir) -> Record:
                    if emotion is None:
                        raise BadRow("label_out_of_range", f"class folder {class_dir.name!r} is no known emotion name")
                    return Record(
                        sample_id=f"{dataset}:{rel}",
                        dataset=dataset,
                        split=split or hash_split(rel),
                        source_path=inside_text(root, rel),
                        emotion=emotion,
                        extra={"class_name": class_dir.name},
                    )

                yield guard(dataset, str(path), make)


@register("sfew", ("emotion",), "SFEW 2.0: 7 emotions, Train/Val class folders of movie frames")
def read_sfew(root: Path) -> Iterator[Item]:
    return read_class_folders("sfew", root, require_splits=True)


@register("mma", ("emotion",), "MMA facial expression: 7 emotions, train/valid/test class folders")
def read_mma(root: Path) -> Iterator[Item]:
    return read_class_folders("mma", root, require_splits=True)


@register("imagefolder", ("emotion",), "Any root/[split/]<class>/*.jpg tree; class names matched to emotions")
def read_imagefolder(root: Path) -> Iterator[Item]:
    return read_class_folders("imagefolder", root, require_splits=False)
