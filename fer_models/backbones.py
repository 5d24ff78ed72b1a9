"""Vision backbones from open_clip (PE-Core = timm Eva towers, classic ViT towers), local weights, freezing.

Only the vision tower is built (the thesis drops the text encoder: half the parameters and FLOPs).
Weights come from a local file, an `hf-hub:` id or an open_clip tag found in the local Hugging Face
cache, never from the network; without weights the tower is randomly initialised and one WARNING
line says so.

Classic open_clip ViTs (ViT-B-16, ViT-L-14) use `nn.MultiheadAttention`, whose forward reads
`out_proj.weight` directly: a LoRA wrapped around `out_proj` (or an `in_proj` parameter) gets no
gradient. `build_backbone` therefore swaps every such attention for `LinearSelfAttention`, the same
computation with `nn.Linear` in/out projections that PEFT can wrap, and which still loads CLIP
checkpoints.

Classic ViTs also load timm / ImageNet weights (a timm `VisionTransformer` state dict, e.g.
ViT-B/16 `vit_base_patch16_224.augreg2_in21k_ft_in1k`): `timm_vit_to_open_clip` renames the keys to
open_clip's, and `build_backbone` shapes the tower like timm's (no pre-norm unless the file has one,
LayerNorm eps 1e-6, identity projection so the embedding is the normed class token; timm's
classifier head is dropped). A patch-embedding bias, which open_clip's conv lacks, is folded into
the patch rows of the position embedding (the same sum). Such towers normalise with mean = std =
0.5, timm's ViT default.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.factory import load_state_dict
from open_clip.model import _build_vision_tower, resize_pos_embed  # the tower builder CLIP itself calls
from open_clip.timm_model import TimmModel
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from timm.models import eva, register_model
from torch import nn

__all__ = [  # explicit: timm's register_model below appends its model name to __all__
    "SUPPORTED", "TEST_CONFIGS", "Backbone", "LinearSelfAttention", "build_backbone", "build_clip",
    "linearize_attention", "residual_branches", "freeze", "unfreeze_last_blocks", "count_parameters", "cache_features",
    "load_cached_features", "is_timm_vit", "timm_vit_to_open_clip",
]
logger = logging.getLogger(__name__)

SUPPORTED = ("PE-Core-L-14-336", "PE-Core-B-16", "PE-Core-T-16-384", "ViT-B-16", "ViT-L-14")


@register_model
def vit_pe_core_test_patch8_32(pretrained: bool = False, **kwargs: Any) -> eva.Eva:
    """PE-Core architecture (RoPE, class token, attention pooling) shrunk to 6 x 32 wide, for CPU tests."""
    args = dict(patch_size=8, img_size=32, embed_dim=32, depth=6, num_heads=2)
    return eva.vit_pe_core_tiny_patch16_384(pretrained=False, **{**args, **kwargs})


# Tiny configs in open_clip's config schema: they take the same build, load and PEFT path as real models.
TEST_CONFIGS: dict[str, dict[str, Any]] = {
    "pe-core-tiny-test": {"embed_dim": 16, "vision_cfg": {
        "image_size": 32, "timm_model_name": "vit_pe_core_test_patch8_32", "timm_model_pretrained": False,
        "timm_pool": "map", "timm_proj": None}},
    "vit-tiny-test": {"embed_dim": 16, "vision_cfg": {
        "image_size": 32, "patch_size": 8, "width": 32, "layers": 6, "head_width": 16}},
    # CLIP with both towers (PE-CLIP's prompts): the ViT-B-16 layout shrunk; text width differs from vision's.
    "clip-tiny-test": {"embed_dim": 16, "vision_cfg": {
        "image_size": 32, "patch_size": 8, "width": 32, "layers": 6, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 6}},
}


class LinearSelfAttention(nn.Module):
    """Batch-first self-attention equal to `nn.MultiheadAttention`, with `nn.Linear` projections.

    Exists so that LoRA/DoRA can wrap `in_proj` and `out_proj` (see module docstring). Loads
    `nn.MultiheadAttention` state dicts (`in_proj_weight`/`in_proj_bias`) as well as its own.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.register_load_state_dict_pre_hook(_rename_mha_keys)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> LinearSelfAttention:
        if not mha.batch_first or mha.dropout or not mha._qkv_same_embed_dim or mha.in_proj_bias is None:
            raise ValueError("only batch-first, dropout-free self-attention with biases is supported")
        new = cls(mha.embed_dim, mha.num_heads).to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        with torch.no_grad():
            new.in_proj.weight.copy_(mha.in_proj_weight)
            new.in_proj.bias.copy_(mha.in_proj_bias)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """The `nn.MultiheadAttention` call signature used by open_clip blocks; self-attention only."""
        if key is not query or value is not query or need_weights:
            raise ValueError("LinearSelfAttention computes self-attention without weights only")
        b, n, c = query.shape
        q, k, v = self.in_proj(query).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, c)), None


