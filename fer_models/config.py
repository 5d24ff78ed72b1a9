"""Training configuration as data: one dataclass, read from params.yaml and `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fer_models.registry import method_defaults


@dataclass
class TrainConfig:
    method: str = "multitask"
    # data: SQL selections over the catalog's samples
    catalog: str = "data/catalog.duckdb"
    train_where: str = "split = 'train' AND kind = 'image'"
    val_where: str = "split = 'val' AND kind = 'image'"
    test_where: str = "split = 'test' AND kind = 'image'"
    tasks: list[str] = field(default_factory=lambda: ["emotion", "age_bin", "gender"])
    # Subject-independent k-fold protocols (BP4D, DISFA 3 folds; DFEW 5): fold k is the test set, the
    # other folds train; `extra.fold` of each sample decides. None: the `split` column decides.
    fold: int | None = None
    aus: list[int] = field(default_factory=list)  # empty: every AU labelled in the training selection
    au_rates: list[float] = field(default_factory=list)  # filled by the trainer from the catalog
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
    # AUFormer: per-AU MoKE bottleneck width, MRF dilation rates (3x3 depthwise convs), MDWA-Loss
    # margin m and gamma bounds [B_L, B_R] (methods/auformer.py says why 4 and not 8)
    moke_dim: int = 4
    moke_dilations: list[int] = field(default_factory=lambda: [1, 3, 5])
    mdwa_margin: float = 0.05
    mdwa_gamma: list[float] = field(default_factory=lambda: [1.0, 2.0])
    # PE-CLIP: bottleneck reduction of the TDA and the shared adapter, MaPLe prompt tokens per layer
    # and the number of layers (from the first) that get fresh prompts, cosine-logit temperature
    pe_clip_reduction: int = 8
    pe_clip_prompt_tokens: int = 2
    pe_clip_prompt_depth: int = 9
    pe_clip_temperature: float = 0.01
    # MAE / PF-ViT: share of patches the MAE encoder never sees (visible: int(N * (1 - ratio))); PF-ViT
    # loss weights next to cross-entropy (paper: terms balanced by magnitude, no values), and the
    # discriminator's own optimiser (paper: Adam at 1e-4; its betas are lost in our text: GAN-usual)
    mae_mask_ratio: float = 0.75
    pf_vit_rec_weight: float = 1.0
    pf_vit_adv_weight: float = 1.0
    pf_vit_disc_lr: float = 1e-4
    pf_vit_disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
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
    def load(cls, params: str | Path | None = None, sections: Sequence[str] = ("train",),
             overrides: list[str] | None = None) -> "TrainConfig":
        """The method's paper defaults, then fields from each of `params[sections]` in order (a method's
        own section after the shared `train` one; unknown keys are an error), then `key=value`
        overrides (YAML-typed)."""
        values: dict[str, Any] = {}
        if params and Path(params).exists():
            tree = yaml.safe_load(Path(params).read_text()) or {}
            for section in sections:
                values.update(tree.get(section) or {})
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            values[key.strip()] = yaml.safe_load(raw)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(names)}")
        return cls(**{**method_defaults(values.get("method", cls.method)), **values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
