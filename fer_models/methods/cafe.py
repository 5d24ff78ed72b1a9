"""CAFE (Cognition of humAn for Facial Expression; Zhang et al., 2024), as its authors' code
(zyh-uaiaaaa/Generalizable-FER, code/ours_CAFE.py) builds it:

- a fixed CLIP ViT-B/32 image feature f (512-d; the frozen `backbone`, never trained, always in eval);
- a trainable ResNet-18 (`mask_net`, torchvision's layout: the authors' msceleb face-recognition weights
  load from a local file, `cafe_mask_weights`, non-strict as theirs; random otherwise, and a WARNING
  says so) maps the same image to a 512-d vector m (after global average pooling, no fc);
- the masked feature is x = f * sigmoid(m); one Linear(512, 7) on x gives the prediction ("CE");
- the channels of x split into 7 groups of 512 // 7 = 73 (the last channel is in none, as the authors'
  max-pool drops it); the channel-diverse loss is 1 - mean(max of each group) / 73
  (`losses.channel_diverse_loss`); the group-wise CE reads each group's max as its class logit after 10
  random channels per group are zeroed, one draw per batch (the authors' `Mask`), at training only;
- loss = CE + cafe_diverse_weight (5) x diverse + cafe_group_weight (1.5) x group CE.
The recipe (register below): Adam 2e-4 with L2 weight decay 1e-4, LR x 0.9 per epoch, 60 epochs,
batch 32, 224 px, flip + RandomErasing(0.02-0.25) + Gaussian noise (variance 30 of 255^2, p 0.5).

Where we differ, and why: the CLIP tower gets CLIP's own normalisation and the ResNet ImageNet's (the
authors feed both the ImageNet-normalised image); a backbone whose embedding is not 512-d (tiny test
configs) gets a Linear(512, D) after the ResNet (none at D = 512); the emotion head and the groups follow
`emotion_classes` (8 groups of 64 when contempt is kept); `cafe_feature_norm` (off by default) standardises
the fixed feature per channel, for random or tiny backbones whose raw features are all but zero (the demo).
"""

from __future__ import annotations

import logging

import torch
import torchvision
from torch import Tensor, nn

from fer_models import backbones
from fer_models.augment import as_float
from fer_models.config import TrainConfig
from fer_models.losses import channel_diverse_loss, masked_cross_entropy
from fer_models.methods import Method, class_targets, num_classes
from fer_models.registry import register

log = logging.getLogger(__name__)
MASK_DIM = 512  # ResNet-18's pooled width
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the mask net's input normalisation (the authors' transforms)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet18_trunk(weights: str | None) -> nn.Module:
    """torchvision ResNet-18 without its classifier ([B, 3, H, W] -> [B, 512]); `weights` a local state dict
    (the authors' resnet18_msceleb.pth: {'state_dict': ...}), loaded non-strictly as the authors do."""
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    if weights is None:
        log.warning("CAFE mask net (ResNet-18): no face-recognition weights given (cafe_mask_weights), "
                    "RANDOMLY INITIALISED")
        return net
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net.load_state_dict(state, strict=False)
    loaded = len(state.keys() & net.state_dict().keys())
    if not loaded:
        raise ValueError(f"{weights}: no ResNet-18 weights in it (keys like {list(state)[:3]})")
    log.info("CAFE mask net: %d of %d tensors loaded from %s", loaded, len(net.state_dict()), weights)
    return net


class Cafe(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["emotion"]
        self.backbone = backbones.freeze(backbones.build_backbone(cfg.backbone, cfg.pretrained, cfg.image_size))
        self.groups = num_classes(cfg, "emotion")
        dim = self.backbone.embed_dim
        self.norm = nn.BatchNorm1d(dim, affine=False) if cfg.cafe_feature_norm else nn.Identity()
        self.mask_net = resnet18_trunk(cfg.cafe_mask_weights)
        self.mask_proj = nn.Linear(MASK_DIM, dim) if dim != MASK_DIM else nn.Identity()
        self.classifier = nn.Linear(dim, self.groups)
        self.drop = min(cfg.cafe_drop_channels, dim // self.groups - 1)
        self.diverse_weight = cfg.cafe_diverse_weight
        self.group_weight = cfg.cafe_group_weight
        self.image_size = cfg.image_size or self.backbone.image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Cafe":
        super().train(mode)
        self.backbone.eval()  # fixed features: no dropout/BN updates inside CLIP either
        return self

    def channel_keep(self, channels: int, device: torch.device) -> Tensor:
        """[channels] 0/1: `drop` random channels of each group zeroed (the same for the whole batch)."""
        g = channels // self.groups
        scores = torch.rand(self.groups, g, device=device)
        keep = (scores.argsort(dim=1).argsort(dim=1) >= self.drop).float()  # rank < drop: dropped
        return torch.cat([keep.flatten(), torch.ones(channels - g * self.groups, device=device)])

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            feat = self.backbone(images).float()
        feat = self.norm(feat)
        x = as_float(images)
        if x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        mask = torch.sigmoid(self.mask_proj(self.mask_net((x - self.mean) / self.std)))
        masked = feat * mask
        g = masked.shape[1] // self.groups
        kept = masked * self.channel_keep(masked.shape[1], masked.device) if self.training else masked
        groups = kept[:, : g * self.groups].reshape(len(kept), self.groups, g).amax(dim=2)
        return {"emotion": self.classifier(masked), "groups": groups, "masked": masked}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        y = class_targets(targets["emotion"], self.groups)
        ce = masked_cross_entropy(outputs["emotion"], y)
        group_ce = masked_cross_entropy(outputs["groups"], y)
        diverse = channel_diverse_loss(outputs["masked"], self.groups)
        total = ce + self.diverse_weight * diverse + self.group_weight * group_ce
        return total, {"loss_ce": float(ce.detach()), "loss_group": float(group_ce.detach()),
                       "loss_diverse": float(diverse.detach())}


@register("cafe", protocol=(
    "train on one source dataset (RAF-DB in the worked example), test on RAF-DB, FERPlus, AffectNet, SFEW (val) "
    "and MMA; accuracy per test set and their mean (63.48 % from RAF-DB); dvc: cafe@SOURCE, cafe_cross"),
    backbone="ViT-B-32", image_size=224, tasks=["emotion"], optimizer="adam", lr=2e-4, weight_decay=1e-4,
    schedule="exponential", lr_gamma=0.9, warmup_epochs=0, epochs=60, batch_size=32,
    augment=["flip", "erase", "noise"], erase_p=0.5, erase_scale=[0.02, 0.25], noise_std=30 ** 0.5 / 255, noise_p=0.5)
def build(cfg: TrainConfig) -> Cafe:
    return Cafe(cfg)
