"""PE-CLIP on the tiny two-tower CLIP ("clip-tiny-test": vision width 32, text width 24, 6 layers)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fer_models import backbones
from fer_models.config import TrainConfig
from fer_models.methods.pe_clip import EMOTION_AUS, PeClip, TemporalDynamicAdapter, class_prompts
from fer_models.registry import METHOD_DEFAULTS

B, T, SIZE = 2, 4, 32


def tiny_cfg(**overrides: object) -> TrainConfig:
    return TrainConfig(method="pe_clip", backbone="clip-tiny-test", tasks=["emotion"], **overrides)


def clips(seed: int = 0, batch: int = B) -> torch.Tensor:
    return torch.randint(0, 256, (batch, T, 3, SIZE, SIZE), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def bottleneck(width: int, r: int = 8) -> int:
    return 2 * width * (width // r) + width // r + width


def expected_trainable(vision: int, text: int, layers: int, depth: int, r: int = 8, n_ctx: int = 2,
                       layout: str = "per_block", tdas: int = 1) -> int:
    """Trainable parameter count by hand: `tdas` TDAs per vision block, shared adapters (one per block
    and tower, or one core for all), a textual adapter per text block, MaPLe prompts."""
    h = vision // r
    tda = 2 * vision + (vision * h + h) + 3 * (2 * h * h + 2 * h) + (h * vision + vision) + (vision + 1)
    if layout == "per_block":
        shared = layers * (bottleneck(vision, r) + bottleneck(text, r))
    else:
        core = min(vision, text)
        shared = bottleneck(core, r) + ((vision * core + core) + (core * vision + vision) if vision != text else 0)
    textual = layers * bottleneck(text, r)
    prompts = depth * n_ctx * text + depth * (text * vision + vision)
    return tdas * layers * tda + shared + textual + prompts


def one_step(model: PeClip, labels: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    optimizer.zero_grad()
    loss, _ = model.loss(model(clips()), {"emotion": labels})
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def test_registered_paper_defaults() -> None:
    defaults = METHOD_DEFAULTS["pe_clip"]
    assert defaults["backbone"] == "ViT-B-16" and defaults["tasks"] == ["emotion"]
    assert "kind = 'clip'" in defaults["train_where"]


def test_au_class_prompts_in_affectnet_order() -> None:
    prompts = class_prompts(2)
    assert len(prompts) == 7 and len(EMOTION_AUS) == 8  # contempt only on an 8-class head
    assert prompts[1] == "X X happiness: cheek raiser, lip corner puller."
    assert prompts[0].startswith("X X neutral:") and prompts[6].startswith("X X anger: brow lowerer")


def test_vit_b16_layout_trains_about_9m_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ViT-B-16 layout (frozen towers on the meta device: counted, never allocated)."""
    def meta_clip(name: str, pretrained: str | None = None) -> nn.Module:
        with torch.device("meta"):
            return backbones.linearize_attention(open_clip.model.CLIP(**open_clip.get_model_config(name)))

    monkeypatch.setattr(backbones, "build_clip", meta_clip)
    model = PeClip(TrainConfig(method="pe_clip", **METHOD_DEFAULTS["pe_clip"]))
    trainable, total = backbones.count_parameters(model)
    assert trainable == expected_trainable(768, 512, layers=12, depth=9) == 9_399_564
    assert trainable / total < 0.06  # the paper: < 6 % of the whole model
    assert not any(p.requires_grad for p in model.backbone.parameters())
    shared = PeClip(TrainConfig(method="pe_clip", **{**METHOD_DEFAULTS["pe_clip"], "pe_clip_adapters": "shared"}))
    assert backbones.count_parameters(shared)[0] == expected_trainable(768, 512, 12, 9, layout="shared")


def test_tiny_count_and_frozen_towers() -> None:
    model = PeClip(tiny_cfg())
    assert backbones.count_parameters(model)[0] == expected_trainable(32, 24, layers=6, depth=6)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    both = PeClip(tiny_cfg(pe_clip_tda="attn_mlp", pe_clip_adapters="shared"))
    assert backbones.count_parameters(both)[0] == expected_trainable(32, 24, 6, 6, layout="shared", tdas=2)


def test_adapters_sit_where_the_authors_put_them() -> None:
    """Per block: ShA after attention in both towers at native width, the textual adapter after the
    text MLP, the TDA after the vision MLP only; each is called once per block of its tower."""
    model = PeClip(tiny_cfg())
    assert model.tda_attn is None and len(model.tda_mlp) == 6
    assert [a.core.down.in_features for a in model.vision_adapters] == [32] * 6
    assert [a.core.down.in_features for a in (*model.text_adapters, *model.textual_adapters)] == [24] * 12
    assert all(isinstance(a.into, nn.Identity) for a in (*model.vision_adapters, *model.text_adapters))
    calls: dict[str, int] = {}
    for name, modules in (("vision", model.vision_adapters), ("text", model.text_adapters),
                          ("textual", model.textual_adapters), ("tda", model.tda_mlp)):
        for module in modules:
            module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    with torch.no_grad():
        model(clips())
    assert calls == {"vision": 6, "text": 6, "textual": 6, "tda": 6}


def test_textual_and_per_block_adapters_get_gradients() -> None:
    torch.manual_seed(0)
    model = PeClip(tiny_cfg())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    one_step(model, torch.tensor([1, 3]), optimizer)  # the zero up-projections move; then all is live
    optimizer.zero_grad()
    model.loss(model(clips()), {"emotion": torch.tensor([1, 3])})[0].backward()
    for adapters in (model.textual_adapters, model.vision_adapters, model.text_adapters):
        for adapter in adapters:
            assert adapter.core.down.weight.grad.abs().sum() > 0 and adapter.core.up.weight.grad.abs().sum() > 0


