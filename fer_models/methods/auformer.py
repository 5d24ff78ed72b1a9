"""AUFormer (Yuan et al., ECCV 2024): a frozen ViT with one Mixture-of-Knowledge Expert (MoKE) per
AU in a group beside the attention and another beside the MLP of every block, trained with the
Margin-truncated Difficulty-aware Weighted Asymmetric loss (MDWA-Loss, `fer_models.losses.mdwa_loss`).

A MoKE is down-projection -> Multi-Receptive-Field (MRF) operator -> Context-Aware (CA) operator ->
up-projection. Each block becomes

    x = x + attn(x) + mean_i MoKE^attn_i(LN1(x))
    x = x + mlp(x)  + mean_i MoKE^mlp_i(LN2(x))

with `attn`, `mlp` from `backbones.residual_branches` (open_clip ViT and timm Eva blocks alike).
Two sets of heads (the paper's main and MoKE-specific ones): the main head reads the final [CLS]
token and predicts every AU; the MoKE-specific head of AU i reads the [CLS] feature of AU i's own
MoKE in the last group. The loss is MDWA-Loss on the main logits plus `auformer_moke_weight` (1)
times MDWA-Loss on the MoKE-specific ones; predictions (`outputs["au"]`) are the main head's.

Weights: a CLIP-layout (open_clip) ViT-B/16 or a timm / ImageNet one (`backbones.timm_vit_to_open_clip`:
`pretrained` may be a saved timm `vit_base_patch16_224` state dict).

The AU list is the training selection's (the trainer fills `aus` from the catalog: BP4D's coded AUs
on BP4D, DISFA's on DISFA) unless set: the papers' protocols (BP4D 12 AUs, DISFA 8) set it per stage.
Only a model built with no data at all (`fer recipe`, `fer model-info`) falls back to BP4D's 12, with
a WARNING, to have a size to report.

The recipe (registered) is ours, not the paper's: our text of the paper gives no optimiser, LR,
batch or epochs, and the authors' repository holds no code yet. It follows the AU-detection
convention the paper compares against: AdamW at 5e-4, weight decay 5e-4, batch 64, 20 epochs of
cosine after one warm-up epoch, the backbone's 224 px, random resized crop (area 0.8-1, about a 224
crop of a 256 face) and horizontal flip.

Cost: the C experts of a group are never looped over. Their down-projections are one
Linear(D, C*r); the MRF's depthwise dilated convs over all C*r channels are one gather of every
grid offset's source token and one weighted sum (`MoKEGroup.mrf_apply`); CA is one
scaled-dot-product attention call with the experts as heads; the group average of the C
up-projections is one Linear(C*r, D) (the mean of W_i h_i is [W_1 .. W_C] [h_1; ..; h_C] / C); the
per-expert up-projections run only on the [CLS] token of the last group, for the heads. On
ViT-B-16 at 224 px the forward costs 34.4 GFLOPs against the plain tower's 33.7 (+2.1%).

Choices the paper leaves open (our summary of it names the operators, not their internals):
- Input of a group: the block's frozen pre-norm output (LN1 / LN2, the same tokens the attention /
  MLP read), as in Convpass, the parallel conv adapter MoKE builds on; the block input itself
  carries CLIP's large-norm outlier channels.
- Bottleneck width `moke_dim` = 4. Convpass uses 8, but with a private down- and up-projection per
  AU that is 3.84M trainable parameters on ViT-B-16 with 12 AUs (4.3%), over this project's 3%
  budget; 4 gives 2.04M of 88.2M (2.31%).
- MRF: parallel 3x3 depthwise convolutions with dilations `moke_dilations` = (1, 3, 5) (the
  summary's example rates) over the patch grid, summed. Prefix tokens ([CLS], registers) are not on
  the grid: each is treated as its own 1x1 map with zero padding, as Convpass treats [CLS], so only
  each kernel's centre tap and bias act on it.
- CA: parameter-free token correlation inside each expert's r-dim space, c = m + softmax(m m^T /
  sqrt(r)) m, over all tokens including [CLS] (so each AU's [CLS] gathers context from the face).
- Activations: GELU after the down-projection and after CA, none between MRF and CA.
- Each MoKE's up-projection has its own bias; only their mean reaches the stream.
- Init: down-projections Xavier-uniform (Convpass), convs PyTorch's default, up-projections
  N(0, 1e-3^2) with zero bias: small enough that the frozen backbone's stream is barely moved at
  init, but not zero, so every trainable tensor gets a gradient from the first step (a zero
  up-projection would leave the down-projections and convs without one).
- MoKE-specific head: the feature of AU i is the final stream's [CLS] with the last group's average swapped
  for AU i's own MoKE output (x_cls - mean_j y_j + y_i), through the backbone's frozen final norm,
  then a per-AU Linear(D, 1). Reading y_i alone would give the heads an all-but-zero input at init.
- MDWA-Loss rates: `cfg.au_rates` in `cfg.aus` order (the trainer fills them from the training
  selection); when empty, equal rates (every w_i = 1, gamma_i = B_L). m = 0.05, [B_L, B_R] = [1, 2].
- Main head: Linear(D, C) on the final-normed [CLS]; MoKE-specific heads as the "AU head" above.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from fer_data.datasets.bp4d import BP4D_AUS
from fer_models import backbones
from fer_models.config import TrainConfig
from fer_models.losses import mdwa_loss
from fer_models.methods import Method
from fer_models.registry import register

log = logging.getLogger(__name__)
UP_INIT_STD = 1e-3


class MoKEGroup(nn.Module):
    """`experts` MoKEs (one per AU) of bottleneck `dim` beside one residual branch, batched."""

    def __init__(self, width: int, experts: int, dim: int, dilations: Sequence[int],
                 grid: tuple[int, int], num_prefix: int) -> None:
        super().__init__()
        self.experts, self.dim, self.grid, self.num_prefix = experts, dim, grid, num_prefix
        channels = experts * dim
        self.down = nn.Linear(width, channels)  # rows [i*dim:(i+1)*dim] are expert i's projection
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        # The convs hold the MRF's parameters (PyTorch's init, the checkpoint layout); `mrf_apply` applies them.
        self.mrf = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=channels)
                                 for d in dilations)
        offsets, sources = _mrf_sources(grid, dilations, num_prefix)
        self.register_buffer("mrf_offsets", offsets, persistent=False)
        self.register_buffer("mrf_sources", sources, persistent=False)
        self.up_weight = nn.Parameter(torch.randn(width, experts, dim) * UP_INIT_STD)  # [:, i] is expert i's
        self.up_bias = nn.Parameter(torch.zeros(experts, width))

    def hidden(self, x: Tensor) -> Tensor:
        """Normed tokens [B, N, D] -> every expert's activation before its up-projection [B, N, C*r]."""
        h = F.gelu(self.down(x))
        b, n, channels = h.shape
        m = self.mrf_apply(h).view(b, n, self.experts, self.dim).transpose(1, 2)
        c = m + F.scaled_dot_product_attention(m, m, m)  # [B, C, N, r]: the experts are the heads
        return F.gelu(c).transpose(1, 2).reshape(b, n, channels)

    def mrf_apply(self, h: Tensor) -> Tensor:
        """The summed dilated depthwise convs over the grid tokens of `h` [B, N, C*r] (each prefix token
        its own zero-padded 1x1 map), exactly the convs' sums: the kernels' taps are summed per grid
        offset, every offset's source token is gathered at once (a zero token where it falls in the
        padding) and weighted per channel. Why not the convs: PyTorch's CPU backward of depthwise
        dilated convs over a ViT's small grid is slow, and a per-channel [P, P] map applied with bmm
        runs one small mm per channel on CPU; whole AUFormer training steps at the demo's size (192
        channels, 4 x 4 grid, batch 8) take 415 ms with the bmm, 313 ms with this gather. The gather
        keeps [B, offsets, N, C*r] for the backward: 25 offsets on ViT-B-16's 14 x 14 grid, ~60 MB a
        group at batch 64."""
        b, n, channels = h.shape
        kernels = torch.cat([conv.weight.flatten(1) for conv in self.mrf], 1)  # [C*r, 9 x dilations]
        weights = kernels.new_zeros(len(self.mrf_sources) + 1, channels).index_add(0, self.mrf_offsets, kernels.T)
        padded = torch.cat([h, h.new_zeros(b, 1, channels)], 1)
        taps = padded.index_select(1, self.mrf_sources.flatten()).view(b, len(self.mrf_sources), n, channels)
        return (taps * weights[:-1, None]).sum(1) + sum(conv.bias for conv in self.mrf)

    def forward(self, h: Tensor) -> Tensor:
        """`hidden`'s output -> the group's average of its experts' up-projections [B, N, D]."""
        return F.linear(h, self.up_weight.flatten(1)) / self.experts + self.up_bias.mean(0)

    def per_expert(self, h: Tensor) -> Tensor:
        """`hidden`'s output at one token [B, C*r] -> each expert's own up-projection [B, C, D]."""
        h = h.view(len(h), self.experts, self.dim)
        return torch.einsum("bcr,dcr->bcd", h, self.up_weight) + self.up_bias


