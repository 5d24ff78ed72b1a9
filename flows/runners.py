"""Where the flows run and report: Prefect's thread pool locally, a Dask cluster for users who outgrow
one machine; and the library loggers whose lines a flow run's log in the UI should show."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging.handlers import APILogHandler
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


@contextmanager
def run_logs(*names: str, level: int = logging.INFO) -> Iterator[None]:
    """While the block runs, records of the loggers `names` (and below) at `level` and up go to the
    current flow or task run's log too (the UI shows them), e.g. the trainer's epoch lines. Prefect's
    extra-loggers setting would attach the handler but leave the loggers at the root's WARNING."""
    handler = APILogHandler()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(min(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(old)
