"""Prefect flows around the one trainer: `train` (fit, then evaluate on the test selection) and
`evaluate` (a trained run on any selection). Metrics land as table artifacts in the UI."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from fer_data.shards import fingerprint
from fer_models.config import TrainConfig


def _report(metrics: dict[str, Any], key: str, description: str) -> None:
    create_table_artifact([{"metric": k, "value": v} for k, v in sorted(metrics.items())], key=key,
                          description=description)


@flow(name="train-run", log_prints=True)
def train_flow(config: dict[str, Any]) -> dict[str, Any]:
    from fer_models.train import train

    cfg = TrainConfig(**config)
    metrics = train(cfg)
    _report(metrics, f"metrics-{cfg.method}-{cfg.peft}".lower().replace("_", "-"),
            f"test metrics of {cfg.method}/{cfg.peft} on {cfg.backbone} ({cfg.out})")
    return metrics


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    name = f"train-{cfg.method}-{cfg.peft}-{fingerprint(cfg.to_dict())[:10]}"
    return train_flow.with_options(flow_run_name=name)(config=cfg.to_dict())