def _rename_mha_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for name in ("weight", "bias"):
        if prefix + f"in_proj_{name}" in state_dict:
            state_dict[prefix + f"in_proj.{name}"] = state_dict.pop(prefix + f"in_proj_{name}")


class Backbone(nn.Module):
    """An open_clip vision tower behind one interface: images in, pooled embedding out.

    `forward` takes uint8 [B,3,H,W] in 0..255 (the loaders' contract) or float in [0,1], resizes to
    `image_size` when needed and normalises with the model's mean/std. The pieces (`embed`, `blocks`,
    `pool`) are public so methods can run the blocks themselves (MTLoRA task paths, token methods).
    """

    def __init__(self, name: str, visual: nn.Module, embed_dim: int, mean: Iterable[float], std: Iterable[float]) -> None:
        super().__init__()
        self.name = name
        self.visual = visual
        self.embed_dim = embed_dim
        self.is_eva = isinstance(visual, TimmModel)
        if self.is_eva:
            trunk = visual.trunk
            if not isinstance(trunk, eva.Eva) or getattr(trunk, "rope_mixed", False) or len(visual.head):
                raise ValueError(f"{name}: only PE-Core-style timm Eva towers are supported")
            self.width = trunk.embed_dim
            self.num_prefix_tokens = trunk.num_prefix_tokens
        else:
            if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
                raise ValueError(f"{name}: only open_clip VisionTransformer towers without attentional pooler")
            self.width = visual.transformer.width
            self.num_prefix_tokens = 1
        self.image_size = self.grid_size[0] * self.patch_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order (a property: registering them twice would duplicate state-dict keys)."""
        return self.visual.trunk.blocks if self.is_eva else self.visual.transformer.resblocks

    @property
    def patch_size(self) -> int:
        conv = self.visual.trunk.patch_embed.proj if self.is_eva else self.visual.conv1
        return conv.kernel_size[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.visual.trunk.patch_embed.grid_size if self.is_eva else self.visual.grid_size)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 or float 0..1 [B,3,H,W] -> normalised float at the model's input size."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Tokens entering the first block, and the keyword arguments every block call needs (RoPE)."""
        x = self.prepare(images)
        if not self.is_eva:
            return self.visual._embeds(x), {}
        trunk = self.visual.trunk
        x, rope = trunk._pos_embed(trunk.patch_embed(x))
        return trunk.norm_pre(x), {"rope": rope}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's tokens -> pooled embedding [B, embed_dim] (final norm, attention pool, projection)."""
        if self.is_eva:
            return self.visual.trunk.forward_head(self.visual.trunk.norm(x))
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed token sequence [B, num_prefix_tokens + grid cells, width]."""
        x, kwargs = self.embed(images)
        for block in self.blocks:
            x = block(x, **kwargs)
        return self.visual.trunk.norm(x) if self.is_eva else self.visual.ln_post(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, kwargs = self.embed(images)
        for block in self.blocks:
            x = block(x, **kwargs)
        return self.pool(x)

    def pool_modules(self) -> list[nn.Module]:
        """What follows the blocks: final norm, attention pooling, projection."""
        if self.is_eva:
            trunk = self.visual.trunk
            return [trunk.norm, trunk.attn_pool, trunk.fc_norm, trunk.head]
        return [self.visual.ln_post]

    def pool_params(self) -> list[nn.Parameter]:
        """Parameters after the blocks (FT4 trains these with the last blocks)."""
        params = [p for m in self.pool_modules() for p in m.parameters()]
        return params if self.is_eva else params + [self.visual.proj]

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load an open_clip checkpoint, a vision-tower state dict, a saved Backbone, a timm ViT (classic
        towers built for it by `build_backbone`), or (PE) a Meta/timm file.

        Position embeddings are resampled to this backbone's grid.
        """
        self.load_state(load_state_dict(str(path)))

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """`load_weights` of a state dict already read."""
        if self.is_eva:  # timm's filter knows open_clip, timm and Meta PE layouts and resamples pos_embed
            trunk = self.visual.trunk
            trunk.load_state_dict(eva.checkpoint_filter_fn(state, trunk), strict=True)
            return
        if is_timm_vit(state):
            state = timm_vit_to_open_clip(state)
        if not any(k.startswith("visual.") for k in state):
            state = {f"visual.{k}": v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
        resize_pos_embed(state, self)
        self.load_state_dict(state, strict=True)


# timm VisionTransformer -> open_clip VisionTransformer names inside a block ("blocks.N." -> "transformer.resblocks.N.")
TIMM_VIT_KEYS = {
    "norm1": "ln_1", "attn.qkv": "attn.in_proj", "attn.proj": "attn.out_proj", "norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}
TIMM_VIT_MEAN = TIMM_VIT_STD = (0.5, 0.5, 0.5)


def is_timm_vit(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a timm VisionTransformer's (timm / ImageNet layout)."""
    return "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def timm_vit_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT state dict in open_clip's VisionTransformer key layout (see the module docstring).

    A layout open_clip's tower cannot express (register tokens, LayerScale, no class token, a
    position embedding without the class row) is a ValueError naming what it found.
    """
    unsupported = [k for k in state if k.startswith(("reg_token", "fc_norm.weight", "attn_pool"))
                   or ".ls1." in k or ".ls2." in k or ".q_norm." in k]
    if unsupported or "cls_token" not in state:
        raise ValueError(f"timm ViT layout not supported here: {unsupported[:3] or 'no cls_token'}")
    pos, width = state["pos_embed"][0], state["cls_token"].shape[-1]
    if int(round(math.sqrt(len(pos) - 1))) ** 2 != len(pos) - 1:
        raise ValueError(f"timm ViT position embedding of {len(pos)} rows: expected a class row and a square grid")
    pos = pos.clone()
    if "patch_embed.proj.bias" in state:  # conv bias added to every patch token = added to their positions
        pos[1:] += state["patch_embed.proj.bias"]
    out = {"class_embedding": state["cls_token"].reshape(width), "positional_embedding": pos,
           "conv1.weight": state["patch_embed.proj.weight"], "proj": torch.eye(width),
           "ln_post.weight": state["norm.weight"], "ln_post.bias": state["norm.bias"]}
    if "norm_pre.weight" in state:
        out |= {"ln_pre.weight": state["norm_pre.weight"], "ln_pre.bias": state["norm_pre.bias"]}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "blocks":
            continue
        name, leaf = ".".join(parts[2:-1]), parts[-1]
        if name not in TIMM_VIT_KEYS:
            raise ValueError(f"timm ViT key {key!r} has no open_clip counterpart")
        out[f"transformer.resblocks.{parts[1]}.{TIMM_VIT_KEYS[name]}.{leaf}"] = value
        if name == "attn.qkv" and leaf == "weight" and f"blocks.{parts[1]}.attn.qkv.bias" not in state:
            out[f"transformer.resblocks.{parts[1]}.attn.in_proj.bias"] = value.new_zeros(len(value))  # qkv_bias=False
    return out


def residual_branches(block: nn.Module) -> tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The attention and MLP residual branches of a block (open_clip or timm Eva), each returning the
    update it adds to the stream: `x = x + attn(x, **block_kwargs); x = x + mlp(x)` equals `block(x)`.

    Adapter methods (AUFormer's MoKE groups, PE-CLIP's TDA) run blocks through these to add their
    own branch beside or after either one without re-implementing the block.
    """
    if isinstance(block, ResidualAttentionBlock):
        def attn(x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
            return block.ls_1(block.attention(block.ln_1(x), attn_mask=attn_mask))

        return attn, lambda x: block.ls_2(block.mlp(block.ln_2(x)))
    if isinstance(block, eva.EvaBlock):
        def eva_attn(x: torch.Tensor, rope: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
            out = block.attn(block.norm1(x), rope=rope)
            return block.drop_path1(out if block.gamma_1 is None else block.gamma_1 * out)

        def eva_mlp(x: torch.Tensor) -> torch.Tensor:
            out = block.mlp(block.norm2(x))
            return block.drop_path2(out if block.gamma_2 is None else block.gamma_2 * out)

        return eva_attn, eva_mlp
    raise TypeError(f"no residual branches known for {type(block).__name__}")


def linearize_attention(module: nn.Module) -> nn.Module:
    """Swap `nn.MultiheadAttention` in open_clip residual blocks for `LinearSelfAttention`, in place."""
    for block in module.modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, nn.MultiheadAttention):
            block.attn = LinearSelfAttention.from_mha(block.attn)
    return module


def _model_config(name: str) -> dict[str, Any]:
    cfg = TEST_CONFIGS.get(name) or open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown backbone {name!r}; real ones: {SUPPORTED}, tests: {tuple(TEST_CONFIGS)}")
    return {**cfg, "vision_cfg": dict(cfg["vision_cfg"])}


def _resolve_weights(name: str, pretrained: str) -> tuple[str, dict[str, Any]]:
    """A local weights file for `pretrained` (file, `hf-hub:org/repo`, or open_clip tag), and the tag's config.

    Hub files come from the local Hugging Face cache only (no network here).
    """
    if os.path.isfile(pretrained):
        return pretrained, {}
    tag_cfg: dict[str, Any] = {}
    if pretrained.startswith("hf-hub:"):
        repo, filename = pretrained.removeprefix("hf-hub:"), ""
    else:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if name not in TEST_CONFIGS else {}
        if not tag_cfg.get("hf_hub"):
            raise ValueError(f"{pretrained!r} is not a file, an hf-hub: id or a hub-backed open_clip tag of {name}")
        repo, filename = os.path.split(tag_cfg["hf_hub"])
    for candidate in [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]:
        try:
            return hf_hub_download(repo, candidate, local_files_only=True), tag_cfg
        except LocalEntryNotFoundError:
            continue
    raise FileNotFoundError(f"weights {pretrained!r} are not in the local Hugging Face cache and cannot be downloaded here")


def _norm_stats(name: str, tag_cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    tags = open_clip.list_pretrained_tags_by_model(name)
    cfg = tag_cfg or (open_clip.get_pretrained_cfg(name, tags[0]) if tags else {})
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


def build_backbone(name: str, pretrained: str | None = None, image_size: int | None = None) -> Backbone:
    """The vision tower of open_clip model `name` (see SUPPORTED, TEST_CONFIGS), text tower never built.

    `pretrained`: a local checkpoint file, an `hf-hub:` id or an open_clip tag (both from the local HF
    cache). None: random init, logged as a WARNING. `image_size` overrides the input resolution
    (position embeddings are resampled on load).
    """
    cfg = _model_config(name)
    path, tag_cfg = _resolve_weights(name, pretrained) if pretrained else (None, {})
    vision_cfg, embed_dim, stats = cfg["vision_cfg"], cfg["embed_dim"], _norm_stats(name, tag_cfg)
    if image_size and "timm_model_name" not in vision_cfg:
        vision_cfg["image_size"] = image_size
    state = load_state_dict(path) if path is not None and "timm_model_name" not in vision_cfg else None
    if state is not None and is_timm_vit(state):  # shape the tower like timm's ViT (module docstring)
        vision_cfg |= {"no_ln_pre": "norm_pre.weight" not in state, "norm_kwargs": {"eps": 1e-6}}
        embed_dim, stats = vision_cfg["width"], (TIMM_VIT_MEAN, TIMM_VIT_STD)
    quick_gelu = bool(cfg.get("quick_gelu") or tag_cfg.get("quick_gelu"))
    visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
    if image_size and isinstance(visual, TimmModel):
        visual.set_input_size(image_size)
    backbone = Backbone(name, linearize_attention(visual), embed_dim, *stats)
    if path is None:
        logger.warning("%s: no pretrained weights given, backbone is RANDOMLY INITIALISED; "
                       "results will not match the papers", name)
    else:
        backbone.load_weights(path) if state is None else backbone.load_state(state)
        logger.info("%s: loaded pretrained weights from %s", name, path)
    return backbone


def build_clip(name: str, pretrained: str | None = None) -> nn.Module:
    """The full open_clip model (image and text towers), e.g. for PE-CLIP's prompts; same weight rules.

    Attention is linearized as in `build_backbone`, in both towers, so adapters and PEFT can wrap it.
    """
    if name in TEST_CONFIGS:
        return linearize_attention(open_clip.model.CLIP(**_model_config(name)))
    return linearize_attention(_create_clip(name, pretrained))


def _create_clip(name: str, pretrained: str | None) -> nn.Module:
    if pretrained is None:
        logger.warning("%s: no pretrained weights given, CLIP model is RANDOMLY INITIALISED; "
                       "results will not match the papers", name)
        return open_clip.create_model(name, pretrained_text=False)
    path, tag_cfg = _resolve_weights(name, pretrained)
    return open_clip.create_model(name, pretrained=path, pretrained_text=False,
                                  force_quick_gelu=bool(tag_cfg.get("quick_gelu")))


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of `module`."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze_last_blocks(backbone: Backbone, n: int) -> Backbone:
    """Thesis FT4 (n=4): everything frozen except the last n blocks and the pooling/projection after them."""
    freeze(backbone)
    for block in backbone.blocks[len(backbone.blocks) - n:]:
        block.requires_grad_(True)
    for p in backbone.pool_params():
        p.requires_grad_(True)
    return backbone


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@torch.no_grad()
def cache_features(backbone: nn.Module, loader: Iterable[tuple[torch.Tensor, dict]], path: str | Path) -> Path:
    """Pooled embeddings of every sample (eval mode), saved as {"sample_ids", "features"} for probe methods.

    Use an eval loader (each sample once): a repeated sample id is an error.
    """
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    ids: list[str] = []
    features: list[torch.Tensor] = []
    for images, targets in loader:
        features.append(backbone(images.to(device)).float().cpu())
        ids.extend(targets["sample_id"])
    backbone.train(was_training)
    if len(set(ids)) != len(ids):
        raise ValueError("the loader repeated sample ids; cache features from an eval loader")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"sample_ids": ids, "features": torch.cat(features)}, path)
    return path


def load_cached_features(path: str | Path) -> dict[str, torch.Tensor]:
    """sample_id -> pooled embedding [D], from `cache_features`."""
    data = torch.load(path, weights_only=True)
    return dict(zip(data["sample_ids"], data["features"]))


# The MAE encoder/decoder sizes (methods/mae.py builds them): backbone names like open_clip's, known
# here so a config can check a name without importing the methods.
@dataclass(frozen=True)
class ViTSize:
    """An encoder/decoder pair; `image_size` is the default, `cfg.image_size` may change it."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    decoder_width: int
    decoder_depth: int
    decoder_heads: int


SIZES: dict[str, ViTSize] = {
    "mae-vit-tiny": ViTSize(224, 16, 192, 12, 3, 256, 4, 8),
    "mae-vit-small": ViTSize(224, 16, 384, 12, 6, 256, 4, 8),
    "mae-vit-base-16": ViTSize(224, 16, 768, 12, 12, 512, 8, 16),
    "mae-test": ViTSize(32, 8, 32, 2, 2, 16, 2, 2),
}


def vit_size(name: str) -> ViTSize:
    try:
        return SIZES[name]
    except KeyError:
        raise KeyError(f"unknown MAE size {name!r}; known: {sorted(SIZES)}") from None
