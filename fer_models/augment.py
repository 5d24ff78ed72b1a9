"""Training augmentation on the device, a whole batch at a time: every sample draws its own parameters
(one tensor op per batch, no Python loop over samples), every frame of a clip shares its clip's draw.

The ops and their knobs are TrainConfig fields (`augment`, `crop_scale`, ... `mixup`, `fmix`); the
trainer calls `augment` and `mix` on training batches only, never at evaluation. Geometric ops
(crop, scale, rotate, flip) compose into one affine map per sample and one `grid_sample`, so the
image is resampled once however many of them are on. Random draws come from torch's RNG on the
batch's device, which the trainer seeds per epoch: a resumed run draws what the uninterrupted one did.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor

from fer_models.config import TrainConfig

ERASE_FILL = 0.5  # mid grey: about what torchvision's RandomErasing after Normalize fills (0 = the mean)
CROP_ASPECT = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default ratio range
ERASE_ASPECT = (0.3, 3.3)  # torchvision RandomErasing's default ratio range


def as_float(images: Tensor) -> Tensor:
    """uint8 0..255 -> float 0..1 (floats pass through): the range every method's input accepts."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def take_frames(clips: Tensor, frames: int | None) -> Tensor:
    """[B, T, ...] clips -> `frames` frames spread evenly over T (repeating frames when T is shorter);
    images [B, 3, H, W] and frames=None pass through."""
    if frames is None or clips.dim() != 5 or clips.shape[1] == frames:
        return clips
    index = torch.linspace(0, clips.shape[1] - 1, frames, device=clips.device).round().long()
    return clips.index_select(1, index)


