"""DFEW: in-the-wild movie clips, 7 emotions, five official folds.

Layout: `EmoLabel_DataSplit/train(single-labeled)/set_1.csv` .. `set_5.csv` and
`EmoLabel_DataSplit/test(single-labeled)/set_N.csv` with header `video_name,label`; names are
integers that become 5-digit folder names; labels 1..7 = Happy, Sad, Neutral, Angry, Surprise,
Disgust, Fear. Frames `Clip/clip_224x224/00001/00001.jpg ...` (aligned face crops), original
videos `Clip/original/00001.mp4`.

Choices the release leaves open, and why:
- One record per video (`dfew:00001`), not one per (video, fold): the five folds partition the
  same videos, and a record per fold would decode and shard every clip five times.
- Fold membership lives in `extra`: `fold` = k, the set whose *test* list holds the video, and
  `train_folds` = the sets whose train lists hold it. With consistent lists (as released)
  `train_folds` is the complement of `fold`, so in SQL:
      fold k test:  dataset = 'dfew' AND CAST(extra->>'fold' AS INTEGER) = k
      fold k train: dataset = 'dfew' AND CAST(extra->>'fold' AS INTEGER) <> k
  or, exactly as listed: list_contains(CAST(extra->'train_folds' AS INTEGER[]), k).
- `split` follows fold 1 ("test" if set_1's test list holds the video, else "train"), so a plain
  `split = 'train'` query is one valid protocol and never mixes a test video into training.
  The paper's protocol is the mean over the five folds.
- A video in no test list keeps `fold` NULL and split "train". Rows for one video that disagree
  (two labels, two test folds) reject the video (`conflicting_labels`, `conflicting_folds`):
  either would silently leak or mislabel. Bad rows reject only themselves.
- Source: the aligned frame folder when it holds frame images (`aligned=True`, plain resize later;
  no tracking, so `face_coverage` and `n_tracks` are NULL), else the original mp4 (not aligned:
  the detector runs on its frames and the face tracker picks the main face, `fer_data.faces.track`;
  a clip whose main face spans less than `--min-face-coverage` of it is a reject). Neither →
  `missing_file`.
- All ten list files are required; a missing one is a LayoutError naming it, since a partial
  set would give wrong fold membership without any sign.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, guard, inside, register, rows, to_int
from fer_data.labels import EMOTION_ID
from fer_data.records import Record, Reject
from fer_data.video import FRAME_SUFFIXES

# DFEW labels 1..7 in the release's order.
DFEW_EMOTIONS = {1: "happiness", 2: "sadness", 3: "neutral", 4: "anger", 5: "surprise", 6: "disgust", 7: "fear"}
FOLDS = (1, 2, 3, 4, 5)
LIST_DIRS = {"train": "train(single-labeled)", "test": "test(single-labeled)"}


def list_files(root: Path) -> dict[tuple[str, int], Path]:
    """(part, fold) -> label list path; LayoutError naming every expected file that is missing."""
    files = {(part, k): root / "EmoLabel_DataSplit" / folder / f"set_{k}.csv"
             for part, folder in LIST_DIRS.items() for k in FOLDS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise LayoutError(f"dfew: expected {' and '.join(missing)} (label file not found)")
    return files


def video_name(text: str) -> str:
    """`1`, `00001` or `1.0` -> `00001`; anything else is an unparsable row."""
    try:
        number = int(float(text))
    except (ValueError, OverflowError):
        raise BadRow("unparsable_row", f"video_name {text!r} is not a number") from None
    if number < 0:
        raise BadRow("unparsable_row", f"video_name {number} is negative")
    return f"{number:05d}"


@dataclass
class _Video:
    labels: set[int] = field(default_factory=set)
    test_folds: set[int] = field(default_factory=set)
    train_folds: set[int] = field(default_factory=set)
    rows: list[str] = field(default_factory=list)  # "FILE#row=N" of every row naming it


def _source(root: Path, name: str) -> tuple[Path, bool]:
    """(frame folder, True) when it holds frame images, else (original video, False); BadRow if neither exists."""
    frames = inside(root, f"Clip/clip_224x224/{name}")
    if frames.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in frames.iterdir()):
        return frames, True
    video = inside(root, f"Clip/original/{name}.mp4")
    if video.is_file():
        return video, False
    raise BadRow("missing_file", f"neither {frames}/ nor {video} exists")


def _record(root: Path, name: str, video: _Video) -> Record:
    if len(video.labels) > 1:
        raise BadRow("conflicting_labels", f"video {name} has labels {sorted(video.labels)} in {video.rows}")
    if len(video.test_folds) > 1:
        raise BadRow("conflicting_folds", f"video {name} is in the test lists of sets {sorted(video.test_folds)}")
    label = next(iter(video.labels))
    fold = next(iter(video.test_folds), None)
    path, aligned = _source(root, name)
    return Record(
        sample_id=f"dfew:{name}",
        dataset="dfew",
        split="test" if fold == 1 else "train",
        source_path=str(path),
        kind="clip",
        emotion=EMOTION_ID[DFEW_EMOTIONS[label]],
        aligned=aligned,
        extra={"fold": fold, "train_folds": sorted(video.train_folds), "dfew_label": label},
    )


@register("dfew", ("emotion",), "DFEW: movie clips, 7 emotions, 5 folds (extra.fold = test fold)", kind="clip")
def read(root: Path) -> Iterator[Item]:
    videos: dict[str, _Video] = {}
    for (part, fold), path in sorted(list_files(root).items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for item in rows(path, ("video_name", "label")):
            if isinstance(item, Reject):
                yield Reject("dfew", item.source_path, item.stage, item.reason, item.detail)
                continue
            index, row = item
            source = f"{path}#row={index}"
            try:
                name = video_name(row["video_name"])
                label = to_int(row["label"], DFEW_EMOTIONS, "DFEW label")
            except BadRow as err:
                yield Reject("dfew", source, "adapter", err.reason, err.detail)
                continue
            video = videos.setdefault(name, _Video())
            video.labels.add(label)
            (video.test_folds if part == "test" else video.train_folds).add(fold)
            video.rows.append(source)
    for name in sorted(videos):
        yield guard("dfew", str(root / "Clip" / "clip_224x224" / name),
                    lambda name=name: _record(root, name, videos[name]))
