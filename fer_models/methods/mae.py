"""MAE pre-training of a plain ViT on faces, as PF-ViT's first step (Li et al., "Emotion Separation and
Recognition from a Facial Expression by Generating the Poker Face with Vision Transformers"; MAE of He
et al.): random patches are dropped, the encoder sees the rest, a light decoder with learned mask
tokens predicts the per-patch normalised pixels of the dropped ones. Labels are ignored (`tasks = []`).

The encoder is a timm `VisionTransformer` with fixed 2-D sin-cos position embeddings (paper); it is
called `encoder`, not `backbone`, because the trainer's checkpoint drops frozen `backbone.*`
weights and everything here trains. The building blocks (sizes, encoder, decoder, masking, pixel
helpers, figure grid) are reused by `pf_vit.py`.

Choices the paper leaves open (or that our text of it lost), recorded here:
- sizes: ViT-T/S/B are 192/384/768 wide, 12 deep, 3/6/12 heads, patch 16, 224 px (DeiT/ViT). The
  decoder table is missing from our text: ViT-B uses MAE's default decoder (512 wide, 8 deep, 16
  heads); ViT-T and ViT-S use a 256-wide, 4-deep, 8-head decoder, "lightweight" next to them.
  "mae-test" (32 px, patch 8, width 32, depth 2; decoder 16 wide, 2 deep) is for CPU tests only;
- visible patches: `int(N * (1 - mask_ratio))`, i.e. rounded down (MAE's code); 49 of 196 at 0.75;
- target: each patch's pixels (in the ImageNet-normalised input space) minus the patch mean, over
  sqrt(population variance + 1e-6); loss = mean squared error over masked patches only;
- eval mode draws its mask from a generator seeded with `cfg.seed` on every call, so every
  validation pass sees the same masks and its loss is comparable across epochs; training mode uses
  the global RNG the trainer seeds per epoch;
- the class token's position embedding is zero (MAE); timm's default weight initialisation;
- optimiser: MAE's AdamW betas (0.9, 0.95), no weight decay on biases, norms and tokens; the
  registered recipe: base LR 1.5e-4 scaled by batch / 256 (`lr_reference_batch`, as MAE does: 4096
  images give 2.4e-3), weight decay 0.05, 40 warm-up epochs then cosine, 300 epochs (paper). MAE's
  random-resized-crop (0.2-1) and flip augmentation become `augment: [crop, flip]`;
- figures: up to four faces; rows input / input with masked patches grey / prediction de-normalised
  with each patch's own mean and std, visible patches pasted from the input (MAE's figures), each
  row named at its left.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from fer_models.backbones import ViTSize, vit_size
from fer_models.config import TrainConfig
from fer_models.methods import Method
from fer_models.registry import register

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as MAE normalises its input
STD = (0.229, 0.224, 0.225)
FIGURE_FACES = 4
NO_DECAY = ("cls_token", "mask_token")


def sincos_pos_embed(grid: int, dim: int) -> Tensor:
    """[1, 1 + grid * grid, dim]: a zero row for the class token, then fixed 2-D sin-cos rows."""
    rows = build_sincos2d_pos_embed([grid, grid], dim)
    return torch.cat([torch.zeros(1, dim), rows]).unsqueeze(0)


def prepare(images: Tensor, image_size: int) -> Tensor:
    """uint8 0..255 (or float 0..1) [B,3,H,W] -> ImageNet-normalised float at the model's size."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean = x.new_tensor(MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, 3, H, W] -> [B, N, p * p * 3], patches in row-major order, pixels as (row, col, channel)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, p: int) -> Tensor:
    """Inverse of `patchify` for a square grid."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    x = patches.reshape(b, g, g, p, p, 3)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, 3, g * p, g * p)


def patch_normalise(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's normalised-pixel target: (normalised patches, per-patch mean, per-patch std)."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()
    return (patches - mean) / std, mean, std


def random_masking(batch: int, n: int, ratio: float, device: torch.device,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random subset of `int(n * (1 - ratio))` visible patches (rounded down).

    Returns (ids_keep [B, keep], ids_restore [B, n], mask [B, n] with 1 = masked), as in MAE:
    `ids_restore` puts [visible, masked] tokens back into patch order.
    """
    keep = int(n * (1 - ratio))
    noise = torch.rand(batch, n, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, n, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)


