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
from typing import Any

import yaml

from fer_data.shards import fingerprint
from fer_models.registry import method_defaults, require

# Settings that decide where a run goes and how fast, not what it learns. They stay out of `digest`,
# so a run keeps its folder (and resumes) on another device or with more loader workers; like any
# rerun on other hardware, those may round or order batches differently, but the experiment is the same.
EXECUTION_ONLY = ("out", "num_workers", "device", "threads")
PEFT_MODES = ("lp", "ft4", "lora", "dora", "lora_plus", "mtlora")  # how multitask tunes its backbone
DEVICE_TYPES = ("cpu", "cuda", "mps")
BOUNDS = {  # numeric settings' valid ranges (None, where a field allows it, means "not set")
    "epochs": (1, math.inf), "batch_size": (1, math.inf), "grad_accum": (1, math.inf), "rank": (1, math.inf),
    "epoch_samples": (1, math.inf), "fold": (1, math.inf), "image_size": (1, math.inf), "num_workers": (0, math.inf), "threads": (0, math.inf),
    "early_stop_patience": (0, math.inf), "lr": (0, math.inf), "weight_decay": (0, math.inf),
    "warmup_fraction": (0, 1), "dropout": (0, 1), "mae_mask_ratio": (0, 1),
}


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
    # torch's CPU threads while training. 1: the same bytes on every machine (a sum split over N threads
    # rounds differently for each N), and no slower for the small CPU models of the demo; 0: one per
    # core, faster for large models on CPU, but the weights then depend on the machine's core count.
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
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
             overrides: list[str] | None = None) -> "TrainConfig":
        """The method's paper defaults, then fields from each of `params[sections]` in order (a method's
        own section after the shared `train` one), then `key=value` overrides (YAML-typed). A missing
        file or section, an unknown key or a value of the wrong type is a one-line ValueError."""
        values: dict[str, Any] = {}
        if params is not None:
            tree = _read_params(Path(params))
            for section in sections:
                if not isinstance(tree.get(section), dict):
                    raise ValueError(f"{params}: no `{section}:` section of settings; it has: {', '.join(tree)}")
                values.update(tree[section])
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
    for name, (low, high) in BOUNDS.items():
        value = values.get(name)
        if value is not None and not low <= value <= high:
            expected = f"{low} to {high}" if high < math.inf else f"at least {low}"
            raise ValueError(f"{name}={value}: expected {expected}")


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
