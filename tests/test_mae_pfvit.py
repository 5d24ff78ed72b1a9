"""MAE pre-training and PF-ViT on the tiny "mae-test" size (32 px, patch 8: 16 patches)."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import pytest
import torch

from fer_models.backbones import count_parameters
from fer_models.config import TrainConfig
from fer_models.face_recognition import load_face_recognizer, orthogonality_loss
from fer_models.methods.mae import Mae, patch_normalise, patchify, random_masking, unpatchify
from fer_models.methods.mae_vit import MaeVit
from fer_models.methods.pf_vit import PfVit, discriminator_loss
from fer_models.registry import METHOD_DEFAULTS
from fer_models.train import BEST, build_optimizer, load_state, saved_state

N_PATCHES = 16


def mae_cfg(**kw) -> TrainConfig:
    return TrainConfig(method="mae", backbone="mae-test", **kw)


def pf_cfg(**kw) -> TrainConfig:
    return TrainConfig(method="pf_vit", backbone="mae-test", **kw)


def faces(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Smooth uint8 112 px images (a learnable signal for the MAE), as the loaders deliver them."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(low, size=112, mode="bilinear") * 255).to(torch.uint8)


@pytest.mark.parametrize(("n", "ratio", "keep"), [(16, 0.75, 4), (196, 0.75, 49), (16, 0.6, 6), (16, 0.0, 16)])
def test_masking_keeps_floor_of_visible_patches(n: int, ratio: float, keep: int) -> None:
    ids_keep, ids_restore, mask = random_masking(3, n, ratio, torch.device("cpu"))
    assert ids_keep.shape == (3, keep)
    assert (mask.sum(dim=1) == n - keep).all()
    assert (torch.gather(mask, 1, ids_keep) == 0).all()  # the kept patches are the unmasked ones
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(n).expand(3, n))  # a permutation
    assert torch.equal(ids_restore.argsort(dim=1)[:, :keep], ids_keep)  # that puts [kept, dropped] back in order


def test_mae_forward_masks_three_quarters_and_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    model = Mae(mae_cfg())
    images = faces()
    out = model(images)
    assert out["pred"].shape == out["target"].shape == (4, N_PATCHES, 8 * 8 * 3)
    assert (out["mask"].sum(dim=1) == 12).all()  # int(16 * 0.25) = 4 visible
    assert not torch.equal(model(images)["mask"], out["mask"])  # training: fresh masks
    model.eval()
    first, second = model(images), model(images)
    assert torch.equal(first["mask"], second["mask"])
    assert model.loss(first, {})[0] == model.loss(second, {})[0]


def test_pixel_helpers_and_masked_only_loss() -> None:
    x = torch.randn(2, 3, 32, 32)
    patches = patchify(x, 8)
    assert torch.equal(patches[0, 1, :3], x[0, :, 0, 8])  # patch 1 starts at row 0, column 8, channels last
    assert torch.equal(unpatchify(patches, 8), x)
    target, mean, std = patch_normalise(patches)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-3)
    assert torch.allclose(target * std + mean, patches, atol=1e-5)

    model = Mae(mae_cfg())
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    wrong_where_visible = {"pred": target + 5 * (1 - mask).unsqueeze(-1), "target": target, "mask": mask}
    assert model.loss(wrong_where_visible, {})[0].item() == pytest.approx(0.0, abs=1e-6)
    off_by_one = {"pred": target + 1, "target": target, "mask": mask}
    assert model.loss(off_by_one, {})[0].item() == pytest.approx(1.0)


def test_mae_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = mae_cfg(lr=3e-3)
    model = Mae(cfg)
    images = faces(8)
    model.eval()
    before = model.loss(model(images), {})[0].item()
    model.train()
    opt = torch.optim.AdamW(model.param_groups(cfg), weight_decay=cfg.weight_decay)
    for _ in range(20):
        loss, _ = model.loss(model(images), {})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = model.loss(model(images), {})[0].item()
    # below 1.0 = better than predicting each masked patch's mean (its normalised target has variance 1)
    assert after < min(0.8 * before, 1.0), (before, after)


def test_mae_optimiser_groups_and_checkpoint_keep_everything() -> None:
    model = Mae(mae_cfg())
    decay, plain = model.param_groups(mae_cfg())
    assert plain["weight_decay"] == 0.0 and (decay["name"], plain["name"]) == ("decay", "no_decay")
    grouped = {id(p) for g in (decay, plain) for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    assert {id(model.encoder.cls_token), id(model.decoder.mask_token)} <= {id(p) for p in plain["params"]}
    assert not model.encoder.pos_embed.requires_grad  # fixed sin-cos
    assert set(saved_state(model)) == set(model.state_dict())  # nothing under backbone.: all is saved


def test_registered_paper_defaults() -> None:
    assert METHOD_DEFAULTS["mae"]["tasks"] == [] and METHOD_DEFAULTS["mae"]["backbone"] == "mae-vit-base-16"
    assert METHOD_DEFAULTS["pf_vit"]["tasks"] == ["emotion"] and METHOD_DEFAULTS["pf_vit"]["lr"] == 2e-5
    assert TrainConfig().mae_mask_ratio == 0.75


def test_mae_base_lr_scales_with_the_batch_as_mae_does() -> None:
    cfg = TrainConfig.load(overrides=["method=mae", "backbone=mae-test", "batch_size=64", "grad_accum=2"])
    assert (cfg.lr, cfg.lr_reference_batch, cfg.betas) == (1.5e-4, 256, [0.9, 0.95])
    optimizer = build_optimizer(Mae(cfg), cfg)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1.5e-4 * 128 / 256] * 2)
    assert optimizer.defaults["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("method", ["pf_vit", "mae_vit"])
def test_plateau_recipes_of_the_fine_tunes(method: str) -> None:
    cfg = TrainConfig.load(overrides=[f"method={method}"])  # the paper recipe: nothing in a params file
    assert (cfg.optimizer, cfg.batch_size, cfg.epochs) == ("adam", 32, 100)
    assert (cfg.schedule, cfg.plateau_patience, cfg.plateau_factor) == ("plateau", 30, 0.1)
    assert cfg.augment == ["scale", "flip"]
    assert cfg.lr == (2e-5 if method == "pf_vit" else 1e-4)


def test_mae_vit_baseline_is_the_encoder_and_a_linear_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = mae_cfg(out=str(tmp_path / "mae"))
    mae = Mae(cfg)
    Path(cfg.out).mkdir()
    torch.save(saved_state(mae), Path(cfg.out) / BEST)
    (Path(cfg.out) / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.manual_seed(2)
    vit_cfg = TrainConfig(method="mae_vit", backbone="mae-test", pretrained=cfg.out, lr=1e-3)
    model = MaeVit(vit_cfg)
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in mae.encoder.state_dict().items())
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"encoder", "classifier"}
    images, targets = faces(), {"emotion": torch.tensor([0, 1, 2, 3])}
    optimizer = torch.optim.Adam(model.param_groups(vit_cfg))
    first = model.loss(model(images), targets)[0].item()
    for _ in range(10):
        optimizer.zero_grad()
        model.loss(model(images), targets)[0].backward()
        optimizer.step()
    assert model.loss(model(images), targets)[0].item() < first


def test_separator_parts_sum_to_tokens() -> None:
    model = PfVit(pf_cfg())
    z = torch.randn(2, 1 + N_PATCHES, 32)
    emotional, residue = model.separator(z)
    assert torch.allclose(emotional + residue, z, atol=1e-6)
    ratio = emotional / z  # the token-wise selection mask, strictly inside (0, 1)
    assert (ratio > 0).all() and (ratio < 1).all()


def test_pf_vit_eval_forward_skips_generator_and_discriminator() -> None:
    model = PfVit(pf_cfg()).eval()
    calls = []
    for part in (model.generator, model.discriminator):
        part.register_forward_hook(lambda *_: calls.append(1))
    out = model(faces())
    assert set(out) == {"emotion"} and out["emotion"].shape == (4, 7)
    assert torch.equal(model.scores(out)["emotion"], out["emotion"])
    assert not calls
    y = torch.tensor([0, 3, 7, -100])  # validation loss: cross-entropy over the labels 0..6 only
    loss, parts = model.loss(out, {"emotion": y})
    assert set(parts) == {"loss_ce"}
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out["emotion"][:2], y[:2]).item())
    model.train()
    out = model(faces())
    assert out["recon"].shape == out["poker"].shape == out["image"].shape == (4, 3, 32, 32)
    assert out["d_fake"].shape == (8, 8) and calls


def test_poker_pixel_loss_counts_neutral_inputs_only() -> None:
    model = PfVit(pf_cfg())
    outputs = {"emotion": torch.zeros(2, 7), "image": torch.zeros(2, 3, 4, 4), "recon": torch.zeros(2, 3, 4, 4),
               "poker": torch.ones(2, 3, 4, 4), "d_fake": torch.zeros(4, 8)}
    # poker face off by 1 everywhere: counted for the neutral face only, averaged over both
    assert model.loss(outputs, {"emotion": torch.tensor([0, 3])})[1]["loss_rec"] == pytest.approx(0.5)
    assert model.loss(outputs, {"emotion": torch.tensor([6, 3])})[1]["loss_rec"] == 0.0
    assert model.loss(outputs, {"emotion": torch.tensor([-100, 7])})[1]["loss_rec"] == 0.0
    # zero logits: every BCE unit is log 2 -> real/fake + emotion terms, twice (reconstruction, poker face)
    assert model.loss(outputs, {"emotion": torch.tensor([0, 3])})[1]["loss_adv"] == pytest.approx(4 * math.log(2))


def test_adversarial_targets() -> None:
    big = 20.0
    emotion = torch.tensor([2, 5, -100])
    confident_real = torch.full((3, 8), -big)
    confident_real[:, -1] = big
    confident_real[0, 2] = confident_real[1, 5] = big
    assert discriminator_loss(confident_real, emotion, real=True).item() < 1e-6
    assert discriminator_loss(confident_real, emotion, real=False).item() > big / 2
    # fakes in the discriminator's loss: only the real/fake unit counts
    fake_any_emotion = torch.randn(3, 8)
    fake_any_emotion[:, -1] = -big
    assert discriminator_loss(fake_any_emotion, None, real=False).item() < 1e-6
    # the generator wants "real, input's emotion" for the reconstruction and "real, neutral" for the poker face
    model = PfVit(pf_cfg())
    poker_ok = torch.full((3, 8), -big)
    poker_ok[:, [0, -1]] = big
    zeros = torch.zeros(3, 3, 4, 4)
    outputs = {"emotion": torch.zeros(3, 7), "image": zeros, "recon": zeros, "poker": zeros,
               "d_fake": torch.cat([confident_real, poker_ok])}
    assert model.loss(outputs, {"emotion": emotion})[1]["loss_adv"] < 1e-6


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in module.named_parameters())


def test_generator_and_discriminator_step_on_separate_optimizers() -> None:
    torch.manual_seed(0)
    cfg = pf_cfg(lr=1e-3)
    model = PfVit(cfg)
    main_ids = {id(p) for g in model.param_groups(cfg) for p in g["params"]}
    groups = model.adversary_param_groups(cfg)
    adversary = [p for g in groups for p in g["params"]]
    assert main_ids.isdisjoint(id(p) for p in adversary)
    assert main_ids | {id(p) for p in adversary} == {id(p) for p in model.parameters() if p.requires_grad}
    main = torch.optim.AdamW(model.param_groups(cfg), weight_decay=cfg.weight_decay)
    second = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    assert second.param_groups[0]["lr"] == cfg.pf_vit_disc_lr and second.param_groups[0]["betas"] == (0.5, 0.999)
    targets = {"emotion": torch.tensor([0, 1, 2, -100])}

    outputs = model(faces())
    loss, parts = model.loss(outputs, targets)
    assert set(parts) == {"loss_ce", "loss_rec", "loss_adv"}
    g_before, d_before, e_before = (_snapshot(m) for m in (model.generator, model.discriminator, model.encoder))
    loss.backward()
    assert all(p.grad is None for p in adversary)  # the generator's adversarial loss leaves D untouched
    main.step()
    main.zero_grad(set_to_none=True)
    assert _changed(model.generator, g_before) and _changed(model.encoder, e_before)
    assert not _changed(model.discriminator, d_before)

    g_before, d_before = _snapshot(model.generator), _snapshot(model.discriminator)
    d_loss, d_parts = model.adversary_loss(outputs, targets)
    d_loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())  # fakes were detached
    second.step()
    assert _changed(model.discriminator, d_before)
    assert not _changed(model.generator, g_before)
    assert set(d_parts) == {"loss_d_real", "loss_d_fake"}


def test_adversarial_loss_reaches_separator_through_poker_face() -> None:
    model = PfVit(pf_cfg(pf_vit_rec_weight=0.0))
    outputs = model(faces())
    targets = {"emotion": torch.full((4,), -100)}  # no labels: CE 0, no poker pixel loss, only adversarial
    model.loss(outputs, targets)[0].backward()
    assert model.separator.adapter[0].weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() == 0


def test_mae_checkpoint_initialises_pf_vit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    cfg = mae_cfg(out=str(tmp_path / "mae"))
    mae = Mae(cfg)
    run = Path(cfg.out)
    run.mkdir()
    torch.save(saved_state(mae), run / BEST)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    for pretrained in (run, run / BEST):
        torch.manual_seed(2)  # a different seed: equal weights can only come from the checkpoint
        model = PfVit(pf_cfg(pretrained=str(pretrained)))
        for name, value in mae.encoder.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[name], value), name
        for name, value in mae.decoder.state_dict().items():
            assert torch.equal(model.generator.decoder.state_dict()[name], value), name
        for name, value in mae.decoder.blocks.state_dict().items():
            assert torch.equal(model.discriminator.blocks.state_dict()[name], value), name
    # PF-ViT's own checkpoint keeps every weight, the discriminator's included, and loads back
    state = saved_state(model)
    assert set(state) == set(model.state_dict())
    torch.manual_seed(3)
    with caplog.at_level(logging.WARNING):
        fresh = PfVit(pf_cfg())
    assert "randomly initialised" in caplog.text
    load_state(fresh, state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="differ from the MAE run"):
        PfVit(TrainConfig(method="pf_vit", backbone="mae-vit-tiny", pretrained=str(run)))


def test_figures_are_uint8_grids_and_keep_the_mode() -> None:
    mae = Mae(mae_cfg())
    grid = mae.figures(faces(6))["mae_reconstruction"]
    labels = grid.shape[1] - 4 * 32  # the strip naming the rows, left of the faces
    assert grid.shape[0] == 3 * 32 and labels > 0 and grid.dtype.name == "uint8"
    assert mae.training
    pf = PfVit(pf_cfg()).eval()
    grid = pf.figures(faces(2))["pf_vit_poker_faces"]
    labels = grid.shape[1] - 2 * 32
    assert grid.shape[0] == 3 * 32 and labels > 0 and grid.dtype.name == "uint8"
    assert not pf.training
    # the top row is the input itself
    expected = torch.nn.functional.interpolate(faces(2).float() / 255, size=32, mode="bilinear", antialias=True)
    top = torch.from_numpy(grid[:32, labels:labels + 32]).permute(2, 0, 1).float() / 255
    assert torch.allclose(top, expected[0], atol=1 / 255 + 1e-6)


def test_paper_sizes_parameter_counts() -> None:
    with torch.device("meta"):  # shapes only: no memory, no init time
        tiny = Mae(TrainConfig(method="mae", backbone="mae-vit-tiny"))
        base = Mae(TrainConfig(method="mae", backbone="mae-vit-base-16"))
    assert 5.4e6 < count_parameters(tiny.encoder)[1] < 5.7e6  # paper: ViT-T with 5.6M parameters
    assert 85e6 < count_parameters(base.encoder)[1] < 87e6  # ViT-B/16 without a head
    assert tiny.encoder.patch_embed.num_patches == base.encoder.patch_embed.num_patches == 196


@pytest.fixture(scope="module")
def face_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random face-recognition CNN saved as ONNX, the format the real ones come in."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.PReLU(8),
                              torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(64, 12)).eval()
    path = tmp_path_factory.mktemp("fr") / "face.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter (no onnxscript graph needed) is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, 24, 24),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=13, dynamo=False)
    return path


def test_orthogonality_loss_is_zero_for_orthogonal_features_only() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert orthogonality_loss(a, torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, -1.0]])).item() == 0.0
    assert orthogonality_loss(a, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])).item() == pytest.approx(
        (2 ** -0.5 + 1) / 2)
    assert orthogonality_loss(a, -a).item() == pytest.approx(1.0)  # anti-parallel is not orthogonal either


def test_face_recognizer_is_frozen_and_stays_in_eval(face_model: Path) -> None:
    fr = load_face_recognizer(face_model)
    assert fr.input_size == 24 and count_parameters(fr)[0] == 0
    fr.train()
    assert not any(m.training for m in fr.modules())
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    fr(x).sum().backward()
    assert x.grad.abs().sum() > 0  # gradients pass through to the images
    with pytest.raises(ValueError, match="not found"):
        load_face_recognizer(face_model.parent / "missing.onnx")
    (face_model.parent / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_face_recognizer(face_model.parent / "junk.onnx")


def test_orthogonality_gradient_reaches_generator_not_the_frozen_network(face_model: Path) -> None:
    torch.manual_seed(0)
    model = PfVit(pf_cfg(pf_vit_face_model=str(face_model), pf_vit_rec_weight=0.0, pf_vit_adv_weight=0.0))
    assert not PfVit(pf_cfg()).backbone  # without a file: no orthogonality term
    outputs = model(faces())
    assert outputs["id_emotion"].shape == outputs["id_poker"].shape == (4, 12)
    targets = {"emotion": torch.full((4,), -100)}  # no labels: the orthogonality term alone moves weights
    loss, parts = model.loss(outputs, targets)
    assert parts["loss_orth"] > 0
    loss.backward()
    assert model.generator.decoder.pred.weight.grad.abs().sum() > 0
    assert model.separator.adapter[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert not any(k.startswith("backbone.") for k in saved_state(model))  # checkpoints leave it out
    assert {id(p) for g in model.param_groups(pf_cfg()) for p in g["params"]}.isdisjoint(
        id(p) for p in model.backbone.parameters())


def test_magnitude_balancing_divides_each_term_by_its_running_mean() -> None:
    model = PfVit(pf_cfg(pf_vit_adv_weight=2.0))
    big, small = torch.tensor(100.0, requires_grad=True), torch.tensor(0.01, requires_grad=True)
    total = model._total({"ce": small, "rec": big, "adv": big})
    assert total.item() == pytest.approx(1 + 1 + 2)  # first step: each term over itself, times its weight
    total.backward()
    assert big.grad.item() == pytest.approx(3 / 100) and small.grad.item() == pytest.approx(1 / 0.01)
    model._total({"ce": small, "rec": 2 * big, "adv": big})
    assert model.loss_means[1].item() == pytest.approx(0.99 * 100 + 0.01 * 200)  # the running mean moves slowly
    fixed = PfVit(pf_cfg(pf_vit_balance="fixed", pf_vit_adv_weight=2.0))
    assert fixed._total({"ce": small, "rec": big, "adv": big}).item() == pytest.approx(0.01 + 100 + 200)
    with pytest.raises(ValueError, match="pf_vit_balance"):
        TrainConfig.load(overrides=["method=pf_vit", "pf_vit_balance=loud"])


def test_eight_class_heads_keep_contempt() -> None:
    model = PfVit(pf_cfg(emotion_classes=8))
    assert model.classifier.out_features == 8 and model.discriminator.head.out_features == 9
    out = model(faces())
    assert out["emotion"].shape == (4, 8) and out["d_fake"].shape == (8, 9)
    _, parts = model.loss(out, {"emotion": torch.tensor([7, 7, 7, 7])})
    assert parts["loss_ce"] > 0  # contempt is a class, not an ignored label
    assert MaeVit(TrainConfig(method="mae_vit", backbone="mae-test", emotion_classes=8)).classifier.out_features == 8
