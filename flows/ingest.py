"""Prefect flow: one run per dataset. Lists records, maps a task over batches (decode, detect, align,
encode: retried on transient errors), writes shards in order, swaps the dataset into the catalog.

Runs on Prefect's thread task runner by default, or on a Dask cluster (`runner="dask"`,
`address="tcp://host:port"`) through prefect-dask, with the same code and the same bytes out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fer_data.ingest import IngestJob, Settings, process_batch, share_cores
from fer_data.records import Record
from fer_data.shards import fingerprint
from flows.runners import task_runner


@task(retries=2, retry_delay_seconds=2, task_run_name="align-{split}-{index}")
def align_batch(settings: Settings, batch: list[Record], split: str, index: int) -> list:
    return process_batch(settings, batch)


def _run_name(parameters: dict[str, Any]) -> str:
    settings = {k: v for k, v in parameters.items() if k not in ("out", "runner", "address", "workers", "threads")}
    return f"ingest-{parameters['dataset']}-{fingerprint(settings)[:10]}"


def summary_markdown(result: Any, job: IngestJob) -> str:
    from fer_data import catalog

    coverage = catalog.query(result.catalog, "SELECT * FROM task_coverage WHERE dataset = ?", [result.dataset])
    rejects = catalog.query(result.catalog, "SELECT stage, reason, n FROM reject_summary WHERE dataset = ?",
                            [result.dataset])
    balance = catalog.query(result.catalog, "SELECT split, task, label_name, n FROM class_balance WHERE dataset = ?",
                            [result.dataset])
    return "\n\n".join([
        f"# ingest {result.dataset}",
        f"**{result.rows_read} rows read = {result.n_samples} samples + {result.n_rejects} rejects**",
        f"raw root `{job.raw_root}` → catalog `{result.catalog}`, shards `{job.shard_dir}`",
        "## task coverage", coverage.to_markdown(index=False) if len(coverage) else "(none)",
        "## class balance", balance.to_markdown(index=False) if len(balance) else "(none)",
        "## rejects", rejects.to_markdown(index=False) if len(rejects) else "(none)",
    ])


def _run(dataset: str, raw_root: str, out: str, settings: Settings) -> dict[str, Any]:
    with IngestJob(dataset, raw_root, out, settings) as job:  # the output lock goes with the job, errors too
        progress = create_progress_artifact(progress=0.0,
                                            key=f"ingest-{dataset}-progress".lower().replace("_", "-"),
                                            description=f"ingest {dataset}: records aligned and sharded")
        with Progress(TextColumn(f"[bold]{dataset}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True) as bar:
            shown = bar.add_task("ingest", total=job.n_records)
            for split in job.splits:
                batches = job.batches(split)
                futures: list[PrefectFuture] = [align_batch.submit(settings, b, split, i)
                                                for i, b in enumerate(batches)]
                for future in futures:  # in order: shards are written in sample order
                    job.write(split, future.result())
                    bar.update(shown, completed=job.n_done)
                    update_progress_artifact(progress, 100.0 * job.n_done / max(1, job.n_records))
                job.close(split)
        result = job.finish()
    update_progress_artifact(progress, 100.0)
    create_markdown_artifact(summary_markdown(result, job), key=f"ingest-{dataset}".lower().replace("_", "-"),
                             description=f"ingest summary of {dataset}")
    return {"dataset": result.dataset, "rows_read": result.rows_read, "n_samples": result.n_samples,
            "n_rejects": result.n_rejects, "catalog": str(result.catalog)}


@flow(name="ingest", flow_run_name=lambda: _run_name(_current_parameters()), log_prints=True)
def ingest_flow(dataset: str, raw_root: str, out: str = "data", detector: str = "auto", size: int = 224,
                quality: int = 95, shard_samples: int = 1000, shard_mb: int = 256, batch_size: int = 16,
                detector_model: str | None = None, segments: int = 16, threads: int = 1) -> dict[str, Any]:
    """Ingest one dataset (the task runner is chosen by `run_ingest`)."""
    settings = Settings(detector=detector, size=size, quality=quality, shard_samples=shard_samples,
                        shard_bytes=shard_mb * 2**20, batch_size=batch_size, detector_model=detector_model,
                        segments=segments, threads=threads)
    return _run(dataset, raw_root, out, settings)


def _current_parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters)


def run_ingest(dataset: str, raw_root: str | Path, out: str | Path = "data", runner: str = "local",
               address: str | None = None, workers: int | None = None, **options: Any) -> dict[str, Any]:
    """Run the ingest flow on the chosen task runner (local threads or a Dask cluster).

    Workers and detector threads as in `fer_data.ingest.share_cores`; before the records are read,
    `detector="auto"` counts as needing a detector.
    """
    workers, threads = share_cores(workers, options.get("detector") != "none")
    options.setdefault("threads", threads)
    configured = ingest_flow.with_options(task_runner=task_runner(runner, address, workers))
    return configured(dataset=dataset, raw_root=str(raw_root), out=str(out), **options)
