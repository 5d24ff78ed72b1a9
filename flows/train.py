"""Prefect flows around the one trainer: `train` (fit, then evaluate on the test selection) and
`evaluate` (a trained run on any selection). Metrics land as table artifacts in the UI, and the
trainer's epoch lines in the run's log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from fer_models.config import TrainConfig
from fer_models.report import named_after
from flows.runners import run_logs


def run_label(cfg: TrainConfig) -> str:
    """The run's name in the UI and its artifact key: the method and the run folder (a run is its folder:
    runs/pe_clip/fold3 -> pe-clip-fold3, runs/lora -> multitask-lora), as an artifact key
    may be spelled (lowercase letters, digits, dashes)."""
    parts = [p for p in Path(cfg.out).parts[-2:] if p != "runs"]
    name = "-".join(parts if named_after(parts[0], cfg.method) else [cfg.method, *parts])
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@flow(name="train-run", log_prints=True)
def train_flow(config: dict[str, Any]) -> dict[str, Any]:
    from fer_models.train import train

    cfg = TrainConfig(**config)
    with run_logs("fer_models"):
        metrics = train(cfg)
    create_table_artifact([{"metric": k, "value": v} for k, v in sorted(metrics.items())],
                          key=f"metrics-{run_label(cfg)}",
                          description=f"test metrics of {cfg.method} on {cfg.backbone} ({cfg.out})")
    return metrics


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    return train_flow.with_options(flow_run_name=f"train-{run_label(cfg)}")(config=cfg.to_dict())
