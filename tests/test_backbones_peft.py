"""Backbones and PEFT on tiny PE-Core-style (timm Eva) and classic open_clip ViT towers, real gradients."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from open_clip.model import _build_vision_tower
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file
from torch import nn

from fer_models.backbones import (
    TEST_CONFIGS,
    build_backbone,
    build_clip,
    cache_features,
    count_parameters,
    load_cached_features,
    unfreeze_last_blocks,
)
from fer_models.peft import METHODS, MTLoRALinear, apply_peft, lora_plus_param_groups, trainable_summary

TINY = ("pe-core-tiny-test", "vit-tiny-test")
TASKS = ("emotion", "age_bin", "gender")


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def adapted(name: str, method: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return apply_peft(build_backbone(name), method, rank=4, tasks=TASKS)


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    outs = model.forward_tasks(x).values() if hasattr(model, "forward_tasks") else [model(x)]
    return sum((o ** 2).mean() for o in outs)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", METHODS)
def test_every_adapter_tensor_gets_gradient(name: str, method: str) -> None:
    model = adapted(name, method)
    with torch.no_grad():  # B starts at zero, which zeroes A's gradient; a trained-like B makes the check real
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.normal_(std=0.02)
    loss_of(model, images()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable) == (method in ("dora", "dora_plus", "mtlora"))  # TA-DoRA
    attention = {n.split(".attn.")[1].split(".")[0] for n in trainable if ".attn." in n}
    assert attention == ({"qkv", "proj"} if "pe-core" in name else {"in_proj", "out_proj"})
    dead = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"adapter tensors without gradient: {dead}"


def test_lora_on_multihead_attention_out_proj_gets_no_gradient() -> None:
    """The pitfall that `linearize_attention` removes: nn.MultiheadAttention bypasses a wrapped out_proj."""
    cfg = TEST_CONFIGS["vit-tiny-test"]
    tower = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    assert isinstance(tower.transformer.resblocks[0].attn, nn.MultiheadAttention)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["out_proj"]), tower)
    with torch.no_grad():
        for n, p in tower.named_parameters():
            if "lora_B" in n:
                p.normal_()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    tower(x).sum().backward()
    lora = [p for n, p in tower.named_parameters() if "lora_" in n]
    assert lora and x.grad is not None and all(p.grad is None for p in lora)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", METHODS)
def test_frozen_base_unchanged_by_optimizer_step(name: str, method: str) -> None:
    model = adapted(name, method)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loss_of(model, images()).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert all(params[n].grad is None and torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())


@pytest.mark.parametrize("method", ["lora_plus", "dora", "mtlora"])
def test_lora_plus_param_groups(method: str) -> None:
    model = adapted("pe-core-tiny-test", method)
    head = nn.Linear(model.embed_dim, 7)
    groups = lora_plus_param_groups(nn.ModuleList([model, head]), lr=1e-4, ratio=6.0, weight_decay=0.05)
    names = {id(p): n for n, p in nn.ModuleList([model, head]).named_parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in [*model.parameters(), *head.parameters()] if p.requires_grad}
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert any("lora_A" in n for n in lr_of) and any("lora_B" in n for n in lr_of)
    assert all(lr == pytest.approx(6e-4 if "lora_B" in n else 1e-4) for n, lr in lr_of.items())
    torch.optim.AdamW(groups)  # valid optimizer groups


def test_random_init_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fer_models.backbones"):
        build_backbone("vit-tiny-test")
    lines = [r.getMessage() for r in caplog.records if r.name == "fer_models.backbones"]
    assert len(lines) == 1 and "RANDOMLY INITIALISED" in lines[0] and "will not match the papers" in lines[0]


@pytest.mark.parametrize("name", TINY)
def test_local_file_weights_load(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    source = build_backbone(name).eval()
    torch.save(source.state_dict(), tmp_path / "backbone.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    x = images()
    for file in ("backbone.pt", "ddp.pt"):
        torch.manual_seed(2)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fer_models.backbones"):
            loaded = build_backbone(name, pretrained=str(tmp_path / file)).eval()
        assert not [r for r in caplog.records if r.name == "fer_models.backbones"]
        assert torch.equal(loaded(x), source(x))
    resized = build_backbone(name, pretrained=str(tmp_path / "backbone.pt"), image_size=48)
    assert resized.image_size == 48 and resized(images(size=48)).shape == (2, resized.embed_dim)


def test_open_clip_checkpoint_with_multihead_attention_loads(tmp_path: Path) -> None:
    """A CLIP checkpoint (nn.MultiheadAttention keys, text tower beside) loads into the linearised tower."""
    cfg = TEST_CONFIGS["vit-tiny-test"]
    tower = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).eval()
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()} | {"text.token_embedding.weight": torch.zeros(3)}
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    torch.save(state, tmp_path / "clip.pt")
    backbone = build_backbone("vit-tiny-test", pretrained=str(tmp_path / "clip.pt")).eval()
    x = images()
    torch.testing.assert_close(backbone(x), tower(backbone.prepare(x)))


def test_timm_layout_and_hf_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PE weights as a bare timm trunk state dict, served from a local HF cache under an hf-hub: id."""
    source = build_backbone("pe-core-tiny-test").eval()
    snapshot = tmp_path / "models--org--pe-tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--org--pe-tiny" / "refs").mkdir()
    (tmp_path / "models--org--pe-tiny" / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in source.visual.trunk.state_dict().items()},
              snapshot / "open_clip_model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = build_backbone("pe-core-tiny-test", pretrained="hf-hub:org/pe-tiny").eval()
    assert torch.equal(loaded(images()), source(images()))
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        build_backbone("pe-core-tiny-test", pretrained="hf-hub:org/absent")


