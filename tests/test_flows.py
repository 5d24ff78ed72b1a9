"""Prefect flows in ephemeral mode on real-format data; the Dask runner gives the same catalog as the local one."""

from __future__ import annotations

from pathlib import Path

import pytest

from fer_data import catalog
from flows.ingest import run_ingest

ROWS = "SELECT sample_id, split, emotion, shard, sha256, align_matrix FROM samples ORDER BY sample_id"


def test_ingest_flow_writes_catalog_and_artifacts(rafdb_root: Path, tmp_path: Path) -> None:
    from prefect import get_client

    summary = run_ingest("rafdb", rafdb_root, tmp_path / "out", workers=2, shard_samples=2)
    assert (summary["rows_read"], summary["n_samples"], summary["n_rejects"]) == (4, 4, 0)
    assert len(catalog.query(tmp_path / "out" / "catalog.duckdb", "SELECT * FROM shards")) == 2

    async def artifact() -> str:
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-rafdb"])))
            return found[0].data

    import asyncio

    assert "4 rows read = 4 samples + 0 rejects" in asyncio.run(artifact())


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
