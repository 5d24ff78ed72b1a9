"""FER2013 (fer2013.csv, 48x48 grey pixels inside the CSV) and FERPlus (fer2013new.csv votes over the same rows)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fer_data.datasets.base import BadRow, Item, find_file, parse_rows, register, rows, to_int
from fer_data.labels import EMOTION_ID
from fer_data.records import Record, Reject, TextSpan

FER_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")  # FER2013 ids 0..6
USAGE_SPLIT = {"training": "train", "publictest": "val", "privatetest": "test"}
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FER2013_COLUMNS = ("emotion", "pixels", "Usage")


def _split(usage: str) -> str:
    try:
        return USAGE_SPLIT[usage.strip().lower()]
    except KeyError:
        raise BadRow("label_out_of_range", f"Usage {usage!r} not in Training/PublicTest/PrivateTest") from None


@register("fer2013", ("emotion",), "FER2013: 7 emotions, 48x48 grey crops stored in the CSV")
def read_fer2013(root: Path) -> Iterator[Item]:
    path = find_file(root, "fer2013.csv", "fer2013/fer2013.csv")

    def parse(i: int, row: dict[str, str]) -> Record:
        label = to_int(row["emotion"], range(7), "emotion")
        return Record(
            sample_id=f"fer2013:{i:07d}",
            dataset="fer2013",
            split=_split(row["Usage"]),
            source_path=f"{path}#row={i}",
            emotion=EMOTION_ID[FER_EMOTIONS[label]],
            aligned=True,
            pixels=row["pixels"],  # where the text is; decoded by the workers (`decode.text_pixels`), a bad one a decode reject
        )

    yield from parse_rows("fer2013", path, FER2013_COLUMNS, parse, delimiter=",", spans=("pixels",))


def _majority(votes: list[int]) -> int:
    """Canonical emotion of the class with more than half of the votes; BadRow otherwise."""
    total = sum(votes)
    best = int(np.argmax(votes))
    if total == 0 or votes[best] * 2 <= total:
        raise BadRow("no_majority", f"votes {votes}: no class has more than half")
    if FERPLUS_VOTES[best] in ("unknown", "NF"):
        raise BadRow("not_an_emotion", f"majority vote is {FERPLUS_VOTES[best]}")
    return EMOTION_ID[FERPLUS_VOTES[best]]


class _RowCursor:
    """fer2013.csv's pixels by row index, read forward in step with fer2013new.csv (the same rows in
    the same order), so FERPlus never holds FER2013's 35k (or a larger release's) pixel strings."""

    def __init__(self, path: Path) -> None:
        self._rows = (r for r in rows(path, FER2013_COLUMNS, ",", spans=("pixels",)) if not isinstance(r, Reject))
        self._at: tuple[int, dict[str, Any]] | None = None

    def get(self, index: int) -> str | TextSpan | None:
        """The pixels of data row `index` (indices asked in increasing order), None if it has none."""
        while self._at is None or self._at[0] < index:
            self._at = next(self._rows, None)
            if self._at is None:
                self._at = (2**62, {})  # past the end: every later row is missing
        return self._at[1]["pixels"] if self._at[0] == index else None


@register("ferplus", ("emotion",), "FERPlus: 8 emotions by majority of 10 votes over FER2013 images (votes kept)")
def read_ferplus(root: Path) -> Iterator[Item]:
    labels = find_file(root, "fer2013new.csv", "FERPlus/fer2013new.csv")
    fer = find_file(root, "fer2013.csv", "fer2013/fer2013.csv")
    pixels = _RowCursor(fer)

    def parse(i: int, row: dict[str, str]) -> Record:
        name = row["Image name"]
        if not name:
            raise BadRow("not_a_face", f"row {i} has no image name (FERPlus marks non-faces so)")
        votes = [to_int(row[v], range(11), f"{v} votes") for v in FERPLUS_VOTES]
        text = pixels.get(i)
        if text is None:
            raise BadRow("missing_file", f"row {i} of {fer} is missing or unreadable")
        return Record(
            sample_id=f"ferplus:{name}",
            dataset="ferplus",
            split=_split(row["Usage"]),
            source_path=f"{fer}#row={i}",
            emotion=_majority(votes),
            aligned=True,
            pixels=text,
            extra={"votes": dict(zip(FERPLUS_VOTES, votes)), "image_name": name},
        )

    yield from parse_rows("ferplus", labels, ("Usage", "Image name", *FERPLUS_VOTES), parse, delimiter=",")
