"""Evaluation metrics for the emotion, AU and age/gender tasks: numpy arrays in, Python floats out.

Conventions shared by every function here, so results are comparable across datasets:

* Class targets use the loaders' ignore value ``fer_data.labels.IGNORE_INDEX`` (-100); those entries
  are dropped before anything is counted (a dataset without emotion labels must not count as wrong).
* AU targets are 0/1 with ``< 0`` (e.g. ``-1``) meaning unknown; those entries are dropped per AU.
* A metric over nothing (empty input, or every entry ignored) is ``nan`` rather than 0 or an
  exception, so a missing label set shows up as missing in reports and ``np.nanmean`` skips it.
* Every metric is a fraction in [0, 1] except :func:`age_mae`, which is in years.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fer_data.labels import IGNORE_INDEX

__all__ = [
    "war",
    "uar",
    "macro_f1",
    "au_f1",
    "au_f1_mean",
    "age_bin_accuracy",
    "age_mae",
    "gender_accuracy",
    "confusion_matrix",
    "cross_dataset_matrix",
    "cross_dataset_eval",
    "summarize",
    "TASK_METRICS",
]


def _labelled(y_true: Any, y_pred: Any, ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """1-D class labels with the ignored entries removed; shapes must match so misaligned arrays fail loudly."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if np.asarray(y_true).shape != np.asarray(y_pred).shape:
        raise ValueError(f"y_true and y_pred differ in shape: {np.shape(y_true)} vs {np.shape(y_pred)}")
    keep = t != ignore_index
    return t[keep].astype(np.int64), p[keep].astype(np.int64)


