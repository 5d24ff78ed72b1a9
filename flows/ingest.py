"""Prefect flow: one run per dataset. Reads the records, then `fer_data.ingest.drive` (the one drive
loop) hands chunks of about a shard's worth of frames to a task (decode, detect, align, encode:
retried on transient errors), writes shards in order and swaps the dataset into the catalog. The run's
log shows a progress line per tenth of the records and fer_data's own warnings.

Runs on Prefect's thread task runner by default, each task sending its chunk to this machine's
workers (`fer_data.ingest.local_runner`: processes for a large job), or on a Dask cluster
(`runner="dask"`, `address="tcp://host:port"`) through prefect-dask, where the task does the work
itself: the same code and the same bytes out. The runners are made once the records are read, when
`share_cores` knows whether a detector runs. On this machine a large job's first worker process
starts while the records are still read (`fer_data.ingest.EarlyStart`): those chunks are no task
runs; the run's log says how many records they held.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fer_data import catalog
from fer_data.datasets import get_adapter
from fer_data.ingest import (Chunk, IngestJob, IngestResult, LocalRunner, Processed, accounting, drive, local_runner,
                             process_chunk, start)
from fer_data.settings import SPEED_ONLY, Settings
from fer_data.shards import fingerprint
from flows.runners import run_logs, task_runner


PROGRESS_EVERY_S = 5.0  # the UI's progress artifact: at most one update this often (and 100 % at the end)
CHUNKS_PER_TASK = 4  # chunks a task run: each run is ~3 events the Prefect server records (~70 ms of its CPU)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, cache_result_in_memory=False,
      task_run_name="align-{chunks[0].split}-{chunks[0].index}")
def align_chunks(settings: Settings, chunks: list[Chunk], local: LocalRunner | None = None) -> list[Processed]:
    """Consecutive chunks: side by side on this machine's workers (`local`, processes for a large
    job), else one after another where the task runs (Dask)."""
    if local:
        return [local.result(f) for f in [local.submit(settings, chunk) for chunk in chunks]]
    return [process_chunk(settings, chunk) for chunk in chunks]


class _Handle:
    """One chunk's place in a task run of `PrefectRunner` (the run's future once it is submitted)."""

    __slots__ = ("future", "index")

    def __init__(self, index: int) -> None:
        self.future: PrefectFuture | None = None
        self.index = index


class PrefectRunner:
    """`drive`'s runner over a Prefect task runner: one `align_chunks` task run per `group` chunks in
    a row (40k FER2013 rows cost the server 4.2 s of CPU with a run per chunk, 1.8 s with four), its work on
    `local`'s workers when given (a task then waits in a thread of Prefect's pool). A group goes
    when full, or when `drive` waits for one of its chunks (a split's last). `drive`'s window holds
    three groups: a group's result comes when all its chunks are done, and with two the workers ran
    out of work while a finished group was written and the next task run started (both cores busy
    1.2-1.7 of 2 in the seconds around each; with three, 1.9-2.0)."""

    def __init__(self, runner: TaskRunner, local: LocalRunner | None, group: int) -> None:
        self.runner, self.local, self.group = runner, local, group
        self.chunks: list[Chunk] = []
        self.handles: list[_Handle] = []
        self.settings: Settings | None = None

    def submit(self, settings: Settings, chunk: Chunk) -> _Handle:
        handle = _Handle(len(self.chunks))
        self.settings = settings
        self.chunks.append(chunk)
        self.handles.append(handle)
        if len(self.chunks) == self.group:
            self._send()
        return handle

    def _send(self) -> None:
        future = self.runner.submit(align_chunks, parameters={"settings": self.settings, "chunks": self.chunks,
                                                              "local": self.local})
        for handle in self.handles:
            handle.future = future
        self.chunks, self.handles = [], []

    def result(self, handle: _Handle) -> Processed:
        if handle.future is None:
            self._send()
        return handle.future.result()[handle.index]


def _run_name(parameters: dict[str, Any]) -> str:
    settings = {k: v for k, v in parameters["settings"].items() if k not in SPEED_ONLY}
    return f"ingest-{parameters['dataset']}-{fingerprint(settings)[:10]}"


def summary_markdown(result: IngestResult, job: IngestJob) -> str:
    coverage = catalog.query(result.catalog, "SELECT * FROM task_coverage WHERE dataset = ?", [result.dataset])
    rejects = catalog.query(result.catalog, "SELECT stage, reason, n FROM reject_summary WHERE dataset = ?",
                            [result.dataset])
    balance = catalog.query(result.catalog, "SELECT split, task, label_name, n FROM class_balance WHERE dataset = ?",
                            [result.dataset])
    return "\n\n".join([
        f"# ingest {result.dataset}",
        f"**{accounting(result.rows_read, result.n_samples, result.n_rejects)}**",
        f"raw root `{job.raw_root}` → catalog `{result.catalog}`, shards `{job.shard_dir}`",
        "## task coverage", coverage.to_markdown(index=False) if len(coverage) else "(none)",
        "## class balance", balance.to_markdown(index=False) if len(balance) else "(none)",
        "## rejects", rejects.to_markdown(index=False) if len(rejects) else "(none)",
    ])


def _current_parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters)


@flow(name="ingest", flow_run_name=lambda: _run_name(_current_parameters()), log_prints=True)
def ingest_flow(dataset: str, raw_root: str, out: str = "data", settings: dict[str, Any] | None = None,
                runner: str = "local", address: str | None = None) -> dict[str, Any]:
    """Ingest one dataset: `settings` are `fer_data.ingest.Settings` fields, `runner` local threads or dask."""
    # the lock goes with the job; on this machine, workers start while the records are read (`EarlyStart`)
    with IngestJob(dataset, raw_root, out, Settings(**(settings or {})), early=runner != "dask") as job:
        workers = start(job)
        local = None if runner == "dask" else local_runner(job)
        key = f"ingest-{dataset}-progress".lower().replace("_", "-")
        progress = create_progress_artifact(progress=0.0, key=key,
                                            description=f"ingest {dataset}: records aligned and sharded")
        logger = get_run_logger()
        if job.early and job.early.n_records:
            logger.info("%s: %d records processed while the release was read", dataset, job.early.n_records)
        logged = -1  # the last tenth of the records logged
        shown_at = time.monotonic()  # when the progress artifact last changed

        with Progress(TextColumn(f"[bold]{dataset}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True) as bar, task_runner(runner, address, workers) as prefect_runner, \
                run_logs("fer_data"):
            shown = bar.add_task("ingest", total=job.n_records)

            def on_progress(done: int, total: int) -> None:
                nonlocal logged, shown_at
                bar.update(shown, completed=done)
                if time.monotonic() - shown_at >= PROGRESS_EVERY_S:  # each update is a request and an event
                    shown_at = time.monotonic()
                    update_progress_artifact(progress, 100.0 * done / max(1, total))
                if (tenth := 10 * done // max(1, total)) > logged:  # a line per 10 %: the run's log shows it
                    logged = tenth
                    logger.info("%s: %d of %d records aligned and sharded (%d %%)", dataset, done, total,
                                100 * done // max(1, total))

            try:
                group = 1 if local is None else CHUNKS_PER_TASK
                drive(job, PrefectRunner(prefect_runner, local, group), window=3 * max(workers, group),
                      on_progress=on_progress)
            finally:
                if local:
                    local.close()
            result = job.finish()
    update_progress_artifact(progress, 100.0)
    create_markdown_artifact(summary_markdown(result, job), key=f"ingest-{dataset}".lower().replace("_", "-"),
                             description=f"ingest summary of {dataset}")
    return {"dataset": result.dataset, "rows_read": result.rows_read, "n_samples": result.n_samples,
            "n_rejects": result.n_rejects, "catalog": str(result.catalog)}


def run_ingest(dataset: str, raw_root: str | Path, out: str | Path = "data", runner: str = "local",
               address: str | None = None, **settings: Any) -> dict[str, Any]:
    """The ingest flow of one dataset; `settings` are `Settings` fields. The dataset name, the raw
    root and the settings are checked before the flow starts, so a mistake is one error, not a failed run."""
    get_adapter(dataset).check_root(raw_root)
    return ingest_flow(dataset=dataset, raw_root=str(raw_root), out=str(out), settings=asdict(Settings(**settings)),
                       runner=runner, address=address)