def build_encoder(size: ViTSize, image_size: int) -> VisionTransformer:
    """A timm ViT (class token, no head) whose position embedding is fixed sin-cos."""
    encoder = VisionTransformer(img_size=image_size, patch_size=size.patch_size, embed_dim=size.width,
                                depth=size.depth, num_heads=size.heads, num_classes=0)
    with torch.no_grad():
        encoder.pos_embed.copy_(sincos_pos_embed(image_size // size.patch_size, size.width))
    encoder.pos_embed.requires_grad_(False)
    return encoder


def encode(encoder: VisionTransformer, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
    """Normalised image -> final-normed tokens [B, 1 + kept patches, width]; all patches when `ids_keep` is None."""
    tokens = encoder.patch_embed(x) + encoder.pos_embed[:, 1:]
    if ids_keep is not None:
        tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(len(tokens), -1, -1)
    tokens = encoder.blocks(encoder.norm_pre(torch.cat([cls, tokens], dim=1)))
    return encoder.norm(tokens)


class MaeDecoder(nn.Module):
    """MAE's lightweight decoder: embed, mask tokens, fixed sin-cos positions, blocks, pixel head.

    The pieces are separate so PF-ViT's generator (cross-fusion in front of `run`) and its
    discriminator (`blocks` and `norm`) can be made from a pre-trained one.
    """

    def __init__(self, size: ViTSize, image_size: int) -> None:
        super().__init__()
        grid = image_size // size.patch_size
        dim = size.decoder_width
        self.embed = nn.Linear(size.width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos_pos_embed(grid, dim))
        self.blocks = nn.Sequential(*[Block(dim, size.decoder_heads, qkv_bias=True) for _ in range(size.decoder_depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, size.patch_size ** 2 * 3)

    def run(self, x: Tensor) -> Tensor:
        """Full-length token sequence [B, 1 + N, dim] (positions added) -> patch pixels [B, N, p * p * 3]."""
        return self.pred(self.norm(self.blocks(x)))[:, 1:]

    def forward(self, tokens: Tensor, ids_restore: Tensor) -> Tensor:
        """Encoder tokens of the visible patches (class token first) -> predictions for every patch."""
        x = self.embed(tokens)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.run(torch.cat([x[:, :1], patches], dim=1) + self.pos_embed)


def decay_groups(model: nn.Module, lr: float, skip: Collection[int] = ()) -> list[dict]:
    """Two named groups: weights with decay ("decay"); biases, norms and tokens without ("no_decay",
    MAE's rule).

    `skip` holds ids of parameters another optimiser owns (PF-ViT's discriminator).
    """
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        (plain if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    return [{"name": "decay", "params": decay, "lr": lr},
            {"name": "no_decay", "params": plain, "lr": lr, "weight_decay": 0.0}]


def image_grid(rows: list[Tensor], labels: Sequence[str]) -> np.ndarray:
    """Rows of normalised images [n, 3, S, S] -> one uint8 [rows * S, W + n * S, 3] picture whose
    first W columns are a white strip naming each row (Pillow's bundled font: same pixels everywhere)."""
    from PIL import Image, ImageDraw, ImageFont

    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    pixels = [((r.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8) for r in rows]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in pixels], dim=1).permute(1, 2, 0).numpy()  # [rows*S, n*S, 3]
    side = rows[0].shape[-1]
    font = ImageFont.load_default(size=max(8, side // 8))
    pad = max(2, side // 16)
    width = pad * 2 + max(math.ceil(font.getlength(label)) for label in labels)
    canvas = Image.new("RGB", (width + grid.shape[1], grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (width, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((pad, i * side + side // 2), label, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


class Mae(Method):
    """Masked autoencoder; `forward` returns what `loss` needs: pred, target, mask (1 = masked)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = []
        self.size = vit_size(cfg.backbone)
        self.image_size = cfg.image_size or self.size.image_size
        if self.image_size % self.size.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of patch {self.size.patch_size}")
        self.encoder = build_encoder(self.size, self.image_size)
        self.decoder = MaeDecoder(self.size, self.image_size)
        self.mask_ratio = cfg.mae_mask_ratio
        self.eval_seed = cfg.seed

    def _masking(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        generator = None if self.training else torch.Generator(device=x.device).manual_seed(self.eval_seed)
        return random_masking(len(x), self.encoder.patch_embed.num_patches, self.mask_ratio, x.device, generator)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = prepare(images, self.image_size)
        ids_keep, ids_restore, mask = self._masking(x)
        pred = self.decoder(encode(self.encoder, x, ids_keep), ids_restore)
        target, _, _ = patch_normalise(patchify(x, self.size.patch_size))
        return {"pred": pred, "target": target, "mask": mask, "image": x}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        per_patch = ((outputs["pred"].float() - outputs["target"]) ** 2).mean(dim=-1)
        mask = outputs["mask"]
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, {"loss_mae": float(loss.detach())}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return decay_groups(self, cfg.lr)

    @torch.no_grad()
    def figures(self, images: Tensor) -> dict[str, np.ndarray]:
        was_training = self.training
        self.eval()
        out = self(images[:FIGURE_FACES])
        self.train(was_training)
        p = self.size.patch_size
        patches = patchify(out["image"], p)
        _, mean, std = patch_normalise(patches)
        mask = out["mask"].unsqueeze(-1)
        recon = torch.where(mask > 0, out["pred"].float() * std + mean, patches)
        rows = [out["image"], unpatchify(patches * (1 - mask), p), unpatchify(recon, p)]
        return {"mae_reconstruction": image_grid(rows, ["input", "masked", "reconstruction"])}


@register("mae", protocol="self-supervised pre-training on AffectNet-270K faces (labels unused); "
          "judged by the MAE-ViT and PF-ViT fine-tunes that start from it",
          backbone="mae-vit-base-16", tasks=[], lr=1.5e-4, lr_reference_batch=256, betas=[0.9, 0.95],
          weight_decay=0.05, epochs=300, batch_size=4096, warmup_epochs=40, schedule="cosine",
          augment=["crop", "flip"], crop_scale=[0.2, 1.0])
def build(cfg: TrainConfig) -> Mae:
    return Mae(cfg)
