"""Prefect flow of the cross-dataset stages: every trained run on every named test set, as the
train x test generalisation tables CAFE-style papers report (UAR and WAR per task; for age and
gender, UAR is the thesis' balanced accuracy), with artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from fer_data.catalog import sql_string
from fer_data.loaders import select
from fer_models.evaluate import evaluate
from fer_models.metrics import cross_dataset_eval
from fer_models.plots import plot_to
from fer_models.train import cpu_threads, load_run

SPLITS = ("test", "val", "train", "all")


def test_set(spec: str) -> tuple[str, str | None]:
    """'rafdb' -> ('rafdb', None): its test split, or its val split when it has no labelled test split
    (SFEW withholds its test labels; papers report its val split); 'utkface:all' -> every split."""
    dataset, _, split = spec.partition(":")
    if split and split not in SPLITS:
        raise ValueError(f"test set {spec!r}: the split after ':' is one of {', '.join(SPLITS)}")
    return dataset, split or None


def selection(dataset: str, split: str, tasks: list[str]) -> str:
    labelled = " OR ".join(f"{t} IS NOT NULL" for t in tasks)
    where = f"dataset = {sql_string(dataset)} AND kind = 'image' AND ({labelled})"
    return where if split == "all" else f"{where} AND split = {sql_string(split)}"


def table_key(task: str, metric: str) -> str:
    """The summary's key of a task's table: emotion's are plain 'uar' / 'war', the others 'age_bin/uar' ..."""
    return metric if task == "emotion" else f"{task}/{metric}"


@task
def score_run(run: str, test_sets: list[str], tasks: list[str]) -> list[tuple[str, str, str, Any, Any]]:
    """(task, run, test set, y_true, y_pred) of one trained run on each test set, for the tasks it has."""
    cfg, model = load_run(run)
    device = next(model.parameters()).device
    tasks = [t for t in tasks if t in model.tasks]
    out = []
    for spec in test_sets:
        dataset, split = test_set(spec)
        for candidate in [split] if split else ["test", "val"]:
            try:
                urls, ids = select(cfg.catalog, selection(dataset, candidate, tasks))
                break
            except ValueError:
                urls = None  # no labelled images in this split
        if urls is None:
            continue
        with cpu_threads(cfg.threads):  # as in training: the same numbers on every machine
            result = evaluate(model, urls, ids, cfg, device)
        for t in tasks:
            if (result.y_true[t] >= 0).any():
                out.append((t, Path(run).name, dataset, result.y_true[t], result.y_score[t].argmax(axis=1)))
    return out


def plot_matrix(table, path: Path, title: str) -> None:
    with plot_to(path, (1.2 + 0.8 * table.shape[1], 1 + 0.5 * table.shape[0])) as ax:
        ax.imshow(table.values, cmap="viridis", vmin=0, vmax=1)
        ax.set(xticks=range(table.shape[1]), yticks=range(table.shape[0]), title=title, xlabel="test", ylabel="run")
        ax.set_xticklabels(table.columns, rotation=45, ha="right")
        ax.set_yticklabels(table.index)
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                ax.text(j, i, f"{table.values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")


@flow(name="evaluate", flow_run_name="evaluate-{out}")
def evaluate_flow(runs: list[str], datasets: list[str], out: str = "metrics/cross_dataset",
                  tasks: tuple[str, ...] = ("emotion",)) -> dict[str, Any]:
    """`datasets`: test sets as `test_set` reads them. OUT.json: {table_key(task, metric): {run: {test set:
    value, ..., mean}}}; OUT/<task>_<metric>.csv and .png."""
    scored = [row for run in runs for row in score_run(run, datasets, list(tasks))]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {(t, m): cross_dataset_eval([row[1:] for row in scored if row[0] == t], metric=m, mean_column=True)
              for t in tasks if any(row[0] == t for row in scored) for m in ("uar", "war")}
    summary = {table_key(t, m): json.loads(table.to_json(orient="index")) for (t, m), table in tables.items()}
    (out_dir.parent / f"{out_dir.name}.json").write_text(json.dumps(summary, indent=2))
    for (t, m), table in tables.items():
        table.to_csv(out_dir / f"{t}_{m}.csv")
        plot_matrix(table.drop(columns="mean"), out_dir / f"{t}_{m}.png", f"{t} {m.upper()}: run x test set")
    create_markdown_artifact("\n\n".join(f"## {t} {m.upper()} (rows: run, columns: test set)\n"
                                         + table.round(3).to_markdown() for (t, m), table in tables.items()),
                             key=f"cross-dataset-{out_dir.name.replace('_', '-')}", description="every run on every test set")
    return summary
