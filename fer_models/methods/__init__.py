"""Published methods, one file each; each registers a builder `TrainConfig -> Method` here, with the
settings its paper uses where they differ from TrainConfig's (backbone, tasks, ...)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor, nn

from fer_models.config import TrainConfig

NUM_CLASSES = {"emotion": 7, "age_bin": 9, "gender": 2}


class Method(nn.Module):
    """What the trainer needs of a method: outputs, a loss, per-task scores, optimizer groups."""

    tasks: list[str]

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def scores(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-task class logits (or AU logits) that metrics turn into predictions."""
        return {task: outputs[task] for task in self.tasks}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """Groups of the main optimizer; it must leave out the adversary's parameters."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": cfg.lr}]

    def adversary_param_groups(self, cfg: TrainConfig) -> list[dict]:
        """A GAN method's discriminator: groups (with their own lr/betas) of a second AdamW (none by default)."""
        return []

    def adversary_loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The discriminator's loss on this step's outputs, stepped after the main optimizer."""
        raise NotImplementedError

    def figures(self, images: Tensor) -> dict[str, np.ndarray]:
        """Named uint8 RGB images [H, W, 3] the trainer saves as PNGs beside the metrics (grids, maps)."""
        return {}


METHODS: dict[str, Callable[[TrainConfig], Method]] = {}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {}
MODULES = ("multitask", "cafe", "auformer", "pe_clip", "mae", "pf_vit")


def register(name: str, **defaults: Any) -> Callable[[Callable[[TrainConfig], Method]], Callable[[TrainConfig], Method]]:
    """Register a builder; `defaults` are the paper's settings, applied under params.yaml and --set."""
    def wrap(builder: Callable[[TrainConfig], Method]) -> Callable[[TrainConfig], Method]:
        METHODS[name] = builder
        METHOD_DEFAULTS[name] = defaults
        return builder

    return wrap


def _load_registry() -> None:
    for module in MODULES:
        importlib.import_module(f"fer_models.methods.{module}")


def method_defaults(name: str) -> dict[str, Any]:
    _load_registry()
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return dict(METHOD_DEFAULTS[name])


def build_method(cfg: TrainConfig) -> Method:
    _load_registry()
    try:
        builder = METHODS[cfg.method]
    except KeyError:
        raise KeyError(f"unknown method {cfg.method!r}; known: {sorted(METHODS)}") from None
    return builder(cfg)


def class_targets(target: Tensor, num_classes: int) -> Tensor:
    """Labels outside a head's classes (contempt for a 7-way emotion head) are ignored, not errors."""
    return target.masked_fill((target >= num_classes) | (target < 0), -100)
