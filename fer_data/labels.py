"""Canonical label spaces (DESIGN.md): every adapter maps into these ids and nothing else.

A missing label is ``None`` here and NULL in the catalog, never a magic number.
"""

from __future__ import annotations

import hashlib
import math
import re

# Emotion ids follow AffectNet's order, so AffectNet needs no remapping.
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
EMOTION_ID: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
NUM_BASIC_EMOTIONS = 7  # 7-class datasets never use 7 (contempt)

# Names seen in class folders and label files across releases, lower-cased.
EMOTION_SYNONYMS: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "happily": "happiness",
    "sadness": "sadness", "sad": "sadness", "sorrow": "sadness",
    "surprise": "surprise", "surprised": "surprise", "suprise": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "anger": "anger", "angry": "anger", "mad": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
}

AGE_BINS: tuple[str, ...] = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
_AGE_BIN_LOWER: tuple[int, ...] = (0, 3, 10, 20, 30, 40, 50, 60, 70)

GENDERS: tuple[str, ...] = ("male", "female")
GENDER_SYNONYMS: dict[str, int] = {"male": 0, "m": 0, "man": 0, "female": 1, "f": 1, "woman": 1}

# The label spaces a task name refers to; shards' _info.json and `fer datasets` print these.
LABEL_SPACES: dict[str, tuple[str, ...]] = {
    "emotion": EMOTIONS,
    "age_bin": AGE_BINS,
    "gender": GENDERS,
}
TASKS: tuple[str, ...] = ("emotion", "valence_arousal", "age", "gender", "au")

# The class tasks and the classes a model's head predicts for each: 7 emotions (contempt, which
# only some releases label, is ignored), every age bin and gender.
NUM_CLASSES: dict[str, int] = {"emotion": NUM_BASIC_EMOTIONS, "age_bin": len(AGE_BINS), "gender": len(GENDERS)}
# A class target without a label (loaders, losses, metrics): torch's cross-entropy ignores it by default.
IGNORE_INDEX = -100

SPLITS: tuple[str, ...] = ("train", "val", "test")


def emotion_from_name(name: str) -> int | None:
    """Canonical emotion id for a class name in any common spelling, or None."""
    key = re.sub(r"[^a-z]", "", name.strip().lower())
    canonical = EMOTION_SYNONYMS.get(key)
    return None if canonical is None else EMOTION_ID[canonical]


def age_to_bin(age: float | None) -> int | None:
    """Age in years to its bin id; None for missing, negative or non-finite ages."""
    if age is None or not math.isfinite(age) or age < 0:
        return None
    return max(i for i, lower in enumerate(_AGE_BIN_LOWER) if age >= lower)


def age_bin_from_text(text: str) -> int | None:
    """Bin id for a bin written as text ("20-29", "more than 70", "70+"), None if it is no canonical bin."""
    t = text.strip().lower().replace(" ", "")
    if t in ("morethan70", "70+", "70-", ">70"):
        return AGE_BINS.index("70+")
    return AGE_BINS.index(t) if t in AGE_BINS else None


def gender_from_text(text: str) -> int | None:
    """0 male, 1 female from 'Male', 'm', 'F', ...; None for anything else."""
    return GENDER_SYNONYMS.get(text.strip().lower())


def valid_affect(value: float | None) -> float | None:
    """Valence/arousal in [-1, 1], else None (AffectNet writes -2 for invalid)."""
    if value is None or not math.isfinite(value) or not -1.0 <= value <= 1.0:
        return None
    return float(value)


def hash_split(key: str, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split for releases without an official one, stable under re-ordering.

    Pass the subject (identity) as key where known, so one person never spans splits.
    """
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"
