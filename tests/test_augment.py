"""Batch augmentation on the device (fer_models.augment): each op does what its knobs say, every sample
draws its own parameters, a clip's frames share one draw, mixing keeps targets summing to 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer_models import augment as aug
from fer_models.config import TrainConfig


def cfg(**kw) -> TrainConfig:
    return TrainConfig(backbone="pe-core-tiny-test", **kw)


def ramp(b: int = 4, size: int = 32) -> torch.Tensor:
    """uint8 images whose red channel is the column and green the row (0..255): positions readable back."""
    cols = torch.linspace(0, 255, size).round().to(torch.uint8)
    img = torch.stack([cols.expand(size, size), cols.view(-1, 1).expand(size, size),
                       torch.full((size, size), 128, dtype=torch.uint8)])
    return img.expand(b, 3, size, size).clone()


def test_no_ops_is_the_image_as_float() -> None:
    x = ramp()
    assert torch.equal(aug.augment(x, cfg()), x.float() / 255)


def test_flip_mirrors_exactly() -> None:
    x = ramp()
    out = aug.augment(x, cfg(augment=["flip"], flip_p=1.0))
    assert torch.allclose(out, x.float().flip(-1) / 255, atol=1e-5)
    assert torch.allclose(aug.augment(x, cfg(augment=["flip"], flip_p=0.0)), x.float() / 255, atol=1e-5)


def test_crop_keeps_the_drawn_share_of_the_image_and_differs_per_sample() -> None:
    torch.manual_seed(0)
    x = ramp(b=16, size=64)
    out = aug.augment(x, cfg(augment=["crop"], crop_scale=[0.25, 0.25]))
    width = out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))  # share of the columns the crop spans
    height = out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))
    area = width * height
    assert ((area > 0.2) & (area < 0.3)).all(), area  # 0.25 of the image, whatever the aspect
    assert (width / height).min() > 0.7 and (width / height).max() < 1.4  # aspect within 3/4..4/3
    left = out[:, 0, 0, 0]
    assert left.unique().numel() > 8  # each sample its own window


def test_clip_frames_share_one_draw_and_clips_differ() -> None:
    torch.manual_seed(0)
    frame = ramp(b=1)[0]
    clips = frame.expand(6, 5, *frame.shape).clone()  # 6 clips of 5 identical frames
    out = aug.augment(clips, cfg(augment=["crop", "rotate", "flip", "erase", "noise"], noise_p=0.0, erase_p=1.0))
    assert out.shape == clips.shape
    assert all(torch.equal(out[i, t], out[i, 0]) for i in range(6) for t in range(5))
    assert not torch.equal(out[0, 0], out[1, 0])


def test_erase_fills_one_rectangle_of_the_drawn_area() -> None:
    torch.manual_seed(1)
    x = torch.zeros(32, 3, 40, 40, dtype=torch.uint8)
    out = aug.augment(x, cfg(augment=["erase"], erase_p=1.0, erase_scale=[0.1, 0.2]))
    filled = (out[:, 0] == aug.ERASE_FILL)
    share = filled.float().mean(dim=(1, 2))
    assert ((share > 0.05) & (share <= 0.21)).all(), share  # clipped at the border, never above the draw
    rows, cols = filled.any(dim=2), filled.any(dim=1)
    assert torch.equal(filled.sum(dim=(1, 2)), rows.sum(1) * cols.sum(1))  # a rectangle
    assert (aug.augment(x, cfg(augment=["erase"], erase_p=0.0)) == 0).all()


def test_noise_has_the_configured_strength() -> None:
    torch.manual_seed(0)
    x = torch.full((64, 3, 16, 16), 128, dtype=torch.uint8)
    out = aug.augment(x, cfg(augment=["noise"], noise_std=0.05, noise_p=1.0))
    assert (out - 128 / 255).std().item() == pytest.approx(0.05, rel=0.05)
    half = aug.augment(x, cfg(augment=["noise"], noise_std=0.05, noise_p=0.5))
    noisy = (half != 128 / 255).flatten(1).any(1).float().mean().item()
    assert 0.25 < noisy < 0.75


def test_scale_below_one_shrinks_the_face_into_a_black_border() -> None:
    x = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    out = aug.augment(x, cfg(augment=["scale"], scale_range=[0.5, 0.5]))
    assert out[:, :, 0, 0].eq(0).all() and out[:, :, 16, 16].gt(0.7).all()


def test_take_frames_spreads_evenly() -> None:
    clips = torch.arange(8).view(1, 8, 1, 1, 1).expand(2, 8, 3, 2, 2)
    assert aug.take_frames(clips, 4)[0, :, 0, 0, 0].tolist() == [0, 2, 5, 7]
    assert aug.take_frames(clips, 10).shape[1] == 10
    images = torch.zeros(2, 3, 4, 4)
    assert aug.take_frames(images, 4) is images


def test_mixup_targets_sum_to_one_and_the_trainers_loss_is_soft_cross_entropy() -> None:
    torch.manual_seed(0)
    x = ramp(b=8)
    mixed, perm, lam = aug.mix(x, cfg(mixup=0.4))
    y = torch.randint(0, 7, (8,))
    soft = aug.mixed_targets(y, perm, lam, 7)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    assert torch.allclose(mixed, lam * x.float() / 255 + (1 - lam) * x.float()[perm] / 255)
    logits = torch.randn(8, 7)
    trainer = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert torch.allclose(trainer, F.cross_entropy(logits, soft))


def test_fmix_pastes_a_low_frequency_region_of_the_drawn_share() -> None:
    torch.manual_seed(0)
    mask = aug.fmix_mask(0.3, 64, 64, 3.0, torch.device("cpu"))
    assert mask.mean().item() == pytest.approx(0.3, abs=1 / 4096)
    edges = (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
    scattered = (torch.rand(64, 64) < 0.3).float()
    scattered_edges = (scattered[1:] != scattered[:-1]).sum() + (scattered[:, 1:] != scattered[:, :-1]).sum()
    assert edges < scattered_edges / 5  # blobs, not salt and pepper
    x = ramp(b=6)
    mixed, perm, lam = aug.mix(x, cfg(fmix=1.0))
    own = (mixed == x.float() / 255).all(1).float().mean().item()  # pixels kept from each sample's own image
    assert own >= lam - 1e-6 and 0 <= lam <= 1


def test_mixing_off_or_not_drawn_returns_none() -> None:
    x = ramp()
    assert aug.mix(x, cfg()) is None
    assert aug.mix(x, cfg(mixup=1.0, mix_prob=0.0)) is None
