"""The data commands of `fer`: datasets, sample data, ingest, the catalog (merge, sql, stats, audit), serve."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fer_cli import env
from fer_data.faces import BACKENDS, FACES
from fer_data.settings import Settings

if TYPE_CHECKING:  # pandas costs every `fer` command ~0.5 s to import: only the tables that print need it
    import pandas as pd

app = typer.Typer()  # merged into fer_cli.main's app
console = Console()

DEFAULT_CATALOG = Path("data/catalog.duckdb")
Faces = Enum("Faces", {name: name for name in FACES}, type=str)  # --faces' choices


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def print_frame(df: pd.DataFrame, title: str | None = None, fmt: Format = Format.table) -> None:
    """A DataFrame as a rich table, CSV or JSON lines on stdout."""
    import pandas as pd

    if fmt is Format.csv:
        typer.echo(df.to_csv(index=False), nl=False)
        return
    if fmt is Format.json:
        typer.echo(df.to_json(orient="records", lines=True, force_ascii=False), nl=False)
        return
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(df[col]) else "left")
    for row in df.itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and pd.isna(v)) else
                        f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


def fail(message: str) -> NoReturn:
    """A user's mistake: `fer_cli.main` prints it as one line, `error: ...`, and exits with code 2."""
    raise ValueError(message)


@app.command()
def datasets() -> None:
    """The dataset adapters and which tasks each labels."""
    from fer_data.datasets import ADAPTERS

    table = Table(title="dataset adapters")
    for col in ("name", "kind", "tasks", "description"):
        table.add_column(col)
    for name, adapter in sorted(ADAPTERS.items()):
        table.add_row(name, adapter.kind, ", ".join(adapter.tasks), adapter.description)
    console.print(table)


class Runner(str, Enum):
    local = "local"
    dask = "dask"
    none = "none"


INGEST = Settings()  # the defaults of every ingest option


