"""AUFormer: parameter budget, batched MoKEs against a per-expert reference, the frozen backbone's
path at init, gradients to every trainable tensor, MDWA-Loss wiring, and a loss that falls."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from fer_models.backbones import build_backbone, count_parameters, timm_vit_to_open_clip
from fer_models.config import TrainConfig
from fer_models.methods import build_method
from fer_models.methods.auformer import BP4D_AUS, AUFormer, MoKEGroup
from fer_models.registry import METHOD_DEFAULTS

TINY = ("vit-tiny-test", "pe-core-tiny-test")


def build(*overrides: str) -> AUFormer:
    torch.manual_seed(0)
    return build_method(TrainConfig.load(None, overrides=["method=auformer", *overrides]))


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def au_targets(n: int, aus: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, aus)
    mask[0, 0] = 0
    return {"au": torch.randint(0, 2, (n, aus), generator=g).float(), "au_mask": mask}


def test_defaults_and_trainable_fraction_vit_b16(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        model = build()  # no data, no AU list: sized for BP4D's 12 AUs, and it says so
    assert "no AU list" in caplog.text
    assert model.tasks == ["au"] and model.backbone.name == "ViT-B-16"
    trainable, total = count_parameters(model)
    d, c, r, k = 768, len(BP4D_AUS), 4, 3
    per_group = (d * c * r + c * r) + k * (9 + 1) * c * r + (d * c * r + c * d)  # down, MRF, up
    heads = 2 * c * (d + 1)  # MoKE-specific and main
    assert trainable == 2 * 12 * per_group + heads == 2_044_824
    assert total == 88_237_464
    assert trainable / total < 0.03  # 2.32%
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_au_list_comes_from_the_training_selection_unless_set():
    """A registered AU list would override the catalog's: a DISFA run would get BP4D's AUs."""
    assert "aus" not in METHOD_DEFAULTS["auformer"]
    assert TrainConfig.load(None, overrides=["method=auformer"]).aus == []
    assert TrainConfig.load(None, overrides=["method=auformer", "aus=[1, 2, 4]"]).aus == [1, 2, 4]
    disfa = build("backbone=vit-tiny-test", "aus=[1, 2, 4, 6, 9, 12, 25, 26]")
    assert len(disfa.main_head.bias) == len(disfa.head_bias) == 8
    assert disfa.head_outputs(TrainConfig.load(None, overrides=["method=auformer"])) == {"au": 8}


def reference_expert(group: MoKEGroup, x: torch.Tensor, i: int) -> torch.Tensor:
    """Expert i alone, written the slow way: its own slices, each prefix token a zero-padded 1x1 map."""
    r, p, (gh, gw) = group.dim, group.num_prefix, group.grid
    rows = slice(i * r, (i + 1) * r)
    h = F.gelu(F.linear(x, group.down.weight[rows], group.down.bias[rows]))

    def mrf(maps: torch.Tensor) -> torch.Tensor:
        return sum(F.conv2d(maps, conv.weight[rows], conv.bias[rows], padding=conv.padding,
                            dilation=conv.dilation, groups=r) for conv in group.mrf)

    b = len(x)
    grid = mrf(h[:, p:].transpose(1, 2).reshape(b, r, gh, gw)).flatten(2).transpose(1, 2)
    prefix = mrf(h[:, :p].reshape(b * p, r, 1, 1)).reshape(b, p, r)
    m = torch.cat([prefix, grid], dim=1)
    c = F.gelu(m + torch.softmax(m @ m.transpose(1, 2) / math.sqrt(r), dim=-1) @ m)
    return c @ group.up_weight[:, i].T + group.up_bias[i]


def test_batched_group_matches_per_expert_reference():
    torch.manual_seed(0)
    group = MoKEGroup(width=6, experts=3, dim=2, dilations=(1, 2, 5), grid=(3, 4), num_prefix=2)
    with torch.no_grad():
        group.up_weight.normal_()
        group.up_bias.normal_()
    x = torch.randn(2, 2 + 12, 6)
    refs = torch.stack([reference_expert(group, x, i) for i in range(3)], dim=1)  # [B, C, N, D]
    h = group.hidden(x)
    torch.testing.assert_close(group(h), refs.mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(group.per_expert(h[:, 0]), refs[:, :, 0], rtol=1e-5, atol=1e-5)
    # the same gradients reach the convs' parameters (the gather's backward is a scatter-add)
    weights = [p for conv in group.mrf for p in (conv.weight, conv.bias)]
    expected = torch.autograd.grad(refs.mean(1).square().sum(), weights)
    for got, want in zip(torch.autograd.grad(group(group.hidden(x)).square().sum(), weights), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", TINY)
def test_zero_up_projections_leave_the_frozen_path_unchanged(backbone):
    model = build(f"backbone={backbone}").eval()
    imgs = images()
    with torch.no_grad():
        plain = model.backbone.forward_tokens(imgs)
        cls, feats = model.encode(imgs)
        moved = (cls - plain[:, 0]).abs().max() / plain[:, 0].abs().max()
        assert 0 < moved < 1e-2  # small up-projections at init: the stream barely moves, but it does
        for group in [*model.attn_groups, *model.mlp_groups]:
            group.up_weight.zero_()
            group.up_bias.zero_()
        cls, feats = model.encode(imgs)
    torch.testing.assert_close(cls, plain[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats, plain[:, :1].expand_as(feats), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", TINY)
def test_every_trainable_tensor_gets_a_gradient(backbone):
    model = build(f"backbone={backbone}")
    outputs = model(images(3))
    assert model.scores(outputs)["au"].shape == (3, len(BP4D_AUS))
    loss, _ = model.loss(outputs, au_targets(3, len(BP4D_AUS)))
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not n.startswith("backbone.") for n in trainable)
    silent = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_loss_uses_rates_in_au_order_and_the_mask():
    p_m = 1 / (1 + math.exp(-2.0)) - 0.05  # AU 2's negative at logit 2, after the margin
    negative = -p_m * math.log(1 - p_m)  # gamma 1
    zero = torch.zeros(1, 2)  # the MoKE-specific heads at logit 0: each term log 2
    logits = {"au": torch.tensor([[0.0, 2.0]]), "au_moke": zero}
    known = {"au": torch.tensor([[1.0, 0.0]]), "au_mask": torch.ones(1, 2)}
    equal = build("backbone=vit-tiny-test", "aus=[1, 2]", "auformer_moke_weight=0")  # main head alone
    assert equal.loss(logits, known)[0].item() == pytest.approx((math.log(2) + negative) / 2, rel=1e-5)
    masked = {**known, "au_mask": torch.tensor([[1.0, 0.0]])}
    assert equal.loss(logits, masked)[0].item() == pytest.approx(math.log(2), rel=1e-5)
    # rates 0.2, 0.8: w = 2 * (1/r) / (5 + 1.25) = 1.6, 0.4; gamma of the commoner AU 2 = B_L = 1
    rated = build("backbone=vit-tiny-test", "aus=[1, 2]", "au_rates=[0.2, 0.8]", "auformer_moke_weight=0")
    assert rated.loss(logits, known)[0].item() == pytest.approx((1.6 * math.log(2) + 0.4 * negative) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="2 AU occurrence rates for 3 AUs"):
        build("backbone=vit-tiny-test", "aus=[1, 2, 4]", "au_rates=[0.2, 0.8]")


def test_moke_specific_loss_is_part_of_the_total():
    known = {"au": torch.tensor([[1.0, 0.0]]), "au_mask": torch.ones(1, 2)}
    main = torch.tensor([[0.0, 2.0]])
    model = build("backbone=vit-tiny-test", "aus=[1, 2]", "auformer_moke_weight=0.5")
    loss, parts = model.loss({"au": main, "au_moke": torch.zeros(1, 2)}, known)
    # both AUs at logit 0, w 1, gamma 1: AU 1 positive (log 2), AU 2 negative at p = 0.5 - margin
    assert parts["loss_moke"] == pytest.approx((math.log(2) - 0.45 * math.log(0.55)) / 2, rel=1e-5)
    assert loss.item() == pytest.approx(parts["loss_main"] + 0.5 * parts["loss_moke"], rel=1e-6)
    worse, _ = model.loss({"au": main, "au_moke": torch.tensor([[-3.0, 3.0]])}, known)
    assert worse.item() > loss.item()  # wrong MoKE-specific logits alone raise the total
    model.zero_grad()
    out = model(images(1))
    model.loss(out, known)[0].backward()
    assert model.head_weight.grad.abs().sum() > 0 and model.main_head.weight.grad.abs().sum() > 0


def test_timm_imagenet_vit_weights_round_trip(tmp_path):
    """A saved timm ViT state dict (ImageNet layout, patch-embedding bias and all) loads into the
    open_clip tower: the same tokens as timm's own forward."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=6, num_heads=2, num_classes=5).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # no zero biases: the patch bias must really be folded in
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    tower = build_backbone("vit-tiny-test", str(tmp_path / "vit.pth")).eval()
    imgs = images(2)
    x = (imgs.float() / 255 - 0.5) / 0.5  # timm's ViT normalisation
    with torch.no_grad():
        torch.testing.assert_close(tower.forward_tokens(imgs), vit.forward_features(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tower(imgs), vit.forward_features(x)[:, 0], rtol=1e-5, atol=1e-5)
    mapped = timm_vit_to_open_clip(vit.state_dict())
    assert "head.weight" not in str(list(mapped)) and "transformer.resblocks.5.attn.in_proj.weight" in mapped
    model = build("backbone=vit-tiny-test", f"pretrained={tmp_path / 'vit.pth'}", "aus=[1, 2]")
    torch.testing.assert_close(model.backbone.visual.conv1.weight, vit.patch_embed.proj.weight)
    with pytest.raises(ValueError, match="not supported"):
        timm_vit_to_open_clip({**vit.state_dict(), "reg_token": torch.zeros(1, 4, 32)})


def test_a_few_steps_reduce_the_loss():
    model = build("backbone=vit-tiny-test", "au_rates=[0.5, 0.4, 0.3, 0.2, 0.1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.5, 0.4]")
    imgs, targets = images(2), au_targets(2, len(BP4D_AUS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):  # main and MoKE-specific heads pull the shared MoKEs together: both terms fall
        loss, _ = model.loss(model(imgs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
