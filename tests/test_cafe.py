"""CAFE as its authors' code builds it: frozen CLIP features masked by a trainable ResNet-18, 7 groups of
73 channels with 10 dropped per group in the group-wise CE, the paper's loss weights and recipe."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from fer_cli.main import app
from fer_models.config import TrainConfig
from fer_models.methods import build_method
from fer_models.methods.cafe import resnet18_trunk
from fer_models.registry import method_defaults

RESNET18_TRUNK = 11_176_512  # torchvision ResNet-18 without its fc


def tiny(**kw) -> TrainConfig:
    return TrainConfig(method="cafe", backbone="vit-tiny-test", image_size=32, **kw)


def test_paper_size_cafe_trains_a_resnet18_mask_and_a_linear_head(capsys: pytest.CaptureFixture) -> None:
    """ViT-B-32 (512-d) frozen; trainable: ResNet-18 trunk + Linear(512, 7) = ~11.2 M (the issue's count)."""
    result = CliRunner().invoke(app, ["model-info", "cafe"])
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["backbone"] == "ViT-B-32"
    assert info["trainable_params"] == RESNET18_TRUNK + 512 * 7 + 7
    assert round(info["trainable_params"] / 1e6, 1) == 11.2
    assert info["heads"] == {"emotion": 7}
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in info["param_groups"]] == [("all", 2e-4, 1e-4)]


def test_forward_masks_the_fixed_feature_with_the_resnet() -> None:
    torch.manual_seed(0)
    model = build_method(tiny())
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {
        "mask_net", "mask_proj", "classifier"}
    assert isinstance(model.mask_net, torchvision.models.ResNet)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    out = model(images)
    feat = model.backbone(images)
    x = images.float() / 255
    mask = torch.sigmoid(model.mask_proj(model.mask_net((x - model.mean) / model.std)))
    assert torch.allclose(out["masked"], feat * mask, atol=1e-6)
    assert torch.allclose(out["emotion"], model.classifier(feat * mask), atol=1e-6)
    g = 16 // 7  # channels per group of the 16-d test backbone
    assert torch.equal(out["groups"], (feat * mask)[:, : 7 * g].view(4, 7, g).amax(2))  # eval: nothing dropped


def test_group_ce_drops_ten_random_channels_per_group_at_training() -> None:
    model = build_method(TrainConfig(method="cafe", backbone="vit-tiny-test", image_size=32))
    model.groups, model.drop = 7, 10
    keep = model.channel_keep(512, torch.device("cpu"))
    assert keep.shape == (512,) and keep[511] == 1  # the 512th channel is in no group
    per_group = keep[:511].view(7, 73)
    assert per_group.sum(1).tolist() == [63.0] * 7
    assert not torch.equal(keep, model.channel_keep(512, torch.device("cpu")))  # a new draw each step


def test_loss_is_ce_plus_5_diverse_plus_1_5_group_ce() -> None:
    torch.manual_seed(0)
    model = build_method(tiny())
    model.train()
    out = model(torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8))
    loss, parts = model.loss(out, {"emotion": torch.tensor([0, 1, 2, 3, -100, 7])})  # contempt: ignored by 7 groups
    expected = parts["loss_ce"] + 5 * parts["loss_diverse"] + 1.5 * parts["loss_group"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.mask_net.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


def test_face_recognition_weights_load_from_a_local_file(tmp_path) -> None:
    source = torchvision.models.resnet18(num_classes=1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "resnet18_msceleb.pth")  # the authors' layout
    loaded = resnet18_trunk(str(tmp_path / "resnet18_msceleb.pth"))
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    torch.save({"other": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="no ResNet-18 weights"):
        resnet18_trunk(str(tmp_path / "wrong.pth"))


def test_eight_emotions_make_eight_groups() -> None:
    model = build_method(tiny(emotion_classes=8))
    out = model(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert out["emotion"].shape == (2, 8) and out["groups"].shape == (2, 8)


def test_recipe_is_the_authors() -> None:
    d = method_defaults("cafe")
    assert {k: d[k] for k in ("backbone", "image_size", "optimizer", "lr", "weight_decay", "schedule", "lr_gamma",
                              "epochs", "batch_size")} == {
        "backbone": "ViT-B-32", "image_size": 224, "optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4,
        "schedule": "exponential", "lr_gamma": 0.9, "epochs": 60, "batch_size": 32}
    assert d["augment"] == ["flip", "erase", "noise"] and d["erase_scale"] == [0.02, 0.25]
    assert d["noise_std"] == pytest.approx(30 ** 0.5 / 255)  # variance 30 on 0..255 pixels
