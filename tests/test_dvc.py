"""dvc.yaml as DVC resolves it (foreach expanded, ${} filled in), read from a copy of the project's
dvc.yaml / params.yaml / .dvcignore: each training stage depends on exactly the params that reach
its config, DVC hashes no file whose bytes differ run to run, and a stale `dvc repro` without `fer`
on PATH keeps the raw sample data."""

from __future__ import annotations

import ast
import configparser
import copy
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fer_cli.main import app
from fer_models.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore")


@dataclass(frozen=True)
class Stage:
    cmd: str
    deps: list[str]
    outs: list[str]  # outs, metrics and plots: everything DVC hashes for the stage
    params: list[str]  # params.yaml keys


def dvc_repo(path: Path) -> Path:
    """A DVC project (no git) holding copies of the pipeline files."""
    from dvc.repo import Repo

    path.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        shutil.copy(ROOT / name, path / name)
    Repo.init(path, no_scm=True)
    ours = (ROOT / ".dvc" / "config").read_text()  # its [parsing] shapes fold-summary's cmd
    with open(path / ".dvc" / "config", "a") as config:
        config.write("\n" + ours[ours.index("[parsing]"):])
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dvc_repo(tmp_path_factory.mktemp("dvc"))


@pytest.fixture(scope="module")
def stages(repo: Path) -> dict[str, Stage]:
    return resolved_stages(repo)


class _Stop(Exception):
    """Raised in place of loading a config: the test needs only what the CLI would load."""


def load_call(cmd: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str], list[str], str]:
    """The arguments a `fer train ...` command line gives TrainConfig.load, found by running the CLI
    itself on it (so the test follows the CLI's own order of params sections, --set and --recipe)."""
    calls = []

    def record(cls, params=None, sections=("train",), overrides=None, recipe="params"):  # noqa: ANN001 - load's
        calls.append((params, list(sections), list(overrides or []), recipe))
        raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(TrainConfig, "load", classmethod(record))
        result = CliRunner().invoke(app, shlex.split(cmd)[1:])
    assert calls, f"`{cmd}` never loaded a config:\n{result.output}"
    return calls[0]


def contributing_params(params: Path, sections: list[str], overrides: list[str], scratch: Path,
                        recipe: str = "params") -> list[str]:
    """The params.yaml keys whose value reaches the config. Every key of the sections read gets a
    value naming it, and the loaded config shows which of them arrived; a loader that checks types
    rejects such values, so then each key is changed alone and compared (slower)."""
    tree = yaml.safe_load(params.read_text())
    probe = copy.deepcopy(tree)
    for section in sections:
        for key in probe.get(section) or {}:
            probe[section][key] = f"<{section}.{key}>"
    scratch.write_text(yaml.safe_dump(probe))
    try:
        loaded = TrainConfig.load(scratch, sections, overrides, recipe).to_dict().values()
        return sorted(v[1:-1] for v in loaded if isinstance(v, str) and v.startswith("<") and v.endswith(">"))
    except (TypeError, ValueError):
        pass
    base, found = TrainConfig.load(params, sections, overrides, recipe), []
    for section in sections:
        for key in tree.get(section) or {}:
            one = copy.deepcopy(tree)
            one[section][key] = "<changed>"
            scratch.write_text(yaml.safe_dump(one))
            try:
                changed = TrainConfig.load(scratch, sections, overrides, recipe) != base
            except (TypeError, ValueError):  # rejected: it was read
                changed = True
            if changed:
                found.append(f"{section}.{key}")
    return sorted(found)