@pytest.mark.parametrize("name", TINY)
def test_backbone_interface(name: str) -> None:
    backbone = build_backbone(name).eval()
    x = images(size=40)
    emb = backbone(x)
    assert emb.shape == (2, backbone.embed_dim) and backbone.image_size == 32
    torch.testing.assert_close(backbone(x.float() / 255), emb)  # float [0,1] is the same image
    tokens = backbone.forward_tokens(x)
    assert tokens.shape == (2, backbone.num_prefix_tokens + 16, backbone.width)
    torch.testing.assert_close(emb, backbone.visual(backbone.prepare(x)))  # same as open_clip's own forward


@pytest.mark.parametrize("name", TINY)
def test_ft4_unfreezes_last_four_blocks_and_pooling(name: str) -> None:
    backbone = unfreeze_last_blocks(build_backbone(name), 4)
    expected = {id(p) for b in backbone.blocks[2:] for p in b.parameters()} | {id(p) for p in backbone.pool_params()}
    assert {id(p) for p in backbone.parameters() if p.requires_grad} == expected
    assert not any(p.requires_grad for b in backbone.blocks[:2] for p in b.parameters())
    trainable, total = count_parameters(backbone)
    assert trainable == sum(p.numel() for p in backbone.parameters() if id(p) in expected) and trainable < total
    if backbone.is_eva:
        pooled = {id(p) for p in backbone.visual.trunk.attn_pool.parameters()} | {id(backbone.visual.trunk.head.weight)}
        assert pooled <= expected


