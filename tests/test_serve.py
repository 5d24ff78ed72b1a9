"""The Prefect API as the project starts it, and the deployments `fer serve` serves to it: a real server
on a loopback port (one per module, started by scripts/with-prefect-server in its own Prefect home),
a tiny DVC project, and the settings `fer env` gives a shell."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fer_cli.env import AUTH_FILE, AUTH_KEYS

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
FOREIGN = "http://evil.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except Exception as err:  # noqa: BLE001 — not up yet
            error = err
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s (last error: {error!r})")


def shell_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell: the venv on PATH, no Prefect settings but the home (fer derives the rest)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*AUTH_KEYS, "PREFECT_API_URL", "PREFECT_SERVER_CORS_ALLOWED_ORIGINS", "PREFECT_SERVER_API_HOST")}
    return {**env, "PREFECT_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}", **extra}


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets the process `pid` or its descendants listen on."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            found += [(c.laddr.ip, c.laddr.port) for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return found


def server_pids(pid: int) -> list[int]:
    root = psutil.Process(pid)
    return [p.pid for p in root.children(recursive=True) if listening(p.pid)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def request(url: str, method: str = "POST", origin: str | None = None, auth: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if origin:
        req.add_header("Origin", origin)
    if auth:
        req.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


class Server:
    def __init__(self, home: Path, port: int, proc: subprocess.Popen) -> None:
        self.home, self.port, self.proc = home, port, proc
        self.api = f"http://127.0.0.1:{port}/api"

    @property
    def auth(self) -> str:
        return (self.home / AUTH_FILE).read_text().strip()


def start_project_server(home: Path, *command: str) -> tuple[subprocess.Popen, int]:
    """scripts/with-prefect-server running `command`, in its own session (teardown kills the group)."""
    port = free_port()
    proc = subprocess.Popen([REPO / "scripts" / "with-prefect-server", *command], cwd=REPO,
                            env=shell_env(home, PREFECT_SERVER_API_PORT=str(port)), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-home")
    proc, port = start_project_server(home, "sleep", "3600")
    server = Server(home, port, proc)
    try:
        wait_for(lambda: request(f"{server.api}/health", method="GET")[0] == 200, 300, "prefect server")
        yield server
    finally:
        stop(proc)


def write_project(repo: Path, cmd: str) -> Path:
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(json.dumps({"stages": {"sample_data": {"cmd": cmd, "outs": ["raw.txt"]}}}))
    (repo / "params.yaml").write_text("schedules: {}\n")
    return repo


@pytest.mark.slow
def test_api_is_loopback_only_and_refuses_foreign_unauthenticated_callers(server: Server) -> None:
    status, headers, _ = request(f"{server.api}/deployments/filter", origin=FOREIGN)
    assert status == 401
    assert "access-control-allow-origin" not in headers
    assert stat.S_IMODE((server.home / AUTH_FILE).stat().st_mode) == 0o600
    addresses = listening(server.proc.pid)
    assert addresses and {ip for ip, _ in addresses} == {"127.0.0.1"}
    status, headers, _ = request(f"{server.api}/deployments/filter", method="OPTIONS", origin=FOREIGN,
                                 headers={"Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in headers  # the browser blocks a foreign page's call

    ui = f"http://127.0.0.1:{server.port}"
    status, headers, body = request(f"{server.api}/deployments/filter", origin=ui, auth=server.auth)
    assert status == 200 and json.loads(body) == []
    assert headers.get("access-control-allow-origin") == ui  # the UI's own origin, never *


@pytest.mark.slow
def test_served_deployment_streams_dvc_and_takes_no_folder(server: Server, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", "echo first-line && sleep 10 && echo faces > raw.txt")
    elsewhere = write_project(tmp_path / "elsewhere", "touch ../PWNED && echo x > raw.txt")
    env = shell_env(server.home, PREFECT_API_URL=server.api)
    served = subprocess.Popen([BIN / "fer", "serve", "--repo", str(project)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    async def deployment_id():
        async with get_client() as client:
            return (await client.read_deployment_by_name("preprocess/preprocess")).id

    async def flow_run(run_id):
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    async def logs(run_id) -> str:
        async with get_client() as client:
            found = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return "\n".join(log.message for log in found)

    try:
        # Settings are read once per process: this server, not the tests' own, answers in the block.
        with temporary_settings({PREFECT_API_URL: server.api, PREFECT_API_AUTH_STRING: server.auth}):
            wait_for(lambda: asyncio.run(deployment_id()), 300, "preprocess deployment")
            # The README's command, in a shell set up by `fer env`:
            cli = subprocess.run(["bash", "-c", 'eval "$(fer env)" && prefect deployment run preprocess/preprocess '
                                  '--params \'{"stages": ["sample_data"]}\''], env=env, capture_output=True,
                                 text=True, timeout=300)
            assert cli.returncode == 0, cli.stdout + cli.stderr
            run_id = next(line.split()[-1] for line in cli.stdout.splitlines() if "UUID:" in line)
            # Streamed: DVC's first line is in the run's log while the stage still runs.
            wait_for(lambda: "first-line" in asyncio.run(logs(run_id)), 300, "the first streamed line")
            assert not asyncio.run(flow_run(run_id)).state.is_final()
            run = wait_for(lambda: (r := asyncio.run(flow_run(run_id))).state.is_final() and r, 300, "the run")
            assert run.state.is_completed(), run.state
            assert run.name == "preprocess-sample_data"
            assert (project / "raw.txt").read_text().strip() == "faces"
            assert "Running stage 'sample_data'" in asyncio.run(logs(run_id))

            async def artifact() -> str:
                async with get_client() as client:
                    found = await client.read_artifacts(
                        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["preprocess-repro"])))
                    return found[0].data

            assert "sample_data" in asyncio.run(artifact())

            # A caller cannot point a run at another folder: no `repo`, and stages must be the project's.
            async def create(parameters: dict[str, Any]):
                async with get_client() as client:
                    return await client.create_flow_run_from_deployment(await deployment_id(), parameters=parameters)

            for parameters in ({"repo": str(elsewhere)}, {"stages": [str(elsewhere / "dvc.yaml")]}):
                try:
                    attempt = asyncio.run(create(parameters))
                except Exception as err:  # noqa: BLE001 — refused when created: the point
                    assert "409" in str(err) or "422" in str(err), err
                    continue
                ended = wait_for(lambda: (r := asyncio.run(flow_run(attempt.id))).state.is_final() and r, 300,
                                 "the refused run")
                assert not ended.state.is_completed(), parameters
            assert not (tmp_path / "PWNED").exists()
            assert not (elsewhere / "raw.txt").exists()
    finally:
        served.terminate()
        served.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("starts", ["script", "fer"])
def test_kill_9_takes_the_server_down(starts: str, tmp_path: Path) -> None:
    """scripts/with-prefect-server's server, and the private one `fer` starts without PREFECT_API_URL,
    die with their parent: no server left listening with no parent."""
    if starts == "script":
        proc, _ = start_project_server(tmp_path / "home", "sleep", "3600")
    else:
        project = write_project(tmp_path / "project", "echo faces > raw.txt")
        proc = subprocess.Popen([BIN / "fer", "serve", "--repo", str(project)], cwd=project,
                                env=shell_env(tmp_path / "home", PREFECT_SERVER_API_PORT=str(free_port())),
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers = wait_for(lambda: server_pids(proc.pid), 300, "the server")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: all(gone(pid) for pid in servers), 10, "the server's end")
    finally:
        stop(proc, signal.SIGKILL)  # whatever a failing case left in the group


def test_fer_env_gives_a_shell_the_project_settings(tmp_path: Path) -> None:
    project = tmp_path / "checkout"
    (project / "sub" / "dir").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "pyproject.toml").write_text('[project]\nname = "fer-pipeline"\n')
    env = {k: v for k, v in shell_env(tmp_path).items() if k != "PREFECT_HOME"}
    env["HOME"] = str(tmp_path / "user")
    show = 'eval "$(fer env)" && echo "$PREFECT_HOME|$PREFECT_API_AUTH_STRING|$PREFECT_SERVER_API_AUTH_STRING|' \
           '$PREFECT_SERVER_API_HOST|$PREFECT_SERVER_CORS_ALLOWED_ORIGINS"'

    def shell(cwd: Path) -> list[str]:
        out = subprocess.run(["bash", "-c", show], cwd=cwd, env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip().split("|")

    home, client, server, host, origins = shell(project / "sub" / "dir")
    assert home == str(project / ".prefect")
    secret = project / ".prefect" / AUTH_FILE
    assert client == server == secret.read_text().strip() and len(client) > 20
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (host, origins) == ("127.0.0.1", "http://127.0.0.1:4200")
    assert shell(project)[:3] == [home, client, server]  # made once
    # what `fer` itself runs with (set when fer_cli is imported)
    imported = subprocess.run([sys.executable, "-c", "import fer_cli, os; print(os.environ['PREFECT_HOME'])"],
                              cwd=project / "sub", env=env, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == home
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert shell(outside)[0] == str(tmp_path / "user" / ".prefect")  # outside a project: Prefect's default


def test_tests_use_their_own_prefect_home() -> None:
    from prefect.settings import get_current_settings

    from conftest import PREFECT_HOME

    home = get_current_settings().home.resolve()
    assert home == PREFECT_HOME.resolve() and not home.is_relative_to(REPO)
    assert os.environ["PREFECT_HOME"] == str(PREFECT_HOME)


def test_a_command_waits_for_the_server_the_script_is_still_starting(tmp_path: Path) -> None:
    """`make demo` starts its server beside the first stages: a flow command waits for it to answer,
    and says so in one line when the server process died instead."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from fer_cli.env import wait_for_server

    class Version(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/api/admin/version" else 404)
            self.end_headers()
            self.wfile.write(b'"3"')

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    starting = subprocess.Popen(["sleep", "60"])  # stands in for the server's process
    servers: list[HTTPServer] = []

    def answer_later() -> None:
        time.sleep(1.5)
        servers.append(HTTPServer(("127.0.0.1", port), Version))
        servers[0].serve_forever()

    threading.Thread(target=answer_later, daemon=True).start()
    try:
        began = time.monotonic()
        wait_for_server(url, starting.pid, timeout=30)
        assert 1.4 < time.monotonic() - began < 20
    finally:
        starting.kill()
        starting.wait()
        if servers:
            servers[0].shutdown()
    with pytest.raises(SystemExit, match=f"pid {starting.pid}.*exited"):
        wait_for_server(f"http://127.0.0.1:{free_port()}/api", starting.pid, timeout=30)
