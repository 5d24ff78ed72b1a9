"""Task runners: Prefect's thread pool locally, a Dask cluster for users who outgrow one machine."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner


def task_runner(kind: str = "local", address: str | None = None, workers: int = 2) -> TaskRunner:
    if kind == "local":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if not address:
            raise ValueError("--runner dask needs --address tcp://HOST:PORT of a Dask scheduler")
        return DaskTaskRunner(address=address)
    raise ValueError(f"runner {kind!r}: expected local or dask")
