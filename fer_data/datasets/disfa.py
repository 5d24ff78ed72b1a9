"""DISFA: AU intensity (0..5) per frame of 27 subjects' left-camera videos.

Layout: `ActionUnit_Labels/SN001/SN001_au1.txt` .. one file per AU with lines `frame,intensity`
(frames 1-based); videos `Videos_LeftCamera/LeftVideoSN001_comp.avi`.

Choices the release leaves open, and why:
- One image record per labelled frame (`disfa:SN001/00001`) whose source is the video and
  `frame_index` = frame - 1 (0-based into the decoded video); ingest reads that one frame. Every
  labelled frame is kept: adapters get only the root, so there is no frame-step option; select
  a subset in SQL (e.g. `CAST(extra->>'frame' AS INTEGER) % 5 = 0`).
- `aus` holds every AU file found (DISFA codes 12 AUs; `DISFA_AUS` are the 8 the literature
  evaluates): present = intensity >= 2, intensity kept. A frame missing from one AU file has no
  entry for that AU (not annotated), not a guessed 0.
- A malformed line (not two numbers, frame < 1, intensity outside 0..5, a frame listed twice)
  is one reject for that line; the frame still becomes a sample with its other AUs.
- A subject whose video is missing gives one `missing_file` reject per labelled frame (rows read
  = samples + rejects); no `Videos_LeftCamera` folder at all is a LayoutError.
- ~130k labelled frames: `fer ingest --frame-step K` reads frames 1, 1 + K, ... only
  (`extra.frame`; the others are not rows read), since neighbouring frames are near-duplicates.
- Folds: the published subject-independent 3 folds in `extra.fold` (NULL for other subjects);
  `split` follows fold 1 ("test" for fold-1 subjects, else "train"), as for BP4D.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fer_data.datasets.base import BadRow, Item, LayoutError, guard, inside, read_lines, register
from fer_data.records import Record, Reject

DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
DISFA_FOLDS: dict[int, tuple[str, ...]] = {
    1: tuple("SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016".split()),
    2: tuple("SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024".split()),
    3: tuple("SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004".split()),
}
FOLD_OF = {subject: fold for fold, subjects in DISFA_FOLDS.items() for subject in subjects}
PRESENT_FROM = 2  # intensity >= 2 means the AU is present (DESIGN.md)
LABELS = "ActionUnit_Labels"
VIDEOS = "Videos_LeftCamera"
_AU_FILE = re.compile(r"^(SN\d+)_au(\d+)$", re.IGNORECASE)


def parse_line(line: str) -> tuple[int, int]:
    """`12,3` (or `12 3`) -> (frame, intensity); BadRow if malformed or out of range."""
    fields = [f for f in re.split(r"[,;\s]+", line.strip()) if f]
    if len(fields) != 2:
        raise BadRow("unparsable_row", f"expected 'frame,intensity', got {line[:60]!r}")
    try:
        frame, intensity = (int(float(f)) for f in fields)
    except ValueError:
        raise BadRow("unparsable_row", f"expected two numbers, got {line[:60]!r}") from None
    if frame < 1:
        raise BadRow("label_out_of_range", f"frame {frame} < 1 (frames are 1-based)")
    if not 0 <= intensity <= 5:
        raise BadRow("label_out_of_range", f"intensity {intensity} not in 0..5")
    return frame, intensity


def read_subject(root: Path, folder: Path) -> Iterator[Item]:
    """Records of one subject folder: the union of frames over its AU files."""
    subject = folder.name
    frames: dict[int, dict[int, tuple[bool | None, float | None]]] = {}
    for path in sorted(folder.iterdir()):
        match = _AU_FILE.match(path.stem)
        if path.suffix.lower() != ".txt" or not match or match.group(1).upper() != subject.upper():
            continue
        au = int(match.group(2))
        index = -1
        for line in read_lines(path):
            if not line.strip():
                continue
            index += 1
            try:
                frame, intensity = parse_line(line)
                if au in frames.get(frame, {}):
                    raise BadRow("duplicate_frame", f"frame {frame} listed twice for AU{au}")
            except BadRow as err:
                yield Reject("disfa", f"{path}#row={index}", "adapter", err.reason, err.detail)
                continue
            frames.setdefault(frame, {})[au] = (intensity >= PRESENT_FROM, float(intensity))
    video = inside(root, f"{VIDEOS}/LeftVideo{subject}_comp.avi")
    fold = FOLD_OF.get(subject)

    def make(frame: int) -> Record:
        if not video.is_file():
            raise BadRow("missing_file", f"{video} does not exist")
        return Record(
            sample_id=f"disfa:{subject}/{frame:05d}",
            dataset="disfa",
            split="test" if fold == 1 else "train",
            source_path=str(video),
            subject=subject,
            aus=dict(sorted(frames[frame].items())),
            frame_index=frame - 1,
            extra={"frame": frame, "fold": fold},
        )

    for frame in sorted(frames):
        yield guard("disfa", f"{video}#frame={frame}", lambda frame=frame: make(frame))


@register("disfa", ("au",), "DISFA: 8 standard AUs (intensity >= 2), video frames, 3 subject folds")
def read(root: Path) -> Iterator[Item]:
    labels = root / LABELS
    subjects = sorted(p for p in labels.iterdir() if p.is_dir()) if labels.is_dir() else []
    if not subjects:
        raise LayoutError(f"disfa: expected label files such as {labels}/SN001/SN001_au1.txt (none found)")
    if not (root / VIDEOS).is_dir():
        raise LayoutError(f"disfa: expected the video folder {root / VIDEOS} (not found)")
    for folder in subjects:
        yield from read_subject(root, folder)