def war(y_true: Any, y_pred: Any) -> float:
    """Weighted average recall, i.e. plain accuracy over the labelled entries (nan if there are none).

    Called WAR in FER papers because it weights each class's recall by its frequency.
    """
    t, p = _labelled(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def uar(y_true: Any, y_pred: Any) -> float:
    """Unweighted average recall: mean per-class recall over the classes present in ``y_true``.

    Only classes that occur in the labelled targets count, since recall is undefined for a class
    with no examples (e.g. contempt in 7-class datasets). nan if nothing is labelled.
    """
    t, p = _labelled(y_true, y_pred)
    if not t.size:
        return float("nan")
    return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Macro F1 over the union of classes present in ``y_true`` or ``y_pred`` (labelled entries only).

    Including classes that are only predicted penalises spurious predictions of an absent class
    (their F1 is 0), which is what scikit-learn's ``f1_score(average="macro")`` does by default;
    classes in neither array are left out, as their F1 would be 0/0. nan if nothing is labelled.
    """
    t, p = _labelled(y_true, y_pred)
    if not t.size:
        return float("nan")
    scores = []
    for c in np.union1d(t, p):
        tp = np.sum((t == c) & (p == c))
        fp = np.sum((t != c) & (p == c))
        fn = np.sum((t == c) & (p != c))
        scores.append(2 * tp / (2 * tp + fp + fn))  # denominator > 0: c occurs in t or p
    return float(np.mean(scores))


def au_f1(y_true: Any, y_score: Any, threshold: float = 0.5, mask: Any | None = None) -> np.ndarray:
    """Per-AU F1 (shape [C]) of ``y_score >= threshold`` against 0/1 targets [N, C].

    Entries with ``y_true < 0`` (unknown), or ``mask == 0`` when a loader-style mask is given, are
    dropped for that AU only. An AU with no known positives and no predicted positives has
    F1 = 0/0, returned as nan (not 0, which would punish a correct all-negative prediction, nor 1);
    :func:`au_f1_mean` skips it. Pass probabilities with 0.5, or logits with ``threshold=0``.
    """
    t = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if t.shape != s.shape or (mask is not None and np.shape(mask) != t.shape):
        raise ValueError(f"y_true, y_score (and mask) differ in shape: {t.shape}, {s.shape}, {np.shape(mask)}")
    if t.ndim == 1:  # a single AU
        t, s = t[:, None], s[:, None]
        mask = None if mask is None else np.asarray(mask)[:, None]
    if t.ndim != 2:
        raise ValueError(f"expected [N, C] AU arrays, got shape {t.shape}")
    known = t >= 0  # nan targets compare False and count as unknown too
    if mask is not None:
        known &= np.asarray(mask) > 0
    pos, pred = (t == 1) & known, (s >= threshold) & known
    tp = np.sum(pos & pred, axis=0)
    fp = np.sum(~pos & pred, axis=0)
    fn = np.sum(pos & ~pred, axis=0)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan).astype(np.float64)


def au_f1_mean(y_true: Any, y_score: Any, threshold: float = 0.5, mask: Any | None = None) -> float:
    """Mean of :func:`au_f1` over the AUs where F1 is defined (nanmean); nan if it is defined for none."""
    f1 = au_f1(y_true, y_score, threshold, mask)
    return float(np.mean(f1[~np.isnan(f1)])) if np.any(~np.isnan(f1)) else float("nan")


def au_f1_baselines(y_true: Any, train_rates: Sequence[float]) -> dict[str, float]:
    """Mean F1 of the two label-blind AU predictors a model must beat: "all present" (every AU
    predicted everywhere: 2r / (1 + r) for a test rate r) and "random" (each AU predicted present
    with its training rate q, independently of the face: expected F1 2rq / (r + q))."""
    t = np.asarray(y_true, dtype=np.float64)
    known = t >= 0
    r = np.sum((t == 1) & known, axis=0) / np.maximum(np.sum(known, axis=0), 1)
    q = np.asarray(train_rates, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        random = np.where(r + q > 0, 2 * r * q / (r + q), np.nan)
    return {"f1_mean_all_present": au_f1_mean(t, np.ones_like(t)), "f1_mean_random": float(np.nanmean(random))}


def age_bin_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy over age bins 0..8 ("0-2" .. "70+"), -100 ignored; nan if nothing is labelled."""
    return war(y_true, y_pred)


def gender_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy over gender (0 male, 1 female), -100 ignored; nan if nothing is labelled."""
    return war(y_true, y_pred)


def age_mae(y_true_years: Any, y_pred_years: Any) -> float:
    """Mean absolute error in YEARS — the one metric here that is not a fraction in [0, 1].

    Entries whose true age is missing (nan, inf, or negative such as -100) are ignored;
    nan if none is left.
    """
    t = np.asarray(y_true_years, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred_years, dtype=np.float64).reshape(-1)
    if np.shape(y_true_years) != np.shape(y_pred_years):
        raise ValueError(f"shapes differ: {np.shape(y_true_years)} vs {np.shape(y_pred_years)}")
    keep = np.isfinite(t) & (t >= 0)
    return float(np.mean(np.abs(t[keep] - p[keep]))) if keep.any() else float("nan")


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes] with rows = true class and columns = predicted class.

    Entries with y_true == -100 are skipped; any other label outside 0..num_classes-1 raises,
    because silently dropping it would hide a label-space mismatch (e.g. 8-class labels, 7-class head).
    """
    t, p = _labelled(y_true, y_pred)
    bad = (t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)
    if bad.any():
        raise ValueError(f"labels outside 0..{num_classes - 1}: true {np.unique(t[bad]).tolist()}, "
                         f"pred {np.unique(p[bad]).tolist()}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).astype(np.int64)


def cross_dataset_matrix(results: Mapping[tuple[str, str], float], mean_column: bool = False) -> pd.DataFrame:
    """CAFE-style generalisation table: rows = training dataset, columns = test dataset.

    Rows and columns keep the order in which names first appear in ``results``; pairs that were
    not run are nan. ``mean_column`` appends each row's mean over its test sets (nan-skipping),
    the "mean accuracy over the five datasets" figure such papers report.
    """
    trains: list[str] = list(dict.fromkeys(k[0] for k in results))
    tests: list[str] = list(dict.fromkeys(k[1] for k in results))
    df = pd.DataFrame(np.nan, index=pd.Index(trains, name="train"), columns=pd.Index(tests, name="test"))
    for (tr, te), value in results.items():
        df.loc[tr, te] = float(value)
    if mean_column:
        df["mean"] = df.mean(axis=1, skipna=True)
    return df


def cross_dataset_eval(
    runs: Iterable[tuple[str, str, Any, Any]],
    metric: str | Callable[[Any, Any], float] = "war",
    mean_column: bool = False,
) -> pd.DataFrame:
    """Score each (train_ds, test_ds, y_true, y_pred) run with ``metric`` and tabulate it.

    ``metric`` is a callable or one of "war", "uar", "macro_f1", "au_f1_mean", "age_mae". A
    (train, test) pair given twice raises rather than silently keeping one of the two scores.
    """
    fn = _NAMED_METRICS[metric] if isinstance(metric, str) else metric
    results: dict[tuple[str, str], float] = {}
    for train_ds, test_ds, y_true, y_pred in runs:
        if (train_ds, test_ds) in results:
            raise ValueError(f"duplicate run {train_ds!r} -> {test_ds!r}")
        results[(train_ds, test_ds)] = float(fn(y_true, y_pred))
    return cross_dataset_matrix(results, mean_column=mean_column)


_NAMED_METRICS: dict[str, Callable[[Any, Any], float]] = {
    "war": war, "accuracy": war, "uar": uar, "macro_f1": macro_f1, "au_f1_mean": au_f1_mean, "age_mae": age_mae,
}

# What summarize() reports per task (the au entry also gets one f1_au<name> key per AU).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "emotion": ("war", "uar", "macro_f1"),
    "age_bin": ("accuracy", "balanced_accuracy"),
    "gender": ("accuracy", "balanced_accuracy"),
    "age": ("mae",),
    "au": ("f1_mean",),
}


def _as_labels(y: Any) -> np.ndarray:
    """Class predictions from labels [N] or scores/logits [N, K] (argmax)."""
    a = np.asarray(y)
    return a.argmax(axis=-1) if a.ndim == 2 else a


def summarize(
    task: str,
    y_true: Any,
    y_pred_or_score: Any,
    threshold: float = 0.5,
    au_names: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """The metrics a task reports, as a flat ``{name: float}`` dict ready for a logger.

    emotion -> war, uar, macro_f1; age_bin / gender -> accuracy, balanced_accuracy; age -> mae (years);
    au -> f1_mean plus one ``f1_au<name>`` per AU (names default to column indices; an AU whose
    F1 is undefined reports nan). Class tasks accept labels [N] or scores [N, K] (argmax taken);
    au takes scores compared with ``threshold``.
    """
    if task == "emotion":
        pred = _as_labels(y_pred_or_score)
        return {"war": war(y_true, pred), "uar": uar(y_true, pred), "macro_f1": macro_f1(y_true, pred)}
    if task in ("age_bin", "gender"):  # balanced accuracy (mean per-class recall) is what the thesis reports
        pred = _as_labels(y_pred_or_score)
        return {"accuracy": war(y_true, pred), "balanced_accuracy": uar(y_true, pred)}
    if task == "age":
        return {"mae": age_mae(y_true, y_pred_or_score)}
    if task == "au":
        f1 = au_f1(y_true, y_pred_or_score, threshold)
        names = list(range(f1.size)) if au_names is None else list(au_names)
        if len(names) != f1.size:
            raise ValueError(f"{len(names)} au_names for {f1.size} AUs")
        out = {"f1_mean": float(np.mean(f1[~np.isnan(f1)])) if np.any(~np.isnan(f1)) else float("nan")}
        out.update({f"f1_au{name}": float(v) for name, v in zip(names, f1)})
        return out
    raise ValueError(f"unknown task {task!r}; known: {tuple(TASK_METRICS)}")
