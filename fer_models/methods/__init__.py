"""Published methods, one file each; each registers a builder `TrainConfig -> Method` here."""

from __future__ import annotations

from collections.abc import Callable

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
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": cfg.lr}]


METHODS: dict[str, Callable[[TrainConfig], Method]] = {}


def register(name: str) -> Callable[[Callable[[TrainConfig], Method]], Callable[[TrainConfig], Method]]:
    def wrap(builder: Callable[[TrainConfig], Method]) -> Callable[[TrainConfig], Method]:
        METHODS[name] = builder
        return builder

    return wrap


def build_method(cfg: TrainConfig) -> Method:
    from fer_models.methods import cafe, multitask  # noqa: F401  (fill the registry)

    try:
        return METHODS[cfg.method](cfg)
    except KeyError:
        raise KeyError(f"unknown method {cfg.method!r}; known: {sorted(METHODS)}") from None


def class_targets(target: Tensor, num_classes: int) -> Tensor:
    """Labels outside a head's classes (contempt for a 7-way emotion head) are ignored, not errors."""
    return target.masked_fill((target >= num_classes) | (target < 0), -100)