def _mrf_sources(grid: tuple[int, int], dilations: Sequence[int], num_prefix: int) -> tuple[Tensor, Tensor]:
    """The dilations' 3x3 taps (flattened in order) as offsets on the grid: each tap's offset index
    [9 x dilations], and per offset the token each output token reads [offsets, N], N (one past the
    last token: the zero padding) where it falls outside the grid. Taps of one offset (every centre)
    share it; a tap whose offset never lands inside the grid gets the index one past the last offset
    (`mrf_apply` drops its weight). A prefix token is its own 1x1 map: only the centre offset reads it."""
    rows, cols = grid
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    y, x = y.flatten(), x.flatten()
    n = num_prefix + rows * cols
    offsets: dict[tuple[int, int], int | None] = {}  # an offset's row in `sources`, None: never inside
    tap_offsets, sources = [], []
    for d in dilations:
        for tap in range(9):
            dy, dx = (tap // 3 - 1) * d, (tap % 3 - 1) * d
            if (dy, dx) not in offsets:
                inside = (y + dy >= 0) & (y + dy < rows) & (x + dx >= 0) & (x + dx < cols)
                offsets[dy, dx] = None
                if inside.any():
                    offsets[dy, dx] = len(sources)
                    grid_source = torch.where(inside, num_prefix + (y + dy) * cols + x + dx, n)
                    prefix_source = torch.arange(num_prefix) if (dy, dx) == (0, 0) else torch.full((num_prefix,), n)
                    sources.append(torch.cat([prefix_source, grid_source]))
            tap_offsets.append(offsets[dy, dx])
    dropped = len(sources)  # the row of weights `mrf_apply` leaves out
    return torch.tensor([dropped if i is None else i for i in tap_offsets]), torch.stack(sources)


def _pre_norms(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The norms that `residual_branches`' attention and MLP branches apply first."""
    return (block.ln_1, block.ln_2) if isinstance(block, ResidualAttentionBlock) else (block.norm1, block.norm2)


class AUFormer(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["au"]
        aus = cfg.aus
        if not aus:
            log.warning("auformer: no AU list (no training selection filled it); sized for BP4D's %d AUs",
                        len(BP4D_AUS))
            aus = list(BP4D_AUS)
        self.aus = list(aus)
        if cfg.au_rates and len(cfg.au_rates) != len(aus):
            raise ValueError(f"{len(cfg.au_rates)} AU occurrence rates for {len(aus)} AUs")
        self.backbone = backbones.freeze(backbones.build_backbone(cfg.backbone, cfg.pretrained, cfg.image_size))
        n_aus, width = len(aus), self.backbone.width

        def group() -> MoKEGroup:
            return MoKEGroup(width, n_aus, cfg.moke_dim, cfg.moke_dilations, self.backbone.grid_size,
                             self.backbone.num_prefix_tokens)

        self.attn_groups = nn.ModuleList(group() for _ in self.backbone.blocks)
        self.mlp_groups = nn.ModuleList(group() for _ in self.backbone.blocks)
        self.head_weight = nn.Parameter(torch.randn(n_aus, width) * 0.02)  # MoKE-specific heads
        self.head_bias = nn.Parameter(torch.zeros(n_aus))
        self.main_head = nn.Linear(width, n_aus)
        nn.init.normal_(self.main_head.weight, std=0.02)
        nn.init.zeros_(self.main_head.bias)
        self.moke_weight = cfg.auformer_moke_weight
        self.register_buffer("au_rates", torch.tensor(cfg.au_rates or [1.0] * n_aus), persistent=False)
        self.margin = cfg.mdwa_margin
        self.gamma_bounds = tuple(cfg.mdwa_gamma)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The final-normed [CLS] [B, D] and the per-AU (MoKE-specific) features [B, C, D]."""
        x, kwargs = self.backbone.embed(images)
        for block, attn_group, mlp_group in zip(self.backbone.blocks, self.attn_groups, self.mlp_groups):
            attn, mlp = backbones.residual_branches(block)
            norm1, norm2 = _pre_norms(block)
            x = x + attn(x, **kwargs) + attn_group(attn_group.hidden(norm1(x)))
            h = mlp_group.hidden(norm2(x))
            x = x + mlp(x) + mlp_group(h)
        experts = mlp_group.per_expert(h[:, 0])  # the last group's MoKEs at [CLS]
        personal = x[:, :1] - experts.mean(1, keepdim=True) + experts
        final_norm = self.backbone.pool_modules()[0]  # the norm `forward_tokens` ends with
        return final_norm(x[:, 0]), final_norm(personal)

    def head_outputs(self, cfg: TrainConfig) -> dict[str, int]:
        return {"au": len(self.aus)}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        cls, features = self.encode(images)
        return {"au": self.main_head(cls), "au_moke": (features * self.head_weight).sum(-1) + self.head_bias}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        def mdwa(logits: Tensor) -> Tensor:
            return mdwa_loss(logits, targets["au"], self.au_rates, self.margin, self.gamma_bounds,
                             mask=targets.get("au_mask"))

        main, moke = mdwa(outputs["au"]), mdwa(outputs["au_moke"])
        return main + self.moke_weight * moke, {"loss_main": float(main.detach()), "loss_moke": float(moke.detach())}


@register("auformer", protocol="BP4D and DISFA, subject-independent 3-fold (dvc: auformer@1..3, "
          "auformer_disfa@1..3); F1 per AU and its mean", backbone="ViT-B-16", tasks=["au"], optimizer="adamw",
          lr=5e-4, weight_decay=5e-4, batch_size=64, epochs=20, schedule="cosine",
          warmup_epochs=1, augment=["crop", "flip"], crop_scale=[0.8, 1.0])
def build(cfg: TrainConfig) -> AUFormer:
    return AUFormer(cfg)
