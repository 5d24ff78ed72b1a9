"""A served deployment triggered against a real Prefect server on a loopback port runs `dvc repro`
in a DVC project and its artifacts read back through the API."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 — not up yet
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout} s")


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text("stages:\n  sample_data:\n    cmd: echo faces > raw.txt\n    outs:\n      - raw.txt\n")
    return repo


@pytest.mark.slow
def test_served_preprocess_deployment_runs_and_reports(dvc_project: Path, tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = None
    try:
        wait_for(lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200, 180, "prefect server")
        served = subprocess.Popen([BIN / "fer", "serve", "--repo", str(dvc_project)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from prefect import get_client
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # Settings are cached per process: an earlier test's ephemeral API must not answer for this server.
        with temporary_settings({PREFECT_API_URL: api}):

            async def trigger():
                async with get_client() as client:
                    await client.read_deployment_by_name("preprocess/preprocess")
                    return True

            wait_for(lambda: asyncio.run(trigger()), 180, "preprocess deployment")
            run = run_deployment("preprocess/preprocess",
                                 parameters={"stages": ["sample_data"], "repo": str(dvc_project)},
                                 timeout=300, poll_interval=2)
            assert run.state.is_completed(), run.state
            assert (dvc_project / "raw.txt").read_text().strip() == "faces"

            async def artifact() -> str:
                from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

                async with get_client() as client:
                    found = await client.read_artifacts(
                        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["preprocess-repro"])))
                    return found[0].data

            assert "sample_data" in asyncio.run(artifact())
    finally:
        for proc in (served, server):
            if proc:
                proc.terminate()
                proc.wait(30)