def test_recipe_groups_adapters_and_prompts_at_the_authors_rates() -> None:
    cfg = TrainConfig.load(overrides=["method=pe_clip", "backbone=clip-tiny-test"])
    assert (cfg.lr, cfg.pe_clip_prompt_lr, cfg.weight_decay, cfg.epochs, cfg.warmup_epochs, cfg.frames) == (
        2e-4, 3e-5, 0.01, 30, 3, 16)
    assert cfg.mixup > 0 and cfg.fmix > 0 and cfg.augment
    model = PeClip(cfg)
    groups = {g["name"]: g for g in model.param_groups(cfg)}
    assert {name: g["lr"] for name, g in groups.items()} == {"adapters": 2e-4, "prompts": 3e-5}
    prompt_ids = {id(p) for p in (*model.text_prompts.parameters(), *model.prompt_proj.parameters())}
    assert {id(p) for p in groups["prompts"]["params"]} == prompt_ids
    assert {id(p) for g in groups.values() for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad}


def test_tda_is_identity_at_init_and_recurs_over_each_clips_frames() -> None:
    torch.manual_seed(0)
    frames, tokens = 5, 6
    tda = TemporalDynamicAdapter(16, 4)
    x = torch.randn(2 * frames, tokens, 16)
    assert torch.equal(tda(x, frames), x)

    nn.init.normal_(tda.up.weight)
    y = tda(x, frames)
    assert not torch.allclose(y, x)
    moved = x.clone()
    moved[frames + 2, 3] += torch.randn(16)  # clip 1, frame 2, token 3 (not a constant: LayerNorm removes those)
    changed = (tda(moved, frames) - moved - (y - x)).abs().amax(dim=-1).view(2, frames, tokens) > 1e-4
    expected = torch.zeros(2, frames, tokens, dtype=torch.bool)
    expected[1, 2:, 3] = True  # the adapter's update: that token position, from that frame on (the GRU
    # runs forward in time), in that clip only
    assert torch.equal(changed, expected)


def test_text_path_is_open_clip_encode_text_when_prompts_are_the_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Depth-1 prompts set to the X token embeddings and the zero-initialised shared adapter leave
    CLIP's text encoder unchanged, also with the sequence cut after the end-of-text token."""
    clip = backbones.build_clip("clip-tiny-test")
    monkeypatch.setattr(backbones, "build_clip", lambda name, pretrained=None: clip)
    model = PeClip(tiny_cfg(pe_clip_prompt_depth=1))
    full = open_clip.get_tokenizer("ViT-B-16")(class_prompts(2))
    assert model.tokens.shape[1] < full.shape[1]
    with torch.no_grad():
        model.text_prompts[0].copy_(clip.token_embedding(full[0, 1:3]))
        reference = F.normalize(clip.encode_text(full), dim=-1)
        assert torch.allclose(model.encode_text(), reference, atol=1e-5)


def test_logits_are_cosines_over_temperature_and_images_are_one_frame_clips() -> None:
    model = PeClip(tiny_cfg()).eval()
    x = clips()
    with torch.no_grad():
        logits = model(x)["emotion"]
        assert logits.shape == (B, 7)
        assert torch.allclose(logits, 100 * model.encode_video(x) @ model.encode_text().T, atol=1e-4)
        assert logits.abs().max() <= 100 + 1e-3
        assert torch.allclose(model(x[:, 0])["emotion"], model(x[:, :1])["emotion"])


def test_shared_adapter_core_is_one_set_of_tensors_trained_by_both_towers() -> None:
    torch.manual_seed(0)
    model = PeClip(tiny_cfg(pe_clip_adapters="shared"))
    (vision,), (text,) = model.vision_adapters, model.text_adapters
    assert vision.core is text.core and vision.core.down.weight is text.core.down.weight
    assert isinstance(vision.into, nn.Linear) and vision.into.weight.shape == (24, 32)  # 32 -> 24 only for vision
    assert isinstance(text.into, nn.Identity)
    # The core's up-projection starts at zero (identity adapter): one step makes the whole core live.
    one_step(model, torch.tensor([1, 3]), torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-2))
    core = list(vision.core.parameters())
    for path in (lambda: model.encode_text().sum(), lambda: model.encode_video(clips(1)).sum()):
        model.zero_grad()
        path().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in core)


def test_every_trainable_tensor_gets_gradient_after_one_step() -> None:
    """At step 0 the zero-initialised up-projections (TDA, shared core) block the gradient to the
    layers before them, so this checks the second backward, after one optimizer step."""
    torch.manual_seed(0)
    model = PeClip(tiny_cfg())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    labels = torch.tensor([2, 5])
    one_step(model, labels, optimizer)
    optimizer.zero_grad()
    model.loss(model(clips()), {"emotion": labels})[0].backward()
    dead = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    assert all(p.grad is None for p in model.backbone.parameters())


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = PeClip(tiny_cfg())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    labels = torch.tensor([4, 7])  # contempt (7) is outside the 7-way head: ignored, not an error
    losses = [one_step(model, labels, optimizer) for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0]


def test_eight_classes_add_a_contempt_prompt() -> None:
    assert class_prompts(2, 8)[7] == "X X contempt: lip corner puller, dimpler."
    model = PeClip(tiny_cfg(emotion_classes=8)).eval()
    with torch.no_grad():
        logits = model(clips())["emotion"]
    assert logits.shape == (B, 8)
    loss, _ = model.loss({"emotion": logits}, {"emotion": torch.tensor([7, 7])})  # contempt counts now
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([7, 7])).item(), rel=1e-5)
