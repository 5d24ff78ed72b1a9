"""CAFE (Cognition of humAn for Facial Expression): sigmoid masks learned on fixed CLIP face
features, channels split into 7 expression groups, channel-diverse loss.

Choices the summary we work from leaves open, recorded here:
- the fixed feature is standardised per channel (BatchNorm without affine, statistics from the
  training set): CLIP embeddings differ between faces in small offsets around a shared direction,
  which a mask and a linear classifier barely see unscaled;
- mask network: Linear(D, D) - GELU - Linear(D, D) on that feature; masked = f * sigmoid(mask);
- main classifier: one Linear(D, 7) on the masked feature (the "CE" term; used for prediction);
- group-wise logits: masked channels split into 7 contiguous groups of D // 7 (the remainder is
  dropped), each group's max is its class logit (max-pooling, as the paper's pipeline names it);
- loss = CE + cafe_diverse_weight * channel_diverse_loss + cafe_group_weight * CE(group-wise),
  weights 5 and 1.5 by default (params.yaml `train.cafe_*`).
The backbone never trains, so its features can be cached (`fer_models.backbones.cache_features`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fer_data.labels import NUM_CLASSES
from fer_models import backbones
from fer_models.config import TrainConfig
from fer_models.losses import channel_diverse_loss, masked_cross_entropy
from fer_models.methods import Method, class_targets
from fer_models.registry import register

GROUPS = NUM_CLASSES["emotion"]


class Cafe(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["emotion"]
        self.backbone = backbones.build_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
        backbones.freeze(self.backbone)
        dim = self.backbone.embed_dim
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.mask = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.classifier = nn.Linear(dim, GROUPS)
        self.diverse_weight = cfg.cafe_diverse_weight
        self.group_weight = cfg.cafe_group_weight

    def train(self, mode: bool = True) -> "Cafe":
        super().train(mode)
        self.backbone.eval()  # fixed features: no dropout/BN updates inside the backbone either
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            feat = self.backbone(images)
        feat = self.norm(feat)
        masked = feat * torch.sigmoid(self.mask(feat))
        g = masked.shape[1] // GROUPS
        groups = masked[:, : g * GROUPS].reshape(len(masked), GROUPS, g).amax(dim=2)
        return {"emotion": self.classifier(masked), "groups": groups, "masked": masked}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        y = class_targets(targets["emotion"], GROUPS)
        ce = masked_cross_entropy(outputs["emotion"], y)
        group_ce = masked_cross_entropy(outputs["groups"], y)
        diverse = channel_diverse_loss(outputs["masked"], GROUPS)
        total = ce + self.diverse_weight * diverse + self.group_weight * group_ce
        return total, {"loss_ce": float(ce.detach()), "loss_group": float(group_ce.detach()),
                       "loss_diverse": float(diverse.detach())}


@register("cafe")
def build(cfg: TrainConfig) -> Cafe:
    return Cafe(cfg)
