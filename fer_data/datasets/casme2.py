"""CASME II: spontaneous micro-expression clips with onset/apex/offset frames, emotion and AUs.

Layout: one .xlsx coding sheet in the root (the release's `CASME2-coding-20140508.xlsx`:
Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Action Units, Estimated Emotion, plus
empty spacer columns) and frame folders `sub01/EP02_01f/img46.jpg`, under `CASME2_RAW_selected/`,
`CASME2-RAW/` or the root itself (raw frames), or under `Cropped/` (the release's aligned crops).

Choices the release leaves open, and why:
- One clip record per sheet row (`casme2:sub01/EP02_01f`) whose source is the frame folder and
  `frame_range` = the (onset, offset) positions in the numerically sorted frame list (img2 <
  img10), so only the expression is sampled. The sheet's frame numbers and the apex position are
  in `extra` (`onset_frame`, `apex_frame`, `offset_frame`, `apex_index`), and their positions in
  `extra.keyframes` ({onset, apex, offset}; no apex when the sheet has none), which
  `--sampling keyframes` samples.
- Onset/offset that name no existing frame are moved to the nearest frames inside the range and
  flagged `range_adjusted` (the release has a few offsets past the last frame); onset after
  offset, or no frame inside the range, rejects the row. A missing apex ("/" in the release)
  keeps the sample with `apex_frame` NULL and the raw text in `apex_raw`.
- Emotion: happiness, disgust, surprise, fear, sadness map to the canonical ids; repression and
  others are no canonical emotion (NULL) and every row keeps its raw text in
  `extra.estimated_emotion`. Any other text is a `label_out_of_range` reject.
- AUs: numbers are read from each `+`-separated token, side prefixes dropped (`R4+L10` ->
  4, 10). FACS coders list every AU they see, so an AU of the sheet's vocabulary (all AUs named
  anywhere in it) that a row does not list is present=False. A row with `?` (an AU the coders
  could not name) lists its known AUs as present and leaves the rest NULL, since the unnamed AU
  could be any of them; `extra.au_uncertain` marks it. An empty AU cell gives no AU labels.
- `split`: CASME II has no official split (papers use leave-one-subject-out over `subject`);
  `hash_split(subject)` gives a deterministic subject-independent train/val/test default.
- Sheet discovery: `*.xlsx` in the root (a name containing "casme" first, Excel lock files
  `~$...` skipped); the header row is found in the first 20 rows by its column names, matched
  ignoring case, spaces and punctuation. No sheet, or missing columns, is a LayoutError.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fer_data.datasets.base import BadRow, Item, LayoutError, guard, inside, register
from fer_data.labels import EMOTION_ID, hash_split
from fer_data.records import Record
from fer_data.video import frame_files

CASME2_EMOTIONS: dict[str, str | None] = {
    "happiness": "happiness", "disgust": "disgust", "surprise": "surprise", "fear": "fear",
    "sadness": "sadness", "repression": None, "others": None,
}
COLUMNS = {"subject": "Subject", "filename": "Filename", "onsetframe": "OnsetFrame", "apexframe": "ApexFrame",
           "offsetframe": "OffsetFrame", "actionunits": "Action Units", "estimatedemotion": "Estimated Emotion"}
RAW_PREFIXES = ("CASME2_RAW_selected", "CASME2-RAW", "")
ALIGNED_PREFIXES = ("Cropped",)


def _norm(cell: Any) -> str:
    return re.sub(r"[^a-z]", "", str(cell or "").lower())


def _text(cell: Any) -> str:
    """Cell as text; whole floats (Excel numbers) without their .0."""
    if cell is None:
        return ""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell).strip()


def parse_aus(cell: Any) -> tuple[set[int], bool]:
    """'4+7' -> ({4, 7}, False); 'R4+L10' -> ({4, 10}, False); '4+?' -> ({4}, True); '' -> (set(), False)."""
    text = _text(cell)
    aus: set[int] = set()
    uncertain = False
    for token in filter(None, (t.strip() for t in text.split("+"))):
        numbers = re.findall(r"\d+", token)
        if numbers:
            aus.add(int(numbers[0]))
        elif "?" in token:
            uncertain = True
        else:
            raise BadRow("unparsable_row", f"AU token {token!r} in {text!r} names no AU")
    return aus, uncertain


def subject_of(cell: Any) -> str:
    """1, '01', 1.0 or 'sub01' -> 'sub01'."""
    text = _text(cell).lower().removeprefix("sub")
    if not text.isdigit():
        raise BadRow("unparsable_row", f"Subject {_text(cell)!r} is not a subject number")
    return f"sub{int(text):02d}"


def frame_number(cell: Any, what: str) -> int:
    try:
        return int(float(_text(cell)))
    except ValueError:
        raise BadRow("unparsable_row", f"{what} {_text(cell)!r} is not a frame number") from None


def find_sheet(root: Path) -> Path:
    sheets = [p for p in sorted(root.glob("*.xlsx")) if not p.name.startswith("~$")]
    if not sheets:
        raise LayoutError(f"casme2: expected a coding sheet such as {root}/CASME2-coding-20140508.xlsx "
                          "(no *.xlsx found)")
    return next((p for p in sheets if "casme" in p.name.lower()), sheets[0])


def read_sheet(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(data-row index, {column key: cell}) of the sheet's rows below its header row."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # zipfile.BadZipFile, KeyError, InvalidFileException ...
        raise LayoutError(f"casme2: {path} is not a readable .xlsx ({type(err).__name__}: {err})") from err
    try:
        for sheet in book.worksheets:
            table = [list(r) for r in sheet.iter_rows(values_only=True)]
            for h, header in enumerate(table[:20]):
                names = [_norm(c) for c in header]
                if "subject" in names and "filename" in names:
                    missing = [label for key, label in COLUMNS.items() if key not in names]
                    if missing:
                        raise LayoutError(f"casme2: {path} header lacks the columns {missing}")
                    where = {key: names.index(key) for key in COLUMNS}
                    out = []
                    for row in table[h + 1:]:
                        if all(_text(c) == "" for c in row):
                            continue
                        cells = {key: row[i] if i < len(row) else None for key, i in where.items()}
                        out.append((len(out), cells))
                    return out
    finally:
        book.close()
    raise LayoutError(f"casme2: {path} has no header row with the columns {list(COLUMNS.values())}")


def frame_folder(root: Path, subject: str, name: str) -> tuple[Path, bool]:
    """(folder, aligned) of the first layout variant holding SUBJECT/NAME; BadRow if none does."""
    tried = []
    for prefix, aligned in [(p, False) for p in RAW_PREFIXES] + [(p, True) for p in ALIGNED_PREFIXES]:
        folder = inside(root, f"{prefix}/{subject}/{name}" if prefix else f"{subject}/{name}")
        if folder.is_dir():
            return folder, aligned
        tried.append(str(folder))
    raise BadRow("missing_file", f"no frame folder; tried {', '.join(tried)}")


def _number(path: Path) -> int:
    nums = re.findall(r"\d+", path.stem)
    return int(nums[-1]) if nums else -1


def _record(root: Path, cells: dict[str, Any], vocabulary: set[int]) -> Record:
    subject = subject_of(cells["subject"])
    name = _text(cells["filename"])
    if not name:
        raise BadRow("unparsable_row", "empty Filename")
    onset = frame_number(cells["onsetframe"], "OnsetFrame")
    offset = frame_number(cells["offsetframe"], "OffsetFrame")
    if onset > offset:
        raise BadRow("label_out_of_range", f"OnsetFrame {onset} after OffsetFrame {offset}")
    try:
        apex: int | None = frame_number(cells["apexframe"], "ApexFrame")
    except BadRow:
        apex = None
    raw_emotion = _text(cells["estimatedemotion"])
    if raw_emotion.lower() not in CASME2_EMOTIONS:
        raise BadRow("label_out_of_range", f"Estimated Emotion {raw_emotion!r} not in {sorted(CASME2_EMOTIONS)}")
    canonical = CASME2_EMOTIONS[raw_emotion.lower()]
    listed, uncertain = parse_aus(cells["actionunits"])
    folder, aligned = frame_folder(root, subject, name)
    numbers = [_number(p) for p in frame_files(folder)]
    start = next((i for i, n in enumerate(numbers) if n >= onset), None)
    end = next((i for i in reversed(range(len(numbers))) if numbers[i] <= offset), None)
    if start is None or end is None or start > end:
        raise BadRow("frame_out_of_range", f"no frame numbered {onset}..{offset} in {folder} ({len(numbers)} frames)")
    if _text(cells["actionunits"]) == "":
        aus: dict[int, tuple[bool | None, float | None]] = {}
    else:
        aus = {au: (True if au in listed else None if uncertain else False, None) for au in sorted(vocabulary | listed)}
    extra: dict[str, Any] = {
        "estimated_emotion": raw_emotion, "action_units": _text(cells["actionunits"]), "au_uncertain": uncertain,
        "onset_frame": onset, "apex_frame": apex, "offset_frame": offset,
        "apex_index": numbers.index(apex) if apex is not None and apex in numbers else None,
    }
    # Positions in the frame folder of the frames the release marks (`--sampling keyframes` samples them).
    extra["keyframes"] = {"onset": start, "offset": end, **({} if extra["apex_index"] is None else
                                                           {"apex": extra["apex_index"]})}
    if apex is None:
        extra["apex_raw"] = _text(cells["apexframe"])
    if numbers[start] != onset or numbers[end] != offset:
        extra["range_adjusted"] = True
    return Record(
        sample_id=f"casme2:{subject}/{name}",
        dataset="casme2",
        split=hash_split(subject),
        source_path=str(folder),
        kind="clip",
        subject=subject,
        emotion=None if canonical is None else EMOTION_ID[canonical],
        aus=aus,
        aligned=aligned,
        frame_range=(start, end),
        extra=extra,
    )


@register("casme2", ("emotion", "au"), "CASME II: micro-expression clips (onset..offset), 5 emotions + AUs",
          kind="clip")
def read(root: Path) -> Iterator[Item]:
    path = find_sheet(root)
    table = read_sheet(path)
    vocabulary: set[int] = set()
    for _, cells in table:
        try:
            vocabulary |= parse_aus(cells["actionunits"])[0]
        except BadRow:
            pass
    for index, cells in table:
        yield guard("casme2", f"{path}#row={index}", lambda cells=cells: _record(root, cells, vocabulary))
