"""AUFormer (Yuan et al., ECCV 2024): a frozen ViT with one Mixture-of-Knowledge Expert (MoKE) per
AU in a group beside the attention and another beside the MLP of every block, trained with the
Margin-truncated Difficulty-aware Weighted Asymmetric loss (MDWA-Loss, `fer_models.losses.mdwa_loss`).

A MoKE is down-projection -> Multi-Receptive-Field (MRF) operator -> Context-Aware (CA) operator ->
up-projection. Each block becomes

    x = x + attn(x) + mean_i MoKE^attn_i(LN1(x))
    x = x + mlp(x)  + mean_i MoKE^mlp_i(LN2(x))

with `attn`, `mlp` from `backbones.residual_branches` (open_clip ViT and timm Eva blocks alike).
AU i is predicted from the [CLS] token of its own MoKE in the last group.

Cost: the C experts of a group are never looped over. Their down-projections are one
Linear(D, C*r); each MRF dilation is one depthwise Conv2d over all C*r channels; CA is one
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
- AU head: the feature of AU i is the final stream's [CLS] with the last group's average swapped
  for AU i's own MoKE output (x_cls - mean_j y_j + y_i), through the backbone's frozen final norm,
  then a per-AU Linear(D, 1). Reading y_i alone would give the heads an all-but-zero input at init.
- MDWA-Loss rates: `cfg.au_rates` in `cfg.aus` order (the trainer fills them from the training
  selection); when empty, equal rates (every w_i = 1, gamma_i = B_L). m = 0.05, [B_L, B_R] = [1, 2].
- The summary's extra "MoKE-specific" loss term is not used: MDWA-Loss on the heads' logits only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from fer_models import backbones
from fer_models.config import TrainConfig
from fer_models.losses import mdwa_loss
from fer_models.methods import Method
from fer_models.registry import register

BP4D_AUS = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]
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
        self.mrf = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d, groups=channels)
                                 for d in dilations)
        self.up_weight = nn.Parameter(torch.randn(width, experts, dim) * UP_INIT_STD)  # [:, i] is expert i's
        self.up_bias = nn.Parameter(torch.zeros(experts, width))

    def hidden(self, x: Tensor) -> Tensor:
        """Normed tokens [B, N, D] -> every expert's activation before its up-projection [B, N, C*r]."""
        h = F.gelu(self.down(x))
        b, n, channels = h.shape
        p = self.num_prefix
        grid = h[:, p:].transpose(1, 2).reshape(b, channels, *self.grid)
        m_grid = sum(conv(grid) for conv in self.mrf).flatten(2).transpose(1, 2)
        centre = sum(conv.weight[:, 0, 1, 1] for conv in self.mrf)  # a 3x3 kernel on a zero-padded 1x1 map
        m_prefix = h[:, :p] * centre + sum(conv.bias for conv in self.mrf)
        m = torch.cat([m_prefix, m_grid], dim=1).view(b, n, self.experts, self.dim).transpose(1, 2)
        c = m + F.scaled_dot_product_attention(m, m, m)  # [B, C, N, r]: the experts are the heads
        return F.gelu(c).transpose(1, 2).reshape(b, n, channels)

    def forward(self, h: Tensor) -> Tensor:
        """`hidden`'s output -> the group's average of its experts' up-projections [B, N, D]."""
        return F.linear(h, self.up_weight.flatten(1)) / self.experts + self.up_bias.mean(0)

    def per_expert(self, h: Tensor) -> Tensor:
        """`hidden`'s output at one token [B, C*r] -> each expert's own up-projection [B, C, D]."""
        h = h.view(len(h), self.experts, self.dim)
        return torch.einsum("bcr,dcr->bcd", h, self.up_weight) + self.up_bias


def _pre_norms(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The norms that `residual_branches`' attention and MLP branches apply first."""
    return (block.ln_1, block.ln_2) if isinstance(block, ResidualAttentionBlock) else (block.norm1, block.norm2)


class AUFormer(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["au"]
        if not cfg.aus:
            raise ValueError("AUFormer needs the AU list (cfg.aus): one MoKE per AU")
        if cfg.au_rates and len(cfg.au_rates) != len(cfg.aus):
            raise ValueError(f"{len(cfg.au_rates)} AU occurrence rates for {len(cfg.aus)} AUs")
        self.backbone = backbones.freeze(backbones.build_backbone(cfg.backbone, cfg.pretrained, cfg.image_size))
        n_aus, width = len(cfg.aus), self.backbone.width

        def group() -> MoKEGroup:
            return MoKEGroup(width, n_aus, cfg.moke_dim, cfg.moke_dilations, self.backbone.grid_size,
                             self.backbone.num_prefix_tokens)

        self.attn_groups = nn.ModuleList(group() for _ in self.backbone.blocks)
        self.mlp_groups = nn.ModuleList(group() for _ in self.backbone.blocks)
        self.head_weight = nn.Parameter(torch.randn(n_aus, width) * 0.02)
        self.head_bias = nn.Parameter(torch.zeros(n_aus))
        self.register_buffer("au_rates", torch.tensor(cfg.au_rates or [1.0] * n_aus), persistent=False)
        self.margin = cfg.mdwa_margin
        self.gamma_bounds = tuple(cfg.mdwa_gamma)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Final stream tokens [B, N, D] (before the final norm) and the per-AU features [B, C, D]."""
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
        return x, final_norm(personal)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        _, features = self.encode(images)
        return {"au": (features * self.head_weight).sum(-1) + self.head_bias}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss = mdwa_loss(outputs["au"], targets["au"], self.au_rates, self.margin, self.gamma_bounds,
                         mask=targets.get("au_mask"))
        return loss, {}


@register("auformer", backbone="ViT-B-16", aus=BP4D_AUS, tasks=["au"])
def build(cfg: TrainConfig) -> AUFormer:
    return AUFormer(cfg)
