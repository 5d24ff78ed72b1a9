"""Prefect flow of the catalog stage: merge per-dataset catalogs, audit near-duplicates, write the
stats DVC tracks (counts as metrics, class balance as CSV + PNG) and a summary artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from fer_data import catalog
from fer_data.audit import audit
from fer_models.plots import plot_to


@task
def merge_parts(parts: list[str], out: Path) -> Path:
    """Exactly the parts' datasets in out/catalog (Parquet) and its index out/catalog.duckdb, built aside
    and swapped in: an interrupted merge leaves the previous catalog, and out's own catalog may be a part."""
    path = out / "catalog.duckdb"
    catalog.merge(parts, path, fresh=True)
    return path


@task
def audit_catalog(path: Path) -> dict[str, int]:
    return audit(path).__dict__


def plot_class_balance(path: Path, plots: Path, csv: Path) -> None:
    """The class balance as CSV (for dvc plots) and one PNG bar chart per task. Classes keep their
    label-id order (age bins by age, emotions in the catalog's order), never the order of their names."""
    plots.mkdir(parents=True, exist_ok=True)
    df = catalog.query(path, "SELECT dataset, task, label, label_name, CAST(sum(n) AS BIGINT) AS n FROM class_balance "
                             "GROUP BY dataset, task, label, label_name ORDER BY dataset, task, label")
    df.drop(columns="label").to_csv(csv, index=False)
    for task_name, part in df.groupby("task"):
        classes = list(dict.fromkeys(part.sort_values("label")["label_name"]))
        table = part.pivot_table(index="dataset", columns="label_name", values="n", fill_value=0)[classes]
        with plot_to(plots / f"class_balance_{task_name}.png", (7, 0.35 * len(table) + 1.5)) as ax:
            table.plot.barh(stacked=True, ax=ax, title=f"class balance: {task_name} (all splits)")
            ax.legend(fontsize=6, ncol=3)


@flow(name="catalog", flow_run_name="catalog-{out}")
def catalog_flow(parts: list[str], out: str = "data", metrics: str = "metrics/catalog.json",
                 plots: str = "metrics/plots", balance: str = "metrics/class_balance.csv") -> dict[str, Any]:
    out_dir = Path(out)
    path = merge_parts(parts, out_dir)
    found = audit_catalog(path)
    counts = catalog.write_counts(path, metrics)
    plot_class_balance(path, Path(plots), Path(balance))
    leaks = catalog.query(path, "SELECT group_id, n, where_found FROM leakage LIMIT 20")
    create_markdown_artifact("\n\n".join([
        f"# catalog `{path}`",
        "## rows read = samples + rejects", counts.to_markdown(index=False),
        f"## leakage audit\n{found}", leaks.astype(str).to_markdown(index=False) if len(leaks) else "(none)",
    ]), key="catalog", description="merged catalog: counts and leakage")
    return {"datasets": len(counts), **found}
