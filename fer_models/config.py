"""Training configuration as data: one dataclass, read from params.yaml and `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    method: str = "multitask"
    # data: SQL selections over the catalog's samples
    catalog: str = "data/catalog.duckdb"
    train_where: str = "split = 'train' AND kind = 'image'"
    val_where: str = "split = 'val' AND kind = 'image'"
    test_where: str = "split = 'test' AND kind = 'image'"
    tasks: list[str] = field(default_factory=lambda: ["emotion", "age_bin", "gender"])
    aus: list[int] = field(default_factory=list)
    # model
    backbone: str = "PE-Core-T-16-384"
    pretrained: str | None = None
    image_size: int | None = None
    peft: str = "lp"  # multitask mode: lp | ft4 | lora | dora | lora_plus | mtlora
    rank: int = 64
    lora_alpha: float | None = None
    lora_plus_ratio: float = 6.0
    ft_lr_scale: float = 0.1  # FT4: backbone blocks at this fraction of the LR
    uncertainty_weighting: bool = False
    dropout: float = 0.1
    # CAFE loss weights (paper: CE + 5 * channel-diverse + 1.5 * group-wise CE)
    cafe_diverse_weight: float = 5.0
    cafe_group_weight: float = 1.5
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 5
    batch_size: int = 32
    grad_accum: int = 1
    warmup_fraction: float = 0.1
    epoch_samples: int | None = None  # None: one pass over the training selection per epoch
    early_stop_patience: int = 0  # epochs without val improvement before stopping; 0 = never
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    out: str = "runs/default"

    @classmethod
    def load(cls, params: str | Path | None = None, section: str = "train",
             overrides: list[str] | None = None) -> "TrainConfig":
        """Fields from `params[section]` (unknown keys are an error), then `key=value` overrides (YAML-typed)."""
        values: dict[str, Any] = {}
        if params and Path(params).exists():
            values.update((yaml.safe_load(Path(params).read_text()) or {}).get(section) or {})
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            values[key.strip()] = yaml.safe_load(raw)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