@app.command()
def ingest(
    dataset: Annotated[str, typer.Argument(help="adapter name, see `fer datasets`")],
    raw_root: Annotated[Path, typer.Argument(help="the dataset's raw root, in its native layout")],
    out: Annotated[Path, typer.Option(help="output folder: catalog.duckdb, catalog/ Parquet, shards/")] = Path("data"),
    detector: Annotated[str, typer.Option(
        help=f"one of {', '.join(BACKENDS)}, or a chain such as centerface,scrfd,box: each runs only on the "
             "records the ones before it rejected. auto: the release's landmarks/box, else resize aligned "
             "releases, else centerface; box: the release's face box, else the whole image")]
    = INGEST.detector,
    faces: Annotated[Faces, typer.Option(
        help="largest: one sample per image; all: each face its own sample <id>#<k>, k=0 the largest, "
             "labels copied from the row")] = Faces(INGEST.faces),
    detector_model: Annotated[str | None, typer.Option(help="ONNX file for --detector scrfd")] = INGEST.detector_model,
    size: Annotated[int, typer.Option(help="aligned crop side (multiple of 112 or 128)")] = INGEST.size,
    segments: Annotated[int, typer.Option(help="frames sampled per clip (TSN segment centres)")] = INGEST.segments,
    sampling: Annotated[str, typer.Option(
        help="clip frames: tsn (--segments centres), fps:N, stride:K, all, keyframes (CASME II onset/apex/offset)")]
    = INGEST.sampling,
    min_face_coverage: Annotated[float, typer.Option(
        help="a detected clip whose main face track spans less of it is a reject (low_face_coverage)")]
    = INGEST.min_face_coverage,
    frame_step: Annotated[int, typer.Option(help="DISFA/BP4D: read every k-th labelled video frame")]
    = INGEST.frame_step,
    shard_samples: Annotated[int, typer.Option(help="samples per shard at most")] = INGEST.shard_samples,
    shard_mb: Annotated[int, typer.Option(help="MiB per shard at most")] = INGEST.shard_bytes // 2**20,
    workers: Annotated[int | None, typer.Option(
        help="workers, each with its own detector session: processes for a job of 5000 frames or more, else "
             "threads (default: 1 with a detector, else one per core)")]
    = INGEST.workers,
    runner: Annotated[Runner, typer.Option(
        help="local: Prefect flow on this machine; dask: Prefect flow on a Dask cluster; none: no Prefect")]
    = Runner.local,
    address: Annotated[str | None, typer.Option(help="Dask scheduler for --runner dask, tcp://HOST:PORT")] = None,
) -> None:
    """Read a raw dataset, align its faces into shards and replace its rows in the catalog (a Prefect flow run)."""
    settings = dict(detector=detector, faces=faces.value, detector_model=detector_model, size=size, segments=segments,
                    sampling=sampling, min_face_coverage=min_face_coverage, frame_step=frame_step,
                    shard_samples=shard_samples, shard_bytes=shard_mb * 2**20, workers=workers)
    Settings(**settings)  # a bad value (--sampling fps:0) is one line before anything is read
    if runner is Runner.none:
        from fer_data.ingest import ingest as run_ingest

        with Progress(TextColumn(f"[bold]{dataset}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("ingest", total=None)
            result = run_ingest(dataset, raw_root, out, **settings,
                                on_progress=lambda done, total: progress.update(task, completed=done, total=total))
        summary = result.__dict__
    else:
        from fer_data.datasets import get_adapter

        get_adapter(dataset).check_root(raw_root)  # a mistake is one line before any server starts
        env.prefect_api()
        from flows.ingest import run_ingest as run_flow

        summary = run_flow(dataset, raw_root, out, runner=runner.value, address=address, **settings)
    from fer_data.ingest import accounting

    console.print(f"[green]{summary['dataset']}[/]: "
                  f"{accounting(summary['rows_read'], summary['n_samples'], summary['n_rejects'])} -> {summary['catalog']}")


@app.command()
def merge(
    parts: Annotated[list[Path], typer.Argument(help="per-dataset catalogs: Parquet folders (data/ingest/*/catalog) or .duckdb files")],
    out: Annotated[Path, typer.Option(help="output folder of the merged catalog.duckdb and catalog/ Parquet")] = Path("data"),
    metrics: Annotated[Path, typer.Option(help="per-dataset counts as DVC metrics JSON")] = Path("metrics/catalog.json"),
    plots: Annotated[Path, typer.Option(help="folder of class balance PNGs")] = Path("metrics/plots"),
    balance: Annotated[Path, typer.Option(help="class balance CSV for dvc plots")] = Path("metrics/class_balance.csv"),
) -> None:
    """Join per-dataset catalogs (one per DVC ingest stage), audit near-duplicates, write stats (a Prefect flow)."""
    env.prefect_api()
    from flows.catalog import catalog_flow

    result = catalog_flow([str(p) for p in parts], str(out), str(metrics), str(plots), str(balance))
    console.print(f"merged {result['datasets']} datasets into {out / 'catalog.duckdb'}: {result['n_hashed']} crops "
                  f"hashed, {result['n_cross_dataset']} duplicate groups across datasets, "
                  f"{result['n_cross_split']} across splits")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL over samples, au_labels, shards, rejects and the views")],
    catalog: Annotated[Path, typer.Option(help="catalog file")] = DEFAULT_CATALOG,
    format: Annotated[Format, typer.Option(help="output format")] = Format.table,
) -> None:
    """Ask the catalog a question in SQL (read-only)."""
    from fer_data.catalog import query as run_query

    print_frame(run_query(catalog, query), fmt=format)


@app.command()
def stats(
    catalog: Annotated[Path, typer.Option(help="catalog file")] = DEFAULT_CATALOG,
    format: Annotated[Format, typer.Option(help="output format")] = Format.table,
    metrics: Annotated[Path | None, typer.Option(help="also write per-dataset counts as a DVC metrics JSON")] = None,
) -> None:
    """Task coverage, class balance, AU occurrence, rejects, detectors and face pose/quality of the catalog."""
    from fer_data.catalog import query as run_query
    from fer_data.catalog import write_counts

    sections = {
        "ingests": "SELECT dataset, rows_read, n_samples, n_rejects, accounted FROM ingest_accounting",
        "task coverage": "SELECT * FROM task_coverage",
        "class balance": "SELECT dataset, split, task, list(label_name || '=' || n ORDER BY label) AS counts "
                         "FROM class_balance GROUP BY ALL ORDER BY ALL",
        "AU occurrence": "SELECT * FROM au_occurrence",
        "rejects": "SELECT * FROM reject_summary",
        "detectors (n_rows: rows whose first sample it made; recovered: a later link of the chain)":
            "SELECT * FROM detector_summary",
        "face pose and quality": "SELECT * FROM face_quality",
    }
    results = {title: run_query(catalog, q) for title, q in sections.items()}
    if metrics:
        write_counts(catalog, metrics)
    if format is Format.json:
        typer.echo(json.dumps({t: json.loads(df.to_json(orient="records")) for t, df in results.items()}))
        return
    for title, df in results.items():
        if format is Format.csv:
            typer.echo(f"# {title}")
        if len(df) or format is Format.table:
            print_frame(df.assign(**{c: df[c].astype(str) for c in df.columns if df[c].dtype == object}),
                        title=title, fmt=format)


@app.command()
def audit(
    catalog: Annotated[Path, typer.Option(help="catalog file")] = DEFAULT_CATALOG,
    max_distance: Annotated[int, typer.Option(help="pHash bits two near-duplicates may differ in")] = 4,
) -> None:
    """Near-duplicate crops (perceptual hash): `phashes` table, `duplicates` view, and groups crossing datasets or splits."""
    from fer_data.audit import audit as run_audit
    from fer_data.catalog import query as run_query

    result = run_audit(catalog, max_distance)
    console.print(f"hashed {result.n_hashed} crops: {result.n_groups} near-duplicate groups, "
                  f"{result.n_cross_dataset} across datasets, {result.n_cross_split} across splits")
    leaks = run_query(catalog, "SELECT group_id, n, where_found, samples FROM leakage LIMIT 20")
    if len(leaks):
        print_frame(leaks.astype(str), title="groups crossing datasets or splits (first 20; SELECT * FROM leakage)")


@app.command()
def serve(
    params: Annotated[Path | None, typer.Option(
        help="params file with the `schedules:` section (default: the project's params.yaml)")] = None,
    repo: Annotated[Path | None, typer.Option(
        help="DVC project the deployments run in, fixed while serving (default: the fer-pipeline project here)")] = None,
) -> None:
    """Serve the `preprocess` and `train` deployments (cron from params.yaml) to a Prefect server (`make serve`).
    Their runs work in the one project fixed here: no run parameter names a folder."""
    project = (repo or env.project_root() or Path.cwd()).resolve()
    if not (project / "dvc.yaml").is_file():
        fail(f"{project} is not a DVC project (no dvc.yaml): run `fer serve` inside the project or give --repo")
    url = env.prefect_api()
    from flows.pipeline import serve_deployments

    console.print(f"serving preprocess/preprocess and train/train for {project} to {url or 'a temporary server'}")
    serve_deployments(project, params)


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Argument(help="folder for the raw sample datasets")],
    seed: Annotated[int, typer.Option(help="random seed: same seed, same bytes")] = 0,
) -> None:
    """Write small raw datasets in their native layouts, built from face photos shipped by installed packages."""
    from fer_data.samples.images import write_sample_data
    from fer_data.samples.video import write_video_samples

    roots = {**write_sample_data(out, seed=seed), **write_video_samples(out, seed=seed)}
    for name, root in sorted(roots.items()):
        console.print(f"{name:12s} {root}")

