"""Multitask age / gender / emotion on a frozen or parameter-efficiently tuned CLIP vision tower
(the thesis: "Adapting Vision Language Models via parameter-efficient fine-tuning for Multitask
Classification of Age, Gender, and Emotion").

Modes: lp (heads only), ft4 (last four blocks + attention pooling at `ft_lr_scale` x LR), lora,
dora, lora_plus / dora_plus (B matrices at `lora_plus_ratio` x LR; dora_plus is the thesis' best model),
mtlora (shared DoRA + task-specific LoRA, every B matrix at `lora_plus_ratio` x LR as the thesis' TA-DoRA).
Heads are BN-Dropout-Linear-GELU-Linear on the pooled embedding; the emotion head has
`emotion_classes` outputs. A task without labels in a batch contributes nothing (masked losses, and
uncertainty weighting leaves its log-variance alone), never NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fer_data.labels import IGNORE_INDEX, NUM_CLASSES
from fer_models import backbones, peft
from fer_models.config import PEFT_MODES, TrainConfig
from fer_models.losses import UncertaintyWeighting, masked_cross_entropy
from fer_models.methods import Method, class_targets, num_classes
from fer_models.registry import register

HIDDEN = 256


def head(dim: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(dim), nn.Dropout(dropout), nn.Linear(dim, HIDDEN), nn.GELU(),
                         nn.Linear(HIDDEN, classes))


class Multitask(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        if cfg.peft not in PEFT_MODES:
            raise ValueError(f"peft {cfg.peft!r} not in {PEFT_MODES}")
        self.tasks = [t for t in cfg.tasks if t in NUM_CLASSES]
        self.mode = cfg.peft
        backbone = backbones.build_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
        backbones.freeze(backbone)
        if self.mode == "ft4":
            backbones.unfreeze_last_blocks(backbone, 4)
        elif self.mode != "lp":
            backbone = peft.apply_peft(backbone, self.mode, rank=cfg.rank, alpha=cfg.lora_alpha, tasks=self.tasks)
        self.backbone = backbone
        self.classes = {t: num_classes(cfg, t) for t in self.tasks}
        self.heads = nn.ModuleDict({t: head(backbone.embed_dim, self.classes[t], cfg.dropout) for t in self.tasks})
        self.weighting = UncertaintyWeighting(len(self.tasks)) if cfg.uncertainty_weighting else None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if self.mode == "mtlora":
            feats = self.backbone.forward_tasks(images)
            return {t: self.heads[t](feats[t]) for t in self.tasks}
        feat = self.backbone(images)
        return {t: self.heads[t](feat) for t in self.tasks}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        labels = {t: class_targets(targets[t], self.classes[t]) for t in self.tasks}
        losses = {t: masked_cross_entropy(outputs[t], labels[t]) for t in self.tasks}
        if self.weighting:
            present = torch.stack([(labels[t] != IGNORE_INDEX).any() for t in self.tasks]).to(outputs[self.tasks[0]].dtype)
            total = self.weighting(list(losses.values()), present)
        else:
            total = sum(losses.values())
        return total, {f"loss_{t}": float(v.detach()) for t, v in losses.items()}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if self.mode in ("lora_plus", "dora_plus", "mtlora"):
            return peft.lora_plus_param_groups(self, cfg.lr, cfg.lora_plus_ratio, cfg.weight_decay)
        if self.mode == "ft4":
            slow = [p for n, p in trainable if n.startswith("backbone.")]
            fast = [p for n, p in trainable if not n.startswith("backbone.")]
            return [{"name": "heads", "params": fast, "lr": cfg.lr},
                    {"name": "backbone", "params": slow, "lr": cfg.lr * cfg.ft_lr_scale}]
        return [{"name": "heads" if self.mode == "lp" else "adapters+heads", "params": [p for _, p in trainable],
                 "lr": cfg.lr}]


@register("multitask")
def build(cfg: TrainConfig) -> Multitask:
    return Multitask(cfg)
