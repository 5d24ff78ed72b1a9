"""Deployments a user schedules and triggers from the Prefect UI: `preprocess` and `train` run
`dvc repro` of their stages, so DVC alone decides what is stale (DESIGN: "DVC decides staleness,
Prefect runs the work"). Schedules and parameters come from params.yaml `schedules:`.

A run takes no folder from its caller: `serve_deployments` fixes the DVC project, and the stages a
caller names must be stages of it. DVC's output streams into the run's log line by line as it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, serve
from prefect.artifacts import create_markdown_artifact, create_table_artifact

STAGES = {"preprocess": ["sample_data", "ingest", "catalog"],
          "train": ["train", "cafe", "cafe_cross", "evaluate", "thesis", "thesis_eval", "auformer_folds", "pe_clip_folds",
                    "mae_pretrain", "pf_vit", "mae_vit"]}


def _dvc(args: list[str]) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {Path.cwd()} ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def _stream(args: list[str]) -> str:
    """Run dvc, each line of its output (and of the commands it runs) into the run's log as it comes."""
    logger = get_run_logger()
    lines: list[str] = []
    # unbuffered: the `fer` commands under dvc repro write each line as it comes, not at exit
    with subprocess.Popen(["dvc", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            lines.append(line)
            logger.info(line.rstrip())
    if proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {Path.cwd()} ({proc.returncode}):\n{''.join(lines[-40:])}")
    return "".join(lines)


def _targets(kind: str, stages: list[str] | None) -> list[str]:
    """The stages to reproduce: names (or foreach groups) of this project's dvc.yaml, nothing else, so
    a caller cannot pass DVC options or point at a dvc.yaml elsewhere."""
    targets = stages or STAGES[kind]
    names = set(_dvc(["stage", "list", "--name-only", "--fail"]).split())
    known = names | {name.split("@")[0] for name in names}
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ValueError(f"unknown stages {unknown} in {Path.cwd()}; known: {sorted(known)}")
    return targets


def _repro(kind: str, stages: list[str] | None) -> dict[str, Any]:
    targets = _targets(kind, stages)
    log = _stream(["repro", *targets])
    metrics = json.loads(_dvc(["metrics", "show", "--json"]) or "{}")
    rows = [{"file": f, "metric": k, "value": v}
            for rev in metrics.values() for f, data in (rev.get("data") or {}).items()
            for k, v in _flatten(data.get("data") or {}).items()]
    create_markdown_artifact(f"# dvc repro {' '.join(targets)}\n\nin `{Path.cwd()}`\n\n```\n{log[-6000:]}\n```",
                             key=f"{kind}-repro", description=f"{kind}: what DVC ran or found up to date")
    if rows:
        create_table_artifact(rows, key=f"{kind}-metrics", description="dvc metrics show")
    return {"stages": targets, "metrics": len(rows)}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _run_name(kind: str) -> str:
    from prefect.runtime import flow_run

    return f"{kind}-{'+'.join(flow_run.parameters.get('stages') or STAGES[kind])}"


@flow(name="preprocess", flow_run_name=lambda: _run_name("preprocess"))
def preprocess(stages: list[str] | None = None) -> dict[str, Any]:
    """dvc repro of the ingest stages (sample data, one ingest per dataset, catalog + audit)."""
    return _repro("preprocess", stages)


@flow(name="train", flow_run_name=lambda: _run_name("train"))
def train_pipeline(stages: list[str] | None = None) -> dict[str, Any]:
    """dvc repro of the training stages (one per experiment in params.yaml)."""
    return _repro("train", stages)


def serve_deployments(project: Path, params: Path | None = None) -> None:
    """Serve `preprocess` and `train` for the DVC project `project` with the cron schedules of its
    params.yaml (blocks; Ctrl-C stops). The project is this process's working directory, which each
    run's process inherits; no run parameter names a folder."""
    params = Path(params).resolve() if params else project / "params.yaml"
    os.chdir(project)
    schedules = (yaml.safe_load(params.read_text()) or {}).get("schedules", {}) if params.exists() else {}
    deployments = [
        fn.to_deployment(name=name, cron=(schedules.get(name) or {}).get("cron"),
                         parameters={"stages": (schedules.get(name) or {}).get("stages")},
                         description=fn.__doc__)
        for name, fn in (("preprocess", preprocess), ("train", train_pipeline))
    ]
    serve(*deployments)
