"""Published methods, one file each, registered with fer_models.registry: what the trainer needs of
a method (`Method`) and how it gets one for a configuration (`build_method`)."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from fer_data.labels import IGNORE_INDEX, NUM_CLASSES
from fer_models.config import TrainConfig
from fer_models.registry import builder


class Method(nn.Module):
    """What the trainer needs of a method: outputs, a loss, per-task scores, optimizer groups."""

    tasks: list[str]

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def head_outputs(self, cfg: TrainConfig) -> dict[str, int]:
        """task -> outputs of its head (a method with other heads says so by overriding this)."""
        return {task: outputs(cfg, task) for task in self.tasks}

    def scores(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-task class logits (or AU logits) that metrics turn into predictions."""
        return {task: outputs[task] for task in self.tasks}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """Named groups of the main optimizer, each {name, params, lr[, weight_decay, betas]} (weight decay
        defaults to cfg.weight_decay); together every trainable parameter but the adversary's, once."""
        return [{"name": "all", "params": [p for p in self.parameters() if p.requires_grad], "lr": cfg.lr}]

    def adversary_param_groups(self, cfg: TrainConfig) -> list[dict]:
        """A GAN method's discriminator: groups (with their own lr/betas) of a second AdamW (none by default)."""
        return []

    def adversary_loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The discriminator's loss on this step's outputs, stepped after the main optimizer."""
        raise NotImplementedError

    def figures(self, images: Tensor) -> dict[str, np.ndarray]:
        """Named uint8 RGB images [H, W, 3] the trainer saves as PNGs beside the metrics (grids, maps)."""
        return {}


def build_method(cfg: TrainConfig) -> Method:
    return builder(cfg.method)(cfg)


def num_classes(cfg: TrainConfig, task: str) -> int:
    """Classes of a task's head: the emotion head has cfg.emotion_classes (8 keeps contempt)."""
    return cfg.emotion_classes if task == "emotion" else NUM_CLASSES[task]


def outputs(cfg: TrainConfig, task: str) -> int:
    """Outputs of a head for `task`: its classes, one logit per AU, 2 for valence/arousal, 1 for age."""
    if task == "au":
        return len(cfg.aus)
    return {"valence_arousal": 2, "age": 1}.get(task) or num_classes(cfg, task)


def class_targets(target: Tensor, num_classes: int) -> Tensor:
    """Labels outside a head's classes (contempt for a 7-way emotion head) are ignored, not errors."""
    return target.masked_fill((target >= num_classes) | (target < 0), IGNORE_INDEX)
