"""`fer repro`: `dvc repro` with independent stages run side by side.

DVC runs one stage at a time, but its locks allow more: the repository lock is released while a
stage's command runs, and a stage holds read locks on its dependencies and write locks on its
outputs. So this runs `dvc --wait-for-lock repro --single-item STAGE` for every stage that is stale
or downstream of a stale one, as soon as the stages it depends on have finished, up to `jobs` at
once, and ends with a plain `dvc repro`, which finds nothing left to do unless a stage's command
changed the pipeline. DVC still decides whether each stage runs (a stage whose upstream rewrote the
same bytes is skipped) and writes dvc.lock, one stage at a time under its repository lock.
Why: the demo's training runs each use one core (`threads: 1`: the same weights on every machine),
so on N cores N of them run at once in the time of one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Queue
from typing import Annotated

import networkx as nx
import typer

app = typer.Typer()  # merged into fer_cli.main's app
DVC = [sys.executable, "-m", "dvc"]


def plan(graph: nx.DiGraph, stale: set[str], targets: set[str] | None = None) -> dict[str, set[str]]:
    """The stages to run, each with the stages among them it waits for. `graph` has an edge from each
    stage to each stage it depends on; a stage runs when it is stale or depends, at any distance, on
    one that is; `targets` (None: every stage) limits the run to them and what they depend on."""
    run = set(stale)
    for stage in stale:
        run |= nx.ancestors(graph, stage)  # the stages that depend on it
    if targets is not None:
        run &= targets.union(*(nx.descendants(graph, t) for t in targets))
    return {stage: set(graph.successors(stage)) & run for stage in run}


def launch_order(waits: dict[str, set[str]], order: list[str]) -> list[str]:
    """The stages by priority: the longest chain of stages waiting on them first (a critical path
    counted in stages), then the most stages waiting on them at any distance (a stage that unblocks
    two runs before one that unblocks a summary), then `order` (dvc.yaml's)."""
    graph = nx.DiGraph([(s, d) for s, deps in waits.items() for d in deps])  # stage -> what it waits for
    graph.add_nodes_from(waits)
    height: dict[str, int] = {}
    for stage in nx.topological_sort(graph):  # the stages waiting on a stage come before it
        height[stage] = 1 + max((height[t] for t in graph.predecessors(stage)), default=0)
    return sorted(waits, key=lambda s: (-height[s], -len(nx.ancestors(graph, s)), order.index(s)))


def _pipeline(targets: list[str]) -> tuple[dict[str, set[str]], list[str]]:
    from dvc.repo import Repo  # ~1 s of imports: only for this command

    with Repo() as repo:
        graph = nx.relabel_nodes(repo.index.graph, lambda stage: stage.addressing)
        order = [stage.addressing for stage in repo.index.stages]
        unknown = [t for t in targets if t not in graph]
        if unknown:
            raise ValueError(f"no stage {', '.join(unknown)} in this pipeline (dvc stage list names them)")
        stale = set(repo.status())
    return plan(graph, stale, set(targets) if targets else None), order


def _run(stage: str, done: Queue, echo: threading.Lock) -> None:
    """One stage's `dvc repro`, its output line by line under the stage's name; (stage, code) when done."""
    start = time.monotonic()
    proc = subprocess.Popen([*DVC, "--wait-for-lock", "repro", "--single-item", stage], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        with echo:
            sys.stdout.write(f"[{stage}] {line}")
            sys.stdout.flush()
    code = proc.wait()
    with echo:
        print(f"[{stage}] {'done' if code == 0 else f'FAILED (exit {code})'} in {time.monotonic() - start:.0f} s",
              flush=True)
    done.put((stage, code))


@app.command()
def repro(
    targets: Annotated[list[str] | None, typer.Argument(help="stages to bring up to date (default: all)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=0, help="stages at once (0: one per core)")] = 0,
) -> None:
    """`dvc repro`, with stages that do not depend on each other run side by side (--jobs at once)."""
    if not Path("dvc.yaml").is_file():
        raise FileNotFoundError("no dvc.yaml here: run fer repro in the pipeline's folder")
    jobs = jobs or os.cpu_count() or 1
    waits, order = _pipeline(targets or [])
    queue = launch_order(waits, order)
    typer.echo(f"fer repro: {len(queue)} stage(s) to check or run, {jobs} at once")
    done: Queue = Queue()
    echo = threading.Lock()
    running: set[str] = set()
    finished: set[str] = set()
    failed: list[str] = []
    while queue or running:
        ready = [s for s in queue if waits[s] <= finished] if not failed else []
        for stage in ready[:jobs - len(running)]:
            queue.remove(stage)
            running.add(stage)
            threading.Thread(target=_run, args=(stage, done, echo), daemon=True).start()
        if not running:
            break
        stage, code = done.get()
        running.discard(stage)
        if code == 0:
            finished.add(stage)
        else:
            failed.append(stage)
    if failed:
        typer.echo(f"error: stage {', '.join(failed)} failed (its output above); {len(queue)} stage(s) not run",
                   err=True)
        raise typer.Exit(code=1)
    code = subprocess.call([*DVC, "repro", *(targets or [])])  # nothing left to do, or what a command changed
    raise typer.Exit(code=code)
