"""The trainer on real shards with a tiny PE-Core-architecture backbone: resume equals an uninterrupted
run, the methods train, reports are written, model-info reports parameter counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_fairface
from fer_cli.main import app
from fer_data.ingest import ingest
from fer_models.config import TrainConfig
from fer_models.methods import build_method
from fer_data.loaders import select
from fer_models.evaluate import evaluate
from fer_models.train import BEST, build_seeded, enable_checkpointing, load_run, train


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    """FairFace-layout faces with age bin + gender, split into train/val, ingested to 112 px shards."""
    root = tmp_path_factory.mktemp("ff")
    write_fairface(root, {"train": 16, "val": 8})
    out = tmp_path_factory.mktemp("out")
    ingest("fairface", root, out, detector="none", size=112, shard_samples=8)
    return out / "catalog.duckdb"


def config(catalog_path: Path, out: Path, **kw) -> TrainConfig:
    base = dict(catalog=str(catalog_path), backbone="pe-core-tiny-test", image_size=32, tasks=["age_bin", "gender"],
                test_where="split = 'val'", epochs=3, batch_size=4, lr=1e-2, out=str(out), dropout=0.0)
    return TrainConfig(**{**base, **kw})


AUGMENTED = dict(augment=["crop", "rotate", "flip", "erase", "noise"], mixup=0.4, fmix=1.0, schedule="exponential")


@pytest.mark.parametrize("peft, recipe", [("lp", {}), ("lora", {}), ("lp", AUGMENTED)], ids=["lp", "lora", "augmented"])
def test_resume_equals_uninterrupted(catalog_path: Path, tmp_path: Path, peft: str, recipe: dict) -> None:
    """Augmentation and mixing draw from the RNG the trainer seeds per epoch: a resumed run draws the same."""
    full = train(config(catalog_path, tmp_path / "full", peft=peft, rank=4, **recipe))
    assert train(config(catalog_path, tmp_path / "cut", peft=peft, rank=4, **recipe), stop_after_epoch=1) == {}
    resumed = train(config(catalog_path, tmp_path / "cut", peft=peft, rank=4, **recipe))
    assert resumed == full
    a = torch.load(tmp_path / "full" / BEST, weights_only=True)
    b = torch.load(tmp_path / "cut" / BEST, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reports_and_dvclive(catalog_path: Path, tmp_path: Path) -> None:
    metrics = train(config(catalog_path, tmp_path / "run", epochs=2))
    assert metrics["n_samples"] == 8
    assert 0.0 <= metrics["gender/accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    csv = (tmp_path / "run" / "plots" / "confusion_gender.csv").read_text().splitlines()
    assert csv[0] == "actual,predicted" and len(csv) == 9
    assert (tmp_path / "run" / "plots" / "png" / "confusion_gender.png").stat().st_size > 0
    assert (tmp_path / "run" / "plots" / "png" / "training_curves.png").stat().st_size > 0
    assert (tmp_path / "run" / "dvclive" / "metrics.json").exists()


def test_a_saved_run_evaluates_as_it_did_after_training(catalog_path: Path, tmp_path: Path) -> None:
    """Checkpoints hold only what training changes: reloading must rebuild the same random backbone. The
    recipe augments, but evaluation never does, so another RNG state scores the same."""
    cfg = config(catalog_path, tmp_path / "run", peft="lora", rank=4, epochs=1, **AUGMENTED)
    metrics = train(cfg)
    torch.manual_seed(12345)  # whatever the caller's RNG state
    loaded_cfg, model = load_run(tmp_path / "run")
    urls, ids = select(cfg.catalog, cfg.test_where)
    assert evaluate(model, urls, ids, loaded_cfg, torch.device("cpu")).metrics == metrics


def test_multitask_batch_without_a_task_adds_nothing(catalog_path: Path, tmp_path: Path) -> None:
    model = build_method(config(catalog_path, tmp_path, tasks=["emotion", "gender"]))
    out = model(torch.randint(0, 255, (4, 3, 112, 112), dtype=torch.uint8))
    loss, parts = model.loss(out, {"emotion": torch.full((4,), -100), "gender": torch.tensor([0, 1, 1, 0])})
    assert parts["loss_emotion"] == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.heads.parameters() if p.grad is not None)


def test_model_info_cli() -> None:
    result = CliRunner().invoke(app, ["model-info", "multitask", "--set", "backbone=pe-core-tiny-test", "--set", "peft=lp"])
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["method"] == "multitask" and info["backbone"] == "pe-core-tiny-test"
    assert 0 < info["trainable_params"] < info["total_params"]
    assert info["trainable_fraction"] == pytest.approx(info["trainable_params"] / info["total_params"])


@pytest.mark.parametrize("flag", ["channels_last", "activation_checkpointing",
                                  pytest.param("compile", marks=pytest.mark.slow)])
def test_gpu_readiness_flags_train_on_cpu(catalog_path: Path, tmp_path: Path, flag: str) -> None:
    metrics = train(config(catalog_path, tmp_path / "run", epochs=1, **{flag: True}))
    assert metrics["n_samples"] == 8 and math.isfinite(metrics["loss"])


def test_activation_checkpointing_recomputes_with_the_same_gradients(catalog_path: Path, tmp_path: Path) -> None:
    cfg = config(catalog_path, tmp_path, peft="lora", rank=4)
    images, targets = torch.randint(0, 255, (4, 3, 112, 112), dtype=torch.uint8), {
        "age_bin": torch.tensor([0, 1, 2, 3]), "gender": torch.tensor([0, 1, 1, 0])}
    grads = []
    for checkpointing in (False, True):
        model = build_seeded(cfg)
        if checkpointing:
            enable_checkpointing(model)
            assert any(getattr(m, "grad_checkpointing", False) for m in model.modules())
        model.train()
        model.loss(model(images), targets)[0].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
