"""`fer repro` on a real DVC project: independent stages overlap, a stage starts only after the stages
it depends on, only stale stages and those downstream of them run, DVC ends up clean, and a failing
stage stops what waits on it with one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import yaml

from fer_cli.repro import launch_order, plan

# A stage: record when it ran, fail if asked to, write its output from its inputs.
STAMP = """\
import json, sys, time
from pathlib import Path
name, log, pause, *inputs = sys.argv[1:]
start = time.time()
if Path(name + ".fail").exists():
    sys.exit(3)
time.sleep(float(pause))
Path(name + ".txt").write_text(name + "".join(Path(i).read_text() for i in inputs))
with open(log, "a") as f:
    f.write(json.dumps({"stage": name, "start": start, "end": time.time()}) + "\\n")
"""


def stage(name: str, pause: float, inputs: list[str], log: Path) -> dict:
    return {"cmd": f"{sys.executable} stamp.py {name} {log} {pause} {' '.join(inputs)}",
            "deps": ["stamp.py", *inputs], "outs": [f"{name}.txt"]}


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    from dvc.repo import Repo

    root, log = tmp_path / "project", tmp_path / "ran.jsonl"
    root.mkdir()
    (root / "stamp.py").write_text(STAMP)
    (root / "input.cfg").write_text("a\n")
    (root / "right.cfg").write_text("1\n")
    stages = {"source": stage("source", 0, ["input.cfg"], log),
              "left": stage("left", 2, ["source.txt"], log),
              "right": stage("right", 2, ["source.txt", "right.cfg"], log),
              "join": stage("join", 0, ["left.txt", "right.txt"], log)}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    Repo.init(root, no_scm=True)
    return root, log


def fer_repro(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_cli.main", "repro", "--jobs", "2"], cwd=root,
                          capture_output=True, text=True, timeout=300)


def runs(log: Path) -> dict[str, dict]:
    return {r["stage"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}


def dvc_status(root: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_independent_stages_overlap_and_dependents_wait(project: tuple[Path, Path]) -> None:
    root, log = project
    done = fer_repro(root)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = runs(log)
    assert set(ran) == {"source", "left", "right", "join"}
    left, right = ran["left"], ran["right"]
    assert left["start"] < right["end"] and right["start"] < left["end"], "left and right did not overlap"
    assert ran["source"]["end"] <= min(left["start"], right["start"])
    assert ran["join"]["start"] >= max(left["end"], right["end"])
    assert (root / "join.txt").read_text() == "joinleftsourcea\nrightsourcea\n1\n"
    assert dvc_status(root) == {}

    # only the stale stage and what depends on it run again; a failure stops what waits on it
    log.unlink()
    (root / "right.cfg").write_text("2\n")
    (root / "right.fail").touch()
    failed = fer_repro(root)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == "error: stage right failed (its output above); 1 stage(s) not run"
    assert runs(log) == {}
    (root / "right.fail").unlink()
    again = fer_repro(root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(runs(log)) == {"right", "join"}
    assert (root / "join.txt").read_text() == "joinleftsourcea\nrightsourcea\n2\n"
    assert dvc_status(root) == {}


def test_plan_runs_stale_stages_and_their_dependents_in_critical_path_order() -> None:
    graph = nx.DiGraph([("b", "a"), ("c", "b"), ("d", "a"), ("e", "x")])  # edges: stage -> what it depends on
    waits = plan(graph, stale={"a"})
    assert waits == {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"a"}}
    assert plan(graph, stale={"a"}, targets={"d"}) == {"a": set(), "d": {"a"}}
    assert plan(graph, stale=set()) == {}
    assert launch_order({"d": set(), "b": set(), "c": {"b"}}, order=["d", "b", "c"]) == ["b", "d", "c"]
    # equal chains: the stage two runs wait on first (the demo's mae_pretrain before a fold)
    fold_and_mae = {"fold": set(), "folds": {"fold"}, "mae": set(), "pf_vit": {"mae"}, "mae_vit": {"mae"}}
    assert launch_order(fold_and_mae, order=list(fold_and_mae))[:2] == ["mae", "fold"]
