"""Prefect flow of the evaluate stage: every trained run on every dataset's test split, as the
train x test generalisation table CAFE-style papers report (emotion UAR and WAR), with artifacts."""

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

TEST_WHERE = "dataset = {dataset} AND split = 'test' AND kind = 'image' AND emotion IS NOT NULL"


@task
def score_run(run: str, datasets: list[str]) -> list[tuple[str, str, Any, Any]]:
    """(run, test dataset, y_true, y_pred) of one trained run on each dataset's test split."""
    cfg, model = load_run(run)
    device = next(model.parameters()).device
    out = []
    for dataset in datasets:
        try:
            urls, ids = select(cfg.catalog, TEST_WHERE.format(dataset=sql_string(dataset)))
        except ValueError:
            continue  # no labelled test images in this dataset
        with cpu_threads(cfg.threads):  # as in training: the same numbers on every machine
            result = evaluate(model, urls, ids, cfg, device)
        out.append((Path(run).name, dataset, result.y_true["emotion"], result.y_score["emotion"].argmax(axis=1)))
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
def evaluate_flow(runs: list[str], datasets: list[str], out: str = "metrics/cross_dataset") -> dict[str, Any]:
    scored = [row for run in runs for row in score_run(run, datasets)]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {m: cross_dataset_eval(scored, metric=m, mean_column=True) for m in ("uar", "war")}
    summary = {m: json.loads(t.to_json(orient="index")) for m, t in tables.items()}
    (out_dir.parent / f"{out_dir.name}.json").write_text(json.dumps(summary, indent=2))
    for m, table in tables.items():
        table.to_csv(out_dir / f"emotion_{m}.csv")
        plot_matrix(table.drop(columns="mean"), out_dir / f"emotion_{m}.png", f"emotion {m.upper()}: run x test set")
    create_markdown_artifact("\n\n".join(f"## emotion {m.upper()} (rows: run, columns: test set)\n"
                                         + t.round(3).to_markdown() for m, t in tables.items()),
                             key="cross-dataset", description="every run on every test set")
    return summary
