"""Training configuration as data: one dataclass, read from params.yaml and `--set key=value` overrides.

Checked when it is made (unknown keys, types, choices, ranges), so a mistake is one clear error in
a second or two, before any model is built or any flow starts."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fer_data.shards import fingerprint
from fer_models.registry import method_defaults, require

# Settings that decide where a run goes and how fast, not what it learns. They stay out of `digest`,
# so a run keeps its folder (and resumes) on another device or with more loader workers; like any
# rerun on other hardware, those may round or order batches differently, but the experiment is the same.
EXECUTION_ONLY = ("out", "num_workers", "device", "threads", "devices", "nnodes", "node_rank", "master_addr",
                  "master_port", "log_seen", "compile", "activation_checkpointing", "channels_last", "world_size")
PEFT_MODES = ("lp", "ft4", "lora", "dora", "lora_plus", "dora_plus", "mtlora")  # how multitask tunes its backbone
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "exponential", "plateau", "constant")
AUGMENT_OPS = ("crop", "scale", "rotate", "flip", "erase", "noise")  # the order fer_models.augment applies them
EMOTION_CLASSES = (7, 8)
RECIPES = ("params", "paper")  # fer train --recipe: params.yaml over the paper recipe, or the paper recipe whole
# What `--recipe paper` still takes from params.yaml: where the data is and how the run executes; every
# setting that decides what is learnt comes from the method's paper recipe (its `register` call).
DATA_KEYS = ("catalog", "train_where", "val_where", "test_where", "fold", *EXECUTION_ONLY)
DEVICE_TYPES = ("cpu", "cuda", "mps")
BOUNDS = {  # numeric settings' valid ranges (None, where a field allows it, means "not set")
    "epochs": (1, math.inf), "batch_size": (1, math.inf), "grad_accum": (1, math.inf), "rank": (1, math.inf),
    "epoch_samples": (1, math.inf), "fold": (1, math.inf), "devices": (1, math.inf), "nnodes": (1, math.inf),
    "node_rank": (0, math.inf), "master_port": (1, 65535), "image_size": (1, math.inf), "num_workers": (0, math.inf), "threads": (0, math.inf),
    "early_stop_patience": (0, math.inf), "lr": (0, math.inf), "weight_decay": (0, math.inf),
    "warmup_fraction": (0, 1), "dropout": (0, 1), "mae_mask_ratio": (0, 1),
    "cafe_drop_channels": (0, math.inf), "momentum": (0, 1), "lr_reference_batch": (1, math.inf), "grad_clip": (0, math.inf), "lr_gamma": (0, 1),
    "plateau_factor": (0, 1), "plateau_patience": (1, math.inf), "warmup_epochs": (0, math.inf),
    "rotate_degrees": (0, 180), "flip_p": (0, 1), "erase_p": (0, 1), "noise_std": (0, 1), "noise_p": (0, 1),
    "mixup": (0, math.inf), "fmix": (0, math.inf), "fmix_decay": (0, math.inf), "mix_prob": (0, 1), "frames": (1, math.inf),
}
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "emotion_classes": EMOTION_CLASSES}
RANGES = {"crop_scale": (0, 1), "scale_range": (0.01, 100), "erase_scale": (0, 1), "betas": (0, 1)}  # [low, high] pairs


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
    cafe_drop_channels: int = 10  # channels zeroed per group in the group-wise CE (authors' code: 10 of 73)
    cafe_mask_weights: str | None = None  # ResNet-18 face-recognition weights (msceleb); None: random init
    # standardise the fixed feature per channel (BatchNorm, no affine) before masking: not in the authors'
    # code (real CLIP features have usable scale); a random backbone's are all but zero, so the demo needs it
    cafe_feature_norm: bool = False
    # AUFormer: per-AU MoKE bottleneck width, MRF dilation rates (3x3 depthwise convs), MDWA-Loss
    # margin m and gamma bounds [B_L, B_R] (methods/auformer.py says why 4 and not 8)
    moke_dim: int = 4
    moke_dilations: list[int] = field(default_factory=lambda: [1, 3, 5])
    mdwa_margin: float = 0.05
    mdwa_gamma: list[float] = field(default_factory=lambda: [1.0, 2.0])
    auformer_moke_weight: float = 1.0  # the MoKE-specific heads' MDWA-Loss next to the main head's
    # PE-CLIP: bottleneck reduction of the TDA and the shared adapter, MaPLe prompt tokens per layer
    # and the number of layers (from the first) that get fresh prompts, cosine-logit temperature
    pe_clip_reduction: int = 8
    pe_clip_prompt_tokens: int = 2
    pe_clip_prompt_depth: int = 9
    pe_clip_temperature: float = 0.01
    # PE-CLIP layout: a shared adapter per block and tower at native width (the authors' code) or one
    # core for all ("shared"); TDA after the MLP (the authors') or after attention too; the prompt
    # learner's own LR (the adapters take `lr`)
    pe_clip_adapters: Literal["per_block", "shared"] = "per_block"
    pe_clip_tda: Literal["mlp", "attn_mlp"] = "mlp"
    pe_clip_prompt_lr: float = 3e-5
    # MAE / PF-ViT: share of patches the MAE encoder never sees (visible: int(N * (1 - ratio))); PF-ViT
    # loss weights next to cross-entropy (paper: terms balanced by magnitude, no values), and the
    # discriminator's own optimiser (paper: Adam at 1e-4; its betas are lost in our text: GAN-usual)
    mae_mask_ratio: float = 0.75
    pf_vit_rec_weight: float = 1.0
    pf_vit_adv_weight: float = 1.0
    # PF-ViT's orthogonality loss through a frozen face-recognition network (an ONNX file; None: left
    # out), and how the terms are weighed: "magnitude" divides each by its running mean, "fixed" does not
    pf_vit_face_model: str | None = None
    pf_vit_orth_weight: float = 1.0
    pf_vit_balance: Literal["magnitude", "fixed"] = "magnitude"
    pf_vit_disc_lr: float = 1e-4
    pf_vit_disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    # optimisation. `lr` and `weight_decay` are the base values; `Method.param_groups` names groups that
    # scale or replace them (LoRA+ B matrices at 6x, PE-CLIP prompts at their own LR); `fer recipe` shows them.
    optimizer: str = "adamw"  # adamw | adam (L2 weight decay, as CAFE's authors) | sgd (with `momentum`)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw
    momentum: float = 0.9  # sgd
    lr: float = 1e-3
    lr_reference_batch: int | None = None  # set: LR scales by batch_size * grad_accum / this (MAE: 256)
    weight_decay: float = 1e-4
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    epochs: int = 5
    batch_size: int = 32
    grad_accum: int = 1
    # LR schedule after the linear warm-up: cosine (to 0 at the last step) | exponential (x lr_gamma after
    # every epoch) | plateau (x plateau_factor after plateau_patience epochs without improvement of the
    # validation headline, the one best.pt follows) | constant
    schedule: str = "cosine"
    lr_gamma: float = 0.9
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    warmup_fraction: float = 0.1  # warm-up steps as a share of all steps, unless warmup_epochs is set
    warmup_epochs: float | None = None  # warm-up length in epochs (0: none); overrides warmup_fraction
    # Augmentation of training batches on the device (fer_models.augment), each sample its own random draw,
    # every frame of a clip the same one; never at evaluation. `augment` lists the ops, applied in
    # AUGMENT_OPS order: crop (random resized crop, area share in crop_scale, aspect 3/4..4/3), scale (zoom
    # by a factor in scale_range about the centre, the border padded), rotate (+-rotate_degrees), flip
    # (horizontal, p flip_p), erase (RandomErasing, p erase_p, area share in erase_scale, aspect 0.3..3.3,
    # filled with mid grey), noise (Gaussian, std noise_std in 0..1 pixel units, p noise_p).
    augment: list[str] = field(default_factory=list)
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    scale_range: list[float] = field(default_factory=lambda: [0.9, 1.1])
    rotate_degrees: float = 10.0
    flip_p: float = 0.5
    erase_p: float = 0.5
    erase_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    noise_std: float = 0.02
    noise_p: float = 0.5
    # Batch mixing (labels mixed in proportion): Beta(alpha, alpha) mixing weight, 0 = off. With both on,
    # each mixed batch uses one of them at random; mix_prob of the batches are mixed at all.
    mixup: float = 0.0
    fmix: float = 0.0
    fmix_decay: float = 3.0  # FMix's spectrum decay power
    mix_prob: float = 1.0
    # frames per clip the model sees: None = every stored frame; k = k frames spread evenly over them
    frames: int | None = None
    # emotion head: 7 basic classes (contempt ignored) or 8 (contempt kept: AffectNet-8, FERPlus)
    emotion_classes: int = 7
    epoch_samples: int | None = None  # None: one pass over the training selection per epoch
    early_stop_patience: int = 0  # epochs without val improvement before stopping; 0 = never
    seed: int = 0
    num_workers: int = 0
    # torch's CPU threads while training. 1: the same bytes on every machine (a sum split over N threads
    # rounds differently for each N), and no slower for the small CPU models of the demo; 0: one per
    # core, faster for large models on CPU, but the weights then depend on the machine's core count.
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # Several processes (fer_models.distributed): `devices` per machine (GPUs, or CPU processes), on `nnodes`
    # machines, this one `node_rank`, all meeting at master_addr:master_port (None: a free port on one
    # machine, torchrun's 29500 across several). `batch_size` stays the global batch, split over them.
    devices: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    world_size: int = 1  # filled by the trainer (devices x nnodes): what config.json records of the run
    log_seen: bool = False  # write seen.json: samples read per epoch over all processes, and how many distinct
    # GPU speed and memory: torch.compile the model, recompute activations in the backward (open_clip's
    # set_grad_checkpointing, where the backbone has it), channels-last images and weights
    compile: bool = False
    activation_checkpointing: bool = False
    channels_last: bool = False
    # The run folder. Default runs/<method>[-<peft> for multitask]-<first 8 hex of digest()>: a folder
    # belongs to one configuration, so two experiments never share (and mix) checkpoints, and running
    # the same command again finds its own run to resume.
    out: str | None = None

    def __post_init__(self) -> None:
        """Every choice and range, named before anything is built (a mistyped PEFT mode fails here, not
        after the backbone is loaded), then the default run folder."""
        import open_clip

        from fer_models.backbones import SIZES, TEST_CONFIGS

        check_values(vars(self))
        require(self.method)
        if self.backbone not in TEST_CONFIGS and self.backbone not in SIZES \
                and open_clip.get_model_config(self.backbone) is None:
            raise ValueError(f"unknown backbone {self.backbone!r}: expected an open_clip model name "
                             f"(`open_clip.list_models()`), an MAE size ({', '.join(SIZES)}) or a test config")
        if self.out is None:
            mode = f"-{self.peft}" if self.method == "multitask" else ""
            self.out = f"runs/{self.method}{mode}-{self.digest()[:8]}"

    def digest(self) -> str:
        """What the run learns, as one hash: every setting but `EXECUTION_ONLY`."""
        return config_digest(self.to_dict())

    @classmethod
    def load(cls, params: str | Path | None = None, sections: Sequence[str] = ("train",),
             overrides: list[str] | None = None, recipe: str = "params") -> "TrainConfig":
        """The method's paper recipe (its `register` defaults over TrainConfig's), then fields from each of
        `params[sections]` in order (a method's own section after the shared `train` one), then `key=value`
        overrides (YAML-typed). `recipe="paper"` takes only DATA_KEYS from the params sections: the paper's
        settings stay whole, on the params file's data. A missing file or section, an unknown key or a
        value of the wrong type is a one-line ValueError."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
        values: dict[str, Any] = {}
        if params is not None:
            tree = _read_params(Path(params))
            for section in sections:
                if not isinstance(tree.get(section), dict):
                    raise ValueError(f"{params}: no `{section}:` section of settings; it has: {', '.join(tree)}")
                values.update({k: v for k, v in tree[section].items() if recipe == "params" or k in DATA_KEYS})
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            values[key.strip()] = yaml.safe_load(raw)
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(names)}"
                raise ValueError(f"unknown training setting {key!r}: {hint}")
        values = _typed(cls, values)
        check_values(values)  # what was typed, before the method files (torch, open_clip) load: ~1 s, not ~12
        return cls(**{**method_defaults(values.get("method", cls.method)), **values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_digest(values: dict[str, Any]) -> str:
    """`TrainConfig.digest` of a config's fields, e.g. a run folder's config.json."""
    return fingerprint({k: v for k, v in values.items() if k not in EXECUTION_ONLY})


def check_values(values: dict[str, Any]) -> None:
    """The checks that need no method file, on whichever settings `values` holds: choices and ranges."""
    if values.get("peft", PEFT_MODES[0]) not in PEFT_MODES:
        raise ValueError(f"peft {values['peft']!r}: expected one of {', '.join(PEFT_MODES)}")
    device = values.get("device", "auto")
    if device != "auto" and device.split(":")[0] not in DEVICE_TYPES:
        raise ValueError(f"device {device!r}: expected auto or one of {', '.join(DEVICE_TYPES)} (cuda:N)")
    if values.get("node_rank", 0) >= values.get("nnodes", 1):
        raise ValueError(f"node_rank={values['node_rank']}: expected 0 to nnodes - 1 ({values.get('nnodes', 1) - 1})")
    for name, choices in CHOICES.items():
        if name in values and values[name] not in choices:
            raise ValueError(f"{name} {values[name]!r}: expected one of {', '.join(map(str, choices))}")
    unknown = [op for op in values.get("augment") or [] if op not in AUGMENT_OPS]
    if unknown:
        raise ValueError(f"augment {unknown}: the ops are {', '.join(AUGMENT_OPS)}")
    for name, (low, high) in BOUNDS.items():
        value = values.get(name)
        if value is not None and not low <= value <= high:
            expected = f"{low} to {high}" if high < math.inf else f"at least {low}"
            raise ValueError(f"{name}={value}: expected {expected}")
    for name, (low, high) in RANGES.items():
        pair = values.get(name)
        if pair is not None and (len(pair) != 2 or not low <= pair[0] <= pair[1] <= high):
            raise ValueError(f"{name}={pair}: expected [low, high] with {low} <= low <= high <= {high}")


def _read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not YAML: {' '.join(str(err).split())}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected sections of settings (a YAML mapping), got {type(tree).__name__}")
    return tree


def _typed(cls: type[TrainConfig], values: dict[str, Any]) -> dict[str, Any]:
    """Each YAML-typed value checked against (and converted to) its field's type by pydantic, before
    the method files load: a wrong type fails in a fraction of a second."""
    import pydantic

    hints = typing.get_type_hints(cls)
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = pydantic.TypeAdapter(hints[key]).validate_python(value)
        except pydantic.ValidationError as err:
            raise ValueError(f"{key}={value!r}: {err.errors()[0]['msg']}") from None
    return typed
