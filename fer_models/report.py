"""The results table (`fer report`, the end of `make demo`, the README's results block), built only
from files the pipeline writes: each run's `metrics.json` + `config.json` under the runs folder and
`cross_dataset.json` of the evaluate stage. Rows are sorted and numbers rounded to fixed places, so
the same metrics give the same bytes and a README written from them cannot go stale unnoticed."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os.path import commonprefix
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
# metrics.json key -> column; a column no run reports is left out
COLUMNS: dict[str, str] = {
    "emotion/uar": "UAR", "emotion/war": "WAR", "au/f1_mean": "AU F1",
    "age_bin/accuracy": "age", "gender/accuracy": "gender", "loss": "loss",
}
LEGEND = ("UAR, WAR: emotion recall, unweighted and weighted; AU F1: mean over AUs; age (bin), gender: "
          "accuracy; loss: the method's own test loss. test data: the datasets the run's test selection "
          "names (all: every dataset it matches; N datasets: more than fit), then each test set of the cross-dataset evaluation; "
          "n: test samples (k-fold: all folds).")
BASELINES = {"au/f1_mean_all_present": "every AU present", "au/f1_mean_random": "random at training rates"}
# config fields that differ between the folds of one k-fold experiment (or are filled in per fold)
PER_FOLD = frozenset({"fold", "out", "aus", "au_rates"})
MISSING = "–"
NAMES_WIDTH = 12  # the test-data column's width, so the block stays under 100 columns


@dataclass(frozen=True)
class Run:
    name: str  # the folder under the runs folder
    config: dict[str, Any]
    metrics: dict[str, Any]


def named_after(folder: str, method: str) -> bool:
    """Whether a run's first folder names its method: `lp` does not (multitask), `pe_clip` and a
    protocol folder after it (`auformer_disfa`, `pe_clip_ferv39k`) do. The run's label adds the method
    only where it does not (`fer report`'s table, the run's name in the Prefect UI)."""
    return folder == method or folder.startswith(f"{method}_")


def find_runs(runs: Path) -> list[Run]:
    """Every finished run under `runs`: a folder with both metrics.json and config.json (so
    dvclive/ and `fer evaluate`'s eval/ folders are not runs), sorted by folder."""
    found = []
    for path in sorted(Path(runs).rglob("metrics.json")):
        if (path.parent / "config.json").is_file():
            found.append(Run(path.parent.relative_to(runs).as_posix(),
                             json.loads((path.parent / "config.json").read_text()), json.loads(path.read_text())))
    return found


def group_folds(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by experiment: the folds of a k-fold protocol (configs equal but for PER_FOLD) form one
    group, named by their folders' common prefix and fold range (auformer/fold1..3 -> auformer/fold1-3)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = run.name if run.config.get("fold") is None else json.dumps(
            {k: v for k, v in run.config.items() if k not in PER_FOLD}, sort_keys=True)
        groups.setdefault(key, []).append(run)
    named = {}
    for members in groups.values():
        names, folds = [r.name for r in members], sorted(r.config["fold"] for r in members if r.config.get("fold"))
        prefix = commonprefix(names)
        numbered = len(members) > 1 and len(folds) == len(members) and all(
            name == f"{prefix}{r.config['fold']}" for name, r in zip(names, members))
        name = names[0] if len(members) == 1 else f"{prefix}{folds[0]}-{folds[-1]}" if numbered else f"{prefix}*"
        named[name] = members
    return dict(sorted(named.items()))


def tested_on(config: Mapping[str, Any]) -> str:
    """The datasets a run's test selection names (`dataset = '...'` in test_where), or 'all'; more
    than fit a narrow column are counted ('4 datasets'), as the cross-dataset rows list them."""
    names = sorted(set(re.findall(r"\bdataset\s*=\s*'([^']+)'", config.get("test_where") or "")))
    joined = "+".join(names) or "all"
    return joined if len(joined) <= NAMES_WIDTH else f"{len(names)} datasets"


def number(value: Any) -> str:
    """A metric to 2 places (the demo's test sets have tens to hundreds of samples), or MISSING."""
    return f"{float(value):.2f}" if value is not None and math.isfinite(float(value)) else MISSING


def _stats(values: Sequence[Any]) -> tuple[float | None, float | None]:
    """Mean and population std over the folds that report a value (fold-summary's statistics)."""
    known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return (float(np.mean(known)), float(np.std(known))) if known else (None, None)


def read_cross(paths: Path | Sequence[Path] | None) -> dict[str, dict[str, Any]]:
    """The cross-dataset JSONs that exist (evaluate, cafe_cross, thesis stages), merged: {table: {run: {test set: v}}}."""
    merged: dict[str, dict[str, Any]] = {}
    for path in [paths] if isinstance(paths, Path) else paths or []:
        if path.is_file():
            for table, rows in json.loads(path.read_text()).items():
                merged.setdefault(table, {}).update(rows)
    return merged


def results_table(runs: Path, cross_dataset: Path | Sequence[Path] | None = None) -> str:
    """The markdown block: one row per experiment on its own test selection (k-fold: the mean over
    folds, and a row with the std below it), then one row per test set of the cross-dataset
    evaluation, if its JSON is given; then a legend and the AU baselines."""
    groups = group_folds(find_runs(runs))
    if not groups:
        raise FileNotFoundError(f"no finished runs under {runs} (a folder with metrics.json and config.json)")
    cross = read_cross(cross_dataset)
    keys = [k for k in COLUMNS if any(k in r.metrics for members in groups.values() for r in members)]
    rows: list[dict[str, str]] = []
    notes = []
    for name, members in groups.items():
        method = members[0].config.get("method", MISSING)
        label = name if named_after(name.split("/")[0], method) else f"{name} ({method})"
        stats = {k: _stats([r.metrics.get(k) for r in members]) for k in [*keys, *BASELINES]}
        rows.append({"run": label, "test data": tested_on(members[0].config),
                     "n": str(sum(int(r.metrics.get("n_samples", 0)) for r in members)),
                     **{COLUMNS[k]: number(stats[k][0]) for k in keys}})
        if len(members) > 1:
            rows.append({"run": f"± std over {len(members)} folds", "test data": "", "n": "",
                         **{COLUMNS[k]: number(stats[k][1]) for k in keys}})
        # keyed by folder name; emotion's tables are "uar"/"war", another task's accuracy is its "<task>/war"
        tables = {"emotion/uar": "uar", "emotion/war": "war", "age_bin/accuracy": "age_bin/war",
                  "gender/accuracy": "gender/war"}
        by_metric = {k: cross.get(t, {}).get(Path(name).name, {}) for k, t in tables.items()}
        for dataset in sorted(set().union(*by_metric.values()) - {"mean"}):
            scores = {k: by_metric[k].get(dataset) for k in by_metric}
            rows.append({"run": label, "test data": dataset, "n": MISSING,
                         **{COLUMNS[k]: number(scores.get(k)) for k in keys}})
        found = [f"{what} {number(stats[k][0])}" for k, what in BASELINES.items() if stats[k][0] is not None]
        if found:
            notes.append(f"AU F1 of label-blind predictors on {label}'s test sets: {', '.join(found)}.")
    headers = list(rows[0])
    table = tabulate([list(r.values()) for r in rows], headers, tablefmt="pipe", disable_numparse=True,
                     colalign=["left", "left", *["right"] * (len(headers) - 2)])
    return "\n\n".join([table, "\n".join(textwrap.wrap(LEGEND, 99)), *("\n".join(textwrap.wrap(n, 99)) for n in notes)])


def replace_block(path: Path, block: str) -> bool:
    """Put `block` between the BEGIN and END marker lines of the text file at `path`; written under
    a temporary name and renamed over it, so a reader sees the old or the new file, never half of
    one. Returns whether the file changed (an unchanged file is not rewritten)."""
    text = path.read_text()
    found = re.search(rf"^{re.escape(BEGIN)}\n(.*?)^{re.escape(END)}$", text, flags=re.S | re.M)
    if not found:
        raise ValueError(f"{path}: no '{BEGIN}' line followed by an '{END}' line to put the results between")
    new = text[: found.start(1)] + block.rstrip("\n") + "\n" + text[found.end(1):]
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
