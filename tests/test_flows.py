"""Prefect flows in ephemeral mode on real-format data: what the UI shows of a run (its name, its log
lines, its artifacts, read back from the API); the Dask runner gives the same catalog as the local one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import write_fairface
from fer_data import catalog
from fer_data.ingest import ingest
from fer_models.config import TrainConfig
from flows.ingest import run_ingest
from flows.train import run_label, run_train

ROWS = "SELECT sample_id, split, emotion, shard, sha256, align_matrix FROM samples ORDER BY sample_id"


def latest_run(flow_name: str) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> Any:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=1)
            return runs[0]

    return asyncio.run(read())


def run_log(run_id: Any, expected: str, timeout: float = 60) -> str:
    """The run's log as the UI shows it, once `expected` is in it (log lines reach the API in batches)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> str:
        async with get_client() as client:
            found = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return "\n".join(log.message for log in found)

    deadline = time.monotonic() + timeout
    while expected not in (text := asyncio.run(read())) and time.monotonic() < deadline:
        time.sleep(1)
    return text


def artifact(key: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return found[0].data if found else ""

    return asyncio.run(read())


def test_ingest_flow_writes_catalog_artifacts_and_progress(rafdb_root: Path, tmp_path: Path) -> None:
    """The flow with its chunks in worker processes (a large job's way; a small one gets threads)."""
    summary = run_ingest("rafdb", rafdb_root, tmp_path / "out", workers=2, shard_samples=2, processes=True)
    assert (summary["rows_read"], summary["n_samples"], summary["n_rejects"]) == (4, 4, 0)
    assert len(catalog.query(tmp_path / "out" / "catalog.duckdb", "SELECT * FROM shards")) == 2
    assert "4 rows read = 4 samples + 0 rejects" in artifact("ingest-rafdb")
    run = latest_run("ingest")
    assert run.name.startswith("ingest-rafdb-")
    assert "rafdb: 4 of 4 records aligned and sharded (100 %)" in run_log(run.id, "(100 %)")


def test_train_run_shows_its_epochs_and_reports_under_its_own_key(tmp_path: Path) -> None:
    root = tmp_path / "fairface"
    write_fairface(root, {"train": 8, "val": 4})
    ingest("fairface", root, tmp_path / "data", detector="none", size=112, shard_samples=8)
    cfg = TrainConfig(catalog=str(tmp_path / "data" / "catalog.duckdb"), backbone="pe-core-tiny-test", image_size=32,
                      tasks=["age_bin", "gender"], test_where="split = 'val'", epochs=2, batch_size=4, peft="lora",
                      rank=4, out=str(tmp_path / "runs" / "lora"))
    assert "gender/accuracy" in run_train(cfg)
    run = latest_run("train-run")
    assert run.name == "train-multitask-lora"
    log = run_log(run.id, "epoch 2:")
    assert "epoch 1:" in log and "epoch 2:" in log
    assert "gender/accuracy" in artifact("metrics-multitask-lora")


def test_each_run_reports_under_its_own_key() -> None:
    pe_clip = [TrainConfig(method="pe_clip", fold=k, out=f"runs/pe_clip/fold{k}") for k in range(1, 6)]
    pe_clip.append(TrainConfig(method="pe_clip", out="runs/pe_clip_ferv39k"))
    labels = [run_label(cfg) for cfg in pe_clip]
    assert labels[0] == "pe-clip-fold1" and labels[-1] == "pe-clip-ferv39k"
    assert run_label(TrainConfig(method="auformer", out="runs/auformer_disfa/fold2")) == "auformer-disfa-fold2"
    assert run_label(TrainConfig(method="cafe", out="runs/cafe/rafdb")) == "cafe-rafdb"
    assert len(set(labels)) == 6 and not any("lp" in label.split("-") for label in labels)
    multitask = [run_label(TrainConfig(peft=peft, out=f"runs/{peft}")) for peft in ("lp", "lora")]
    assert multitask == ["multitask-lp", "multitask-lora"]


@pytest.mark.slow
def test_dask_runner_gives_the_same_catalog(rafdb_root: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    run_ingest("rafdb", rafdb_root, tmp_path / "local", workers=2, shard_samples=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster:
        run_ingest("rafdb", rafdb_root, tmp_path / "dask", runner="dask", address=cluster.scheduler_address,
                   shard_samples=2)
    local = catalog.query(tmp_path / "local" / "catalog.duckdb", ROWS)
    dask = catalog.query(tmp_path / "dask" / "catalog.duckdb", ROWS)
    assert local.equals(dask)
    assert [p.read_bytes() for p in sorted((tmp_path / "local" / "shards").rglob("*.tar"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "dask" / "shards").rglob("*.tar"))]
