"""The environment `fer` runs in, in one place: tools offline and quiet (no network here, no telemetry),
one Prefect home per project (the CLI, `make ui` and `dvc repro` share one run history), and a
Prefect API that only this machine's user can drive: it listens on 127.0.0.1, asks for an auth string
kept in PREFECT_HOME (0600), and allows no cross-origin callers but its own UI.

`apply()` runs when `fer_cli` is imported, before any command imports Prefect, DVC or the hub (Prefect
reads its settings once, at import). `fer env` prints the same settings for a shell:
`eval "$(fer env)"`. `prefect_api()` gives a command that runs flows a server: the one PREFECT_API_URL
names, the project's when it answers (`make ui`), else a private one that dies with the command,
`kill -9` included (Prefect's own temporary server would outlive it, listening, with no parent)."""

from __future__ import annotations

import atexit
import base64
import ctypes
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import typer

OFFLINE_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    # Prefect's own temporary server (tests only: `fer` starts its own) needs more than its 20 s
    # default on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
HOST = "127.0.0.1"  # never 0.0.0.0: the README says how to open the UI to a team
UI_PORT = 4200  # Prefect's default; `make ui`
AUTH_FILE = "api-auth-string"  # in PREFECT_HOME, mode 0600, made once
AUTH_KEYS = ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")  # the server's, the clients'
STARTUP_S = 180  # a server start takes 10-25 s here, far more on a loaded machine
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STARTING = "FER_PREFECT_SERVER_PID"  # set by scripts/with-prefect-server: its server may still be starting

app = typer.Typer()  # `fer env`, joined into fer_cli.main's app


def project_root(start: Path | None = None) -> Path | None:
    """The fer-pipeline checkout holding `start` (default: the working directory): the nearest folder
    up with a dvc.yaml and a pyproject.toml naming fer-pipeline."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if (folder / "dvc.yaml").is_file() and pyproject.is_file():
            try:
                name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue
            if name == "fer-pipeline":
                return folder
    return None


def prefect_home() -> Path:
    """PREFECT_HOME when set, else the project's `.prefect` inside the project, else Prefect's ~/.prefect."""
    if home := os.environ.get("PREFECT_HOME"):
        return Path(home).expanduser()
    root = project_root()
    return root / ".prefect" if root else Path.home() / ".prefect"


def auth_string(home: Path) -> str:
    """The project's API auth string (`user:password`), made on first use. It is written whole under a
    staging name and linked into place, so a concurrent first run reads the winner's, never half of one."""
    path = home / AUTH_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = home / f".{AUTH_FILE}.{os.getpid()}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"fer:{secrets.token_urlsafe(24)}\n")
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip()


def ui_port() -> int:
    return int(os.environ.get("PREFECT_SERVER_API_PORT") or UI_PORT)


def settings() -> dict[str, str]:
    """What `fer` sets where the caller has not: OFFLINE_ENV, the Prefect home, and the API's guards
    (loopback host, the auth string for server and clients, CORS for the UI's own origin only)."""
    home = prefect_home()
    auth = next((os.environ[k] for k in AUTH_KEYS if os.environ.get(k)), None) or auth_string(home)
    return {
        **OFFLINE_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": HOST,
        **dict.fromkeys(AUTH_KEYS, auth),
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": f"http://{HOST}:{ui_port()}",
    }


def apply() -> None:
    """Set each variable the caller has not set itself."""
    for key, value in settings().items():
        os.environ.setdefault(key, value)


@app.command("env")
def print_env() -> None:
    """Print the settings `fer` runs with as `export` lines: `eval "$(fer env)"` gives a shell the
    project's venv, Prefect home, auth string and API guards (the auth string is read from its file)."""
    values = settings()
    home = Path(values["PREFECT_HOME"])
    root = project_root()
    where = f"the project's ({root})" if root and home == root / ".prefect" else "set by you or Prefect's default"
    lines = [f"# PREFECT_HOME={home}: {where}; fer, make ui and dvc repro share its runs"]
    venv = str(Path(sys.executable).parent)
    if venv not in os.environ.get("PATH", "").split(os.pathsep):
        lines.append(f'export PATH={shlex.quote(venv)}:"$PATH"')
    secret = home / AUTH_FILE
    for key, value in values.items():
        if key in AUTH_KEYS and secret.exists() and value == secret.read_text().strip():
            lines.append(f'export {key}="$(cat {shlex.quote(str(secret))})"')
        elif key in AUTH_KEYS:
            lines.append(f"# {key} is set in your environment (not shown)")
        else:
            lines.append(f"export {key}={shlex.quote(os.environ.get(key, value))}")
    if url := os.environ.get("PREFECT_API_URL"):
        lines.append(f"export PREFECT_API_URL={shlex.quote(url)}")
    else:
        lines.append(f"# PREFECT_API_URL unset: fer uses http://{HOST}:{ui_port()}/api when it answers (make ui), "
                     "else a private server per command")
    typer.echo("\n".join(lines))


def answers(url: str) -> bool:
    """Whether a Prefect API at `url` serves this project's clients (it accepts our auth string)."""
    request = urllib.request.Request(f"{url}/admin/version")
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def prefect_api() -> str | None:
    """Point this process's flows at a Prefect server and return its API URL: PREFECT_API_URL when set,
    else the project's server when it answers (`make ui`), else a private server started as this
    process's child. Call it from the main thread (the child's death signal follows the thread that
    started it), before Prefect is imported: Prefect reads its settings once, so a process that has
    imported it (tests calling commands in-process) keeps Prefect's own choice (None: its temporary server)."""
    if "prefect" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value()
    url = os.environ.get("PREFECT_API_URL") or f"http://{HOST}:{ui_port()}/api"
    if os.environ.get(STARTING):
        wait_for_server(url, int(os.environ[STARTING]))
    elif "PREFECT_API_URL" not in os.environ and not answers(url):
        url = start_server()
    os.environ["PREFECT_API_URL"] = url
    return url


def wait_for_server(url: str, pid: int, timeout: float = STARTUP_S) -> None:
    """Wait for the server `scripts/with-prefect-server` started (process `pid`) to answer at `url`:
    it starts beside the first stages (the sample data needs no server), so a command that runs flows
    may come before it is up. One line (exit 1) if it dies or does not answer within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not answers(url):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise SystemExit(f"error: the prefect server (pid {pid}) for {url} exited; see $PREFECT_HOME/server.log") from None
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the prefect server (pid {pid}) did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A Popen preexec_fn: the child gets SIGKILL when `parent` dies, however it dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None

    def tie() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the tie was made
            os._exit(1)

    return tie


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server() -> str:
    """A private Prefect server (no UI) on a free loopback port, on this project's database; stopped
    when this process exits and killed by the kernel if it is killed. Returns its API URL."""
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port),
                             "--no-ui"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_dies_with(os.getpid()))
    atexit.register(_stop, proc)
    url = f"http://{HOST}:{port}/api"
    deadline = time.monotonic() + STARTUP_S
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"the Prefect server on {url} did not start (exit {proc.returncode}):\n{tail}")
        time.sleep(0.5)
    return url
