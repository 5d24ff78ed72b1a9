"""Prefect flow of the catalog stage: merge per-dataset catalogs, audit near-duplicates, write the
stats DVC tracks (counts as metrics, class balance as CSV + PNG) and a summary artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from fer_data import catalog
from fer_data.audit import audit


@task
def merge_parts(parts: list[str], out: Path) -> Path:
    path = out / "catalog.duckdb"
    path.unlink(missing_ok=True)  # derived: rebuilt whole from its parts
    catalog.merge(parts, path)
    catalog.export_parquet(path, out / "catalog")
    return path


@task
def audit_catalog(path: Path) -> dict[str, int]:
    return audit(path).__dict__


def plot_class_balance(path: Path, plots: Path, csv: Path) -> None:
    """The class balance as CSV (for dvc plots) and one PNG bar chart per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    df = catalog.query(path, "SELECT dataset, task, label_name, sum(n) AS n FROM class_balance GROUP BY ALL ORDER BY ALL")
    df.to_csv(csv, index=False)
    for task_name, part in df.groupby("task"):
        table = part.pivot_table(index="dataset", columns="label_name", values="n", fill_value=0)
        ax = table.plot.barh(stacked=True, figsize=(7, 0.35 * len(table) + 1.5), title=f"class balance: {task_name}")
        ax.legend(fontsize=6, ncol=3)
        ax.figure.tight_layout()
        ax.figure.savefig(plots / f"class_balance_{task_name}.png", dpi=100)
        plt.close(ax.figure)


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