def test_mtlora_task_paths() -> None:
    model = adapted("pe-core-tiny-test", "mtlora").eval()
    layers = [m for m in model.modules() if isinstance(m, MTLoRALinear)]
    assert len(layers) == 4 + 6  # last block (qkv, proj, fc1, fc2) + attention pool (q, kv, proj, fc1, fc2) + head
    x = images()
    shared = model(x)
    feats = model.forward_tasks(x)
    assert list(feats) == list(TASKS)
    assert all(torch.allclose(f, shared, atol=1e-6) for f in feats.values())  # B_t = 0: tasks start shared
    with torch.no_grad():
        for layer in layers:
            layer.lora_B_tasks["gender"].normal_(std=0.1)
    feats = model.forward_tasks(x)
    assert not torch.allclose(feats["gender"], shared, atol=1e-4)
    assert torch.allclose(feats["emotion"], shared, atol=1e-6) and torch.allclose(model(x), shared, atol=1e-6)
    assert all(layer.active_task is None for layer in layers)


def test_cache_features_round_trip(tmp_path: Path) -> None:
    backbone = build_backbone("vit-tiny-test")
    batches = [(images(2, seed=i), {"sample_id": [f"s{i}a", f"s{i}b"]}) for i in range(2)]
    cache_features(backbone, batches, tmp_path / "feats.pt")
    cached = load_cached_features(tmp_path / "feats.pt")
    assert list(cached) == ["s0a", "s0b", "s1a", "s1b"]
    with torch.no_grad():
        torch.testing.assert_close(cached["s1b"], backbone.eval()(batches[1][0])[1])
    with pytest.raises(ValueError, match="repeated"):
        cache_features(backbone, batches + batches[:1], tmp_path / "dup.pt")


@pytest.mark.slow
def test_build_clip_keeps_both_towers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fer_models.backbones"):
        clip = build_clip("ViT-B-16")
    assert any("RANDOMLY INITIALISED" in r.getMessage() for r in caplog.records if r.name == "fer_models.backbones")
    with torch.no_grad():
        assert clip.encode_image(torch.randn(1, 3, 224, 224)).shape == clip.encode_text(torch.zeros(1, 77, dtype=torch.long)).shape


def heads(dim: int) -> nn.ModuleList:
    """The thesis' per-task MLP heads (emotion 7, age 9, gender 2): BN-Dropout-Linear(D,256)-GELU-Linear(256,k)."""
    return nn.ModuleList(
        nn.Sequential(nn.BatchNorm1d(dim), nn.Dropout(0.1), nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, k))
        for k in (7, 9, 2))


@pytest.mark.slow
def test_pe_core_l_trainable_fractions_match_thesis() -> None:
    start = time.perf_counter()
    backbone = build_backbone("PE-Core-L-14-336")
    build_s = time.perf_counter() - start
    base = count_parameters(backbone)[1]
    task_heads = heads(backbone.embed_dim)
    fractions = {}
    for setup in ("lp", "ft4", "dora", "mtlora"):
        model = copy.deepcopy(backbone)
        start = time.perf_counter()
        if setup == "lp":
            model.requires_grad_(False)
        elif setup == "ft4":
            unfreeze_last_blocks(model, 4)
        else:
            model = apply_peft(model, setup, rank=64, tasks=TASKS)
        fractions[setup] = {
            "backbone_only": trainable_summary(model)["trainable_fraction"],
            "with_heads": trainable_summary(nn.ModuleList([model, task_heads]))["trainable_fraction"],
            "trainable_over_base": count_parameters(nn.ModuleList([model, task_heads]))[0] / base,
            "seconds": round(time.perf_counter() - start, 1),
        }
        del model
    print(f"\nPE-Core-L-14-336 vision tower: {base} params, built in {build_s:.1f}s")
    for setup, f in fractions.items():
        print(setup, {k: round(100 * v, 2) if k != "seconds" else v for k, v in f.items()})
    assert backbone.image_size == 336 and backbone.embed_dim == 1024 and len(backbone.blocks) == 24
    assert fractions["lp"]["with_heads"] < 0.01  # thesis 0.33%
    assert abs(fractions["ft4"]["backbone_only"] - 0.2013) < 0.01
    assert abs(fractions["dora"]["with_heads"] - 0.0847) < 0.01
    assert abs(fractions["mtlora"]["with_heads"] - 0.1038) < 0.015
