"""Deployments a user schedules and triggers from the Prefect UI: `preprocess` and `train` run
`dvc repro` of their stages, so DVC alone decides what is stale (DESIGN: "DVC decides staleness,
Prefect runs the work"). Schedules and parameters come from params.yaml `schedules:`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, serve
from prefect.artifacts import create_markdown_artifact, create_table_artifact

REPO = Path(__file__).resolve().parent.parent
STAGES = {"preprocess": ["sample_data", "ingest", "catalog"], "train": ["train"]}


def _dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, env=None)
    if proc.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {cwd} ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _repro(kind: str, stages: list[str] | None, repo: str | None) -> dict[str, Any]:
    cwd = Path(repo or REPO)
    targets = stages or STAGES[kind]
    log = _dvc(["repro", *targets], cwd)
    metrics = json.loads(_dvc(["metrics", "show", "--json"], cwd) or "{}")
    rows = [{"file": f, "metric": k, "value": v}
            for rev in metrics.values() for f, data in (rev.get("data") or {}).items()
            for k, v in _flatten(data.get("data") or {}).items()]
    create_markdown_artifact(f"# dvc repro {' '.join(targets)}\n\nin `{cwd}`\n\n```\n{log[-6000:]}\n```",
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


@flow(name="preprocess", flow_run_name="preprocess-{stages}")
def preprocess(stages: list[str] | None = None, repo: str | None = None) -> dict[str, Any]:
    """dvc repro of the ingest stages (sample data, one ingest per dataset, catalog + audit)."""
    return _repro("preprocess", stages, repo)


@flow(name="train", flow_run_name="train-{stages}")
def train_pipeline(stages: list[str] | None = None, repo: str | None = None) -> dict[str, Any]:
    """dvc repro of the training stages (one per experiment in params.yaml)."""
    return _repro("train", stages, repo)


def serve_deployments(params: str | Path = REPO / "params.yaml", repo: str | None = None) -> None:
    """Serve `preprocess` and `train` with the cron schedules of params.yaml (blocks; Ctrl-C stops)."""
    schedules = (yaml.safe_load(Path(params).read_text()) or {}).get("schedules", {})
    deployments = [
        fn.to_deployment(name=name, cron=(schedules.get(name) or {}).get("cron"),
                         parameters={"stages": (schedules.get(name) or {}).get("stages"), "repo": repo},
                         description=fn.__doc__)
        for name, fn in (("preprocess", preprocess), ("train", train_pipeline))
    ]
    serve(*deployments)