def _uniform(n: int, low: float, high: float, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def _log_uniform(n: int, bounds: tuple[float, float], device: torch.device) -> Tensor:
    return torch.exp(_uniform(n, math.log(bounds[0]), math.log(bounds[1]), device))


def affine_matrices(n: int, cfg: TrainConfig, device: torch.device) -> Tensor | None:
    """[n, 2, 3] maps from output to input coordinates (both in [-1, 1], as `affine_grid` takes them):
    crop, then scale, rotate and flip of the result, composed; None when no geometric op is on."""
    ops = set(cfg.augment)
    if not ops & {"crop", "scale", "rotate", "flip"}:
        return None
    m = torch.eye(3, device=device).repeat(n, 1, 1)

    def then(step: Tensor) -> None:  # an op applied after those so far: input(p) = M_before @ step @ p
        nonlocal m
        m = m @ step

    if "crop" in ops:  # a window of area share a and aspect r anywhere inside the image, stretched to fill it
        area = _uniform(n, *cfg.crop_scale, device)
        aspect = _log_uniform(n, CROP_ASPECT, device)
        w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        step = torch.zeros(n, 3, 3, device=device)
        step[:, 0, 0], step[:, 1, 1], step[:, 2, 2] = w, h, 1
        step[:, 0, 2] = (1 - w) * _uniform(n, -1, 1, device)
        step[:, 1, 2] = (1 - h) * _uniform(n, -1, 1, device)
        then(step)
    if "scale" in ops:  # zoom about the centre: factor > 1 enlarges the face, < 1 shrinks it (zero border)
        inverse = 1 / _uniform(n, *cfg.scale_range, device)
        then(torch.diag_embed(torch.stack([inverse, inverse, torch.ones_like(inverse)], dim=1)))
    if "rotate" in ops:
        angle = torch.deg2rad(_uniform(n, -cfg.rotate_degrees, cfg.rotate_degrees, device))
        cos, sin = angle.cos(), angle.sin()
        step = torch.eye(3, device=device).repeat(n, 1, 1)
        step[:, 0, 0], step[:, 0, 1], step[:, 1, 0], step[:, 1, 1] = cos, -sin, sin, cos
        then(step)
    if "flip" in ops:
        sign = torch.where(torch.rand(n, device=device) < cfg.flip_p, -1.0, 1.0)
        then(torch.diag_embed(torch.stack([sign, torch.ones_like(sign), torch.ones_like(sign)], dim=1)))
    return m[:, :2]


def erase_masks(n: int, height: int, width: int, cfg: TrainConfig, device: torch.device) -> Tensor:
    """[n, 1, H, W] bool: one rectangle per erased sample (p erase_p), of area share in erase_scale and
    aspect in ERASE_ASPECT, clipped to the image; all False for the others."""
    area = _uniform(n, *cfg.erase_scale, device) * height * width
    aspect = _log_uniform(n, ERASE_ASPECT, device)
    h = (area * aspect).sqrt().clamp(1, height)
    w = (area / aspect).sqrt().clamp(1, width)
    top = torch.rand(n, device=device) * (height - h)
    left = torch.rand(n, device=device) * (width - w)
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
    on = torch.rand(n, device=device) < cfg.erase_p
    return (inside & on.view(-1, 1, 1)).unsqueeze(1)


def augment(images: Tensor, cfg: TrainConfig) -> Tensor:
    """A training batch (uint8 or float, [B, 3, H, W] or clips [B, T, 3, H, W]) -> float 0..1 of the same
    shape with cfg.augment's ops applied, each sample (clip) its own draw."""
    x = as_float(images)
    if not cfg.augment:
        return x
    clips = x.dim() == 5
    b, t = x.shape[0], x.shape[1] if clips else 1
    x = x.flatten(0, 1) if clips else x
    height, width = x.shape[-2:]
    device = x.device

    def per_frame(params: Tensor) -> Tensor:  # one draw per clip -> one row per frame
        return params.repeat_interleave(t, dim=0)

    theta = affine_matrices(b, cfg, device)
    if theta is not None:
        grid = F.affine_grid(per_frame(theta), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if "erase" in cfg.augment:
        x = torch.where(per_frame(erase_masks(b, height, width, cfg, device)), ERASE_FILL, x)
    if "noise" in cfg.augment:
        on = per_frame((torch.rand(b, device=device) < cfg.noise_p).float()).view(-1, 1, 1, 1)
        x = (x + on * cfg.noise_std * torch.randn_like(x)).clamp(0, 1)
    return x.view(b, t, *x.shape[1:]) if clips else x


def fmix_mask(lam: float, height: int, width: int, decay: float, device: torch.device) -> Tensor:
    """FMix (Harris et al., 2020): a binary [H, W] mask of low-frequency shape covering round(lam * H * W)
    pixels: Gaussian noise in Fourier space scaled by 1 / frequency ** decay, back to pixels, the top
    share lam set to 1."""
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    freq = (fx ** 2 + fy ** 2).sqrt().clamp(min=1.0 / max(height, width))
    spectrum = torch.complex(torch.randn_like(freq), torch.randn_like(freq)) / freq ** decay
    grey = torch.fft.irfft2(spectrum, s=(height, width))
    keep = round(lam * height * width)
    mask = torch.zeros(height * width, device=device)
    mask[grey.flatten().argsort(descending=True)[:keep]] = 1.0
    return mask.view(height, width)


def mix(images: Tensor, cfg: TrainConfig) -> tuple[Tensor, Tensor, float] | None:
    """Mixup or FMix of a batch (as float 0..1) with a permutation of itself, or None (off, or this batch not drawn
    under mix_prob): (mixed images, permutation, lam), lam the share of each sample's own image. The
    loss is then lam * loss(targets) + (1 - lam) * loss(targets[perm]), i.e. cross-entropy with the soft
    targets of `mixed_targets`. One lam per batch, as both methods' reference code draws it."""
    kinds = [kind for kind, alpha in (("mixup", cfg.mixup), ("fmix", cfg.fmix)) if alpha > 0]
    if not kinds or float(torch.rand(())) >= cfg.mix_prob:
        return None
    kind = kinds[int(torch.randint(len(kinds), ()))]
    alpha = cfg.mixup if kind == "mixup" else cfg.fmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    images = as_float(images)
    perm = torch.randperm(len(images), device=images.device)
    other = images[perm]
    if kind == "mixup":
        return lam * images + (1 - lam) * other, perm, lam
    height, width = images.shape[-2:]
    mask = fmix_mask(lam, height, width, cfg.fmix_decay, images.device)
    return mask * images + (1 - mask) * other, perm, float(mask.mean())


def mixed_targets(target: Tensor, perm: Tensor, lam: float, classes: int) -> Tensor:
    """Soft class targets [B, classes] of a mixed batch: lam on each sample's class, 1 - lam on its
    partner's; rows sum to 1. For labelled targets (class ids, no ignore value)."""
    onehot = F.one_hot(target, classes).float()
    return lam * onehot + (1 - lam) * onehot[perm]


def permuted(targets: dict[str, Tensor], perm: Tensor) -> dict[str, Tensor]:
    """Every per-sample target of a batch in the order of `perm` (the mixing partner's labels)."""
    return {k: v[perm] if torch.is_tensor(v) and v.dim() and len(v) == len(perm) else v for k, v in targets.items()}