def test_every_training_stage_depends_on_exactly_the_params_its_config_reads(
        repo: Path, stages: dict[str, Stage], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    training = {name: s for name, s in stages.items() if s.cmd.startswith("fer train ")}
    assert {"train@lp", "train@lora", "thesis", "cafe@rafdb", "auformer@1", "auformer_disfa@1", "pe_clip@1",
            "pe_clip_ferv39k", "mae_pretrain", "pf_vit", "mae_vit"} <= set(training)
    wrong = {}
    for name, stage in training.items():
        params, sections, overrides, recipe = load_call(stage.cmd, monkeypatch)
        params = repo / params  # the CLI's params path is relative to the project root, where DVC runs it
        expected = contributing_params(params, sections, overrides, tmp_path / "probe.yaml", recipe)
        if stage.params != expected:
            wrong[name] = {"listed, not read": sorted(set(stage.params) - set(expected)),
                           "read, not listed": sorted(set(expected) - set(stage.params))}
    assert not wrong, f"dvc.yaml params differ from what each config reads: {wrong}"


def test_changing_train_lr_reaches_only_the_stages_that_keep_it(stages: dict[str, Stage]) -> None:
    """The issue's case: methods whose own section sets `lr` (thesis, cafe, ...) do not re-run when `train.lr` changes."""
    assert sorted(name for name, s in stages.items() if "train.lr" in s.params) == ["train@lora", "train@lp"]


def test_protocol_stages_score_the_papers_test_sets(stages: dict[str, Stage]) -> None:
    """CAFE: a run per source (params.yaml cafe_sources), each tested on the five sets; the thesis: its
    four test sets, three tasks."""
    sources = yaml.safe_load((ROOT / "params.yaml").read_text())["cafe_sources"]
    cross = shlex.split(stages["cafe_cross"].cmd)
    assert cross[2:cross.index("--datasets")] == [f"runs/cafe/{s}" for s in sources]
    assert [f"runs/cafe/{s}/best.pt" for s in sources] == [d for d in stages["cafe_cross"].deps if d.startswith("runs/")]
    for source in sources:
        cmd = stages[f"cafe@{source}"].cmd
        assert f"train_where=dataset = '{source}' AND split = 'train'" in cmd and f"out=runs/cafe/{source}" in cmd
    assert cross[cross.index("--datasets") + 1] == "rafdb,ferplus,affectnet,sfew,mma"
    thesis = shlex.split(stages["thesis_eval"].cmd)
    assert thesis[thesis.index("--datasets") + 1] == "vggface2,utkface:all,fairface:val,rafdb"
    assert thesis[thesis.index("--tasks") + 1] == "emotion,age_bin,gender"


def resolved_stages(repo: Path) -> dict[str, Stage]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {s.name: Stage(
            s.cmd,
            [d.def_path for d in s.deps if not isinstance(d, ParamsDependency)],
            [o.def_path for o in s.outs],
            sorted(k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params),
        ) for s in dvc.index.stages}


@pytest.mark.parametrize("full", [False, True], ids=["demo", "full-protocols"])
def test_every_k_fold_protocol_has_a_run_per_fold_and_a_summary_of_them(full: bool, tmp_path: Path) -> None:
    """params.yaml `folds`: the demo runs fold 1 of each protocol; with every fold listed (BP4D and DISFA 3
    folds for AUFormer, DFEW 5 for PE-CLIP, as `dvc exp run -S` sets them) there is a run per fold, each
    in PROTOCOL/fold<k>, and METHOD_folds averages exactly the listed folds' runs."""
    repo = dvc_repo(tmp_path / "dvc")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert {m: v["fold"] for m, v in params["folds"].items()} == {"auformer": [1], "auformer_disfa": [1], "pe_clip": [1]}
    if full:
        params["folds"] = {"auformer": {"fold": [1, 2, 3]}, "auformer_disfa": {"fold": [1, 2, 3]},
                           "pe_clip": {"fold": [1, 2, 3, 4, 5]}}
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
    stages = resolved_stages(repo)
    for method, entry in params["folds"].items():
        ks = entry["fold"]
        runs = sorted(name for name in stages if name.split("@")[0] == method)
        assert runs == [f"{method}@{k}" for k in ks]
        for k, run in zip(ks, runs):
            assert f"--section {method} --set fold={k} --set out=runs/{method}/fold{k} " in " ".join(stages[run].cmd.split())
            assert f"runs/{method}/fold{k}/metrics.json" in stages[run].outs
        summary = stages[f"{method}_folds"]
        assert summary.deps == [f"runs/{method}"], method
        cmd = shlex.split(summary.cmd)
        assert cmd[:3] == ["fer", "fold-summary", f"runs/{method}"]
        assert [int(cmd[i + 1]) for i, a in enumerate(cmd) if a == "--fold"] == ks


def test_training_commands_overwrite_their_run_folder(stages: dict[str, Stage]) -> None:
    """DVC deletes a stage's outs before running it anyway; a leftover config.json must not refuse it."""
    for name, stage in stages.items():
        if stage.cmd.startswith("fer train "):
            assert "--overwrite" in shlex.split(stage.cmd), name


def test_dvc_hashes_no_duckdb_lock_or_timing_file(repo: Path, stages: dict[str, Stage]) -> None:
    from dvc.repo import Repo

    for name, stage in stages.items():
        for path in stage.deps + stage.outs:
            assert not path.endswith((".duckdb", ".lock", "speed.json")), f"{name}: {path}"
    assert "data/catalog" in stages["catalog"].outs
    assert "data/catalog" in stages["train@lp"].deps
    with Repo(str(repo)) as dvc:
        ignored = dvc.dvcignore.is_ignored_file
        for path in ("data/catalog.duckdb", "data/ingest/rafdb/catalog.duckdb", "data/catalog.duckdb.wal",
                     "data/ingest/rafdb/.ingest.lock", "runs/lp/speed.json", "runs/pe_clip/fold1/speed.json"):
            assert ignored(str(repo / path)), path
        for path in ("data/catalog/samples/dataset=rafdb/part0.parquet", "data/ingest/rafdb/shards/rafdb/_info.json",
                     "runs/lp/metrics.json"):
            assert not ignored(str(repo / path)), path


def _imported_modules(module: str, package: str) -> set[str]:
    """`module` and every module of `package` it imports, directly or through others, at the top or
    inside a function (ast: nothing is imported)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = ROOT / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]  # a name may be a module
        todo = [t for t in todo if t == package or t.startswith(package + ".")]
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__ run first
    return seen


def test_ingest_stages_depend_on_every_module_an_ingest_runs(stages: dict[str, Stage]) -> None:
    """A changed decoder, record, label map or video reader changes the shards: `dvc repro` must run the
    ingests again. Every fer_data file `fer_data.ingest` imports is a dep of each ingest stage (a file,
    or under a folder dep); package `__init__` files holding only a docstring are exempt."""
    files = set()
    for name in _imported_modules("fer_data.ingest", "fer_data"):
        path = ROOT / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        body = ast.parse(path.read_text()).body
        if path.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body):
            continue
        files.add(path.relative_to(ROOT).as_posix())
    assert {"fer_data/decode.py", "fer_data/records.py", "fer_data/video.py", "fer_data/faces/align.py"} <= files
    ingests = {name: stage for name, stage in stages.items() if name.startswith("ingest@")}
    assert len(ingests) >= 15
    for name, stage in ingests.items():
        missing = [f for f in sorted(files) if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in stage.deps)]
        assert not missing, f"{name} does not depend on {missing}"


def _repro_sample_data(repo: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess:
    shutil.copytree(ROOT / "fer_data" / "samples", repo / "fer_data" / "samples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])}
    return subprocess.run([sys.executable, "-m", "dvc", "repro", "sample_data"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stale_repro_without_fer_keeps_the_sample_data(tmp_path: Path) -> None:
    """Outside the venv `fer` is not found: the stage fails, and sample_raw/ is still there."""
    repo = dvc_repo(tmp_path / "project")
    (repo / "sample_raw" / "rafdb").mkdir(parents=True)
    (repo / "sample_raw" / "rafdb" / "label.txt").write_text("kept\n")
    done = _repro_sample_data(repo, [])
    assert done.returncode != 0
    assert (repo / "sample_raw" / "rafdb" / "label.txt").read_text() == "kept\n"


def test_sample_data_stage_swaps_in_a_complete_copy(tmp_path: Path) -> None:
    """With `fer` present the stage replaces sample_raw/ whole: no file of the old copy, no staging left."""
    repo = dvc_repo(tmp_path / "project")
    (repo / "sample_raw" / "old").mkdir(parents=True)
    (repo / "sample_raw" / "old" / "stale.txt").write_text("old\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fer = bin_dir / "fer"  # writes like `fer sample-data OUT --seed N`
    fer.write_text('#!/bin/sh\n[ "$1" = sample-data ] || exit 3\nmkdir -p "$2/rafdb" && echo "seed $4" > "$2/rafdb/a.txt"\n')
    fer.chmod(0o755)
    done = _repro_sample_data(repo, [bin_dir])
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.relative_to(repo / "sample_raw").as_posix() for p in (repo / "sample_raw").rglob("*")) == [
        "rafdb", "rafdb/a.txt"]
    assert (repo / "sample_raw" / "rafdb" / "a.txt").read_text() == "seed 0\n"
    assert not (repo / ".dvc" / "tmp" / "sample_raw").exists()


def test_readme_says_what_dvc_pull_needs() -> None:
    """A fresh clone has no cache and an empty local remote: the README must not promise `dvc pull`
    works out of the box; it names the configured remote and how to fill it or add one."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    remote = config.get("core", "remote")
    url = config.get(f"'remote \"{remote}\"'", "url")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "out of the box" not in readme
    assert (ROOT / ".dvc" / url).resolve().relative_to(ROOT).as_posix() in readme
    assert "dvc push" in readme and "dvc remote add" in readme
