"""MAE-ViT: the PF-ViT paper's baseline (Li et al., "Emotion Separation and Recognition from a Facial
Expression by Generating the Poker Face with Vision Transformers", Sec. "MAE-ViT"): the MAE-pre-trained
ViT encoder with a single linear classifier on its class token, every weight fine-tuned on the FER
training set. PF-ViT adds the token separator, generator and discriminator to exactly this.

Weights come from the MAE run in `cfg.pretrained`, as for PF-ViT (`pf_vit.load_mae`); without one the
encoder is random and a WARNING says so.

The recipe (registered): the paper's Adam at 1e-4, batch 32, LR / 10 after 30 epochs without
improvement, at most 100 epochs, random scaling and flipping. The paper says the rest follows MAE's
fine-tuning; left out of that, and why: layer-wise LR decay (0.65), drop path (0.1), RandAugment,
mixup / CutMix and label smoothing - the paper names only scaling and flipping, and its Adam at a
fixed 1e-4 replaces MAE's AdamW at a batch-scaled 5e-4. The class token feeds the head (the paper's
"output token"; MAE's own fine-tune averages the patch tokens instead).
"""

from __future__ import annotations

from torch import Tensor, nn

from fer_models.config import TrainConfig
from fer_models.losses import masked_cross_entropy
from fer_models.methods import Method, class_targets, num_classes
from fer_models.methods.mae import decay_groups, encode, prepare
from fer_models.methods.pf_vit import load_mae
from fer_models.registry import register


class MaeVit(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["emotion"]
        mae = load_mae(cfg)
        self.image_size = mae.image_size
        self.encoder = mae.encoder
        self.classes = num_classes(cfg, "emotion")
        self.classifier = nn.Linear(mae.size.width, self.classes)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"emotion": self.classifier(encode(self.encoder, prepare(images, self.image_size))[:, 0])}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        ce = masked_cross_entropy(outputs["emotion"].float(), class_targets(targets["emotion"], self.classes))
        return ce, {"loss_ce": float(ce.detach())}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return decay_groups(self, cfg.lr)


@register("mae_vit", protocol="RAF-DB, AffectNet-7/8 and FERPlus test sets after fine-tuning on each "
          "training set; accuracy", backbone="mae-vit-base-16", tasks=["emotion"], optimizer="adam", lr=1e-4,
          weight_decay=0.0, batch_size=32, epochs=100, schedule="plateau", plateau_patience=30,
          plateau_factor=0.1, warmup_epochs=0, augment=["scale", "flip"])
def build(cfg: TrainConfig) -> MaeVit:
    return MaeVit(cfg)
