"""Recipes: `fer recipe` prints what `fer train` builds (optimizer kind, named groups, LRs, schedule), `--recipe
paper` keeps the paper's settings whole, schedules and warm-up, the 8-class emotion head, model-info's heads
and groups, DoRA + LoRA+ groups, uncertainty weighting over the tasks a batch has."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import write_fairface, write_image
from fer_cli.main import app
from fer_data.ingest import ingest
from fer_models import train as trainer
from fer_models.config import TrainConfig
from fer_models.methods import build_method
from fer_models.train import CHECKPOINT, lr_factor

CLASSES = ["neutral", "happy", "sad", "contempt"]


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An emotion image folder with contempt among its classes, train / val / test."""
    folder = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        for i in range(n):
            write_image(folder / split / CLASSES[i % 4] / f"{i}.jpg", seed=i + 50 * len(split))
    out = tmp_path_factory.mktemp("out")
    ingest("imagefolder", folder, out, detector="none", size=112)
    ingest("fairface", write_fairface(tmp_path_factory.mktemp("ff"), {"train": 8, "val": 6}), out, detector="none",
           size=112)  # no test split: its val split is its test set (the thesis' FairFace "test")
    return out / "catalog.duckdb"


@pytest.fixture
def params(catalog_path: Path, tmp_path: Path) -> Path:
    """A params file like the demo's: data keys and shrunk learning settings in `train:`."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {
        "catalog": str(catalog_path), "train_where": "split = 'train'", "val_where": "split = 'val'",
        "test_where": "split = 'test'", "lr": 0.5, "epochs": 1, "batch_size": 4, "tasks": ["emotion"]}}))
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_paper_recipe_takes_only_data_and_execution_keys_from_params(params: Path, catalog_path: Path) -> None:
    paper = TrainConfig.load(params, overrides=["method=cafe"], recipe="paper")
    assert (paper.lr, paper.epochs, paper.batch_size, paper.optimizer) == (2e-4, 60, 32, "adam")
    assert (paper.catalog, paper.train_where, paper.test_where) == (str(catalog_path), "split = 'train'", "split = 'test'")
    demo = TrainConfig.load(params, overrides=["method=cafe"])
    assert (demo.lr, demo.epochs, demo.batch_size, demo.optimizer) == (0.5, 1, 4, "adam")
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig.load(params, overrides=["method=cafe"], recipe="papers")


def test_the_trainer_builds_what_fer_recipe_prints(params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = ["--set", "backbone=vit-tiny-test", "--set", "image_size=32", "--set", "epochs=2", "--set", "batch_size=8",
            "--set", f"out={tmp_path / 'run'}"]
    printed = json.loads(invoke("recipe", "cafe", "--format", "json", "--params", str(params), *sets))
    assert printed["optimizer"]["name"] == "adam" and printed["schedule"] == {"name": "exponential", "lr_gamma": 0.9}
    assert printed["augment"]["ops"] == ["flip", "erase", "noise"] and printed["warmup"] == {"epochs": 0}
    built = []

    def spy(model, cfg):  # noqa: ANN001, ANN202 - wraps build_optimizer
        built.append(real(model, cfg))
        return built[-1]

    real = trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer", spy)
    invoke("train", "cafe", "--recipe", "paper", "--params", str(params), "--no-prefect", *sets)
    (optimizer,) = built
    assert type(optimizer) is torch.optim.Adam
    assert trainer.describe_groups(optimizer) == printed["param_groups"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: config[k] for k in ("lr", "weight_decay", "epochs", "batch_size", "augment")} == {
        "lr": printed["lr"], "weight_decay": printed["weight_decay"], "epochs": printed["epochs"],
        "batch_size": printed["batch_size"], "augment": printed["augment"]["ops"]}
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["optimizer"]["param_groups"]
    assert saved[0]["lr"] == pytest.approx(2e-4 * 0.9 ** 2)  # x 0.9 after each of the 2 epochs


def test_schedules_after_warmup() -> None:
    base = dict(backbone="pe-core-tiny-test", epochs=4)
    cosine = lr_factor(TrainConfig(**base, warmup_fraction=0.25), 10, {"scale": 1.0})
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(25) == pytest.approx(0.5) and cosine(40) == pytest.approx(0.0)
    exponential = lr_factor(TrainConfig(**base, schedule="exponential", lr_gamma=0.5, warmup_epochs=0), 10, {"scale": 1})
    assert [exponential(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    constant = lr_factor(TrainConfig(**base, schedule="constant", warmup_epochs=1), 10, {"scale": 1.0})
    assert [constant(s) for s in (0, 4, 10, 39)] == [pytest.approx(0.1), pytest.approx(0.5), 1.0, 1.0]
    plateau = {"scale": 1.0}
    factor = lr_factor(TrainConfig(**base, schedule="plateau", warmup_epochs=0), 10, plateau)
    plateau["scale"] = 0.1
    assert factor(30) == pytest.approx(0.1)


def test_plateau_divides_the_lr_after_patience_epochs_without_improvement(
        params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "primary_metric", lambda metrics: 0.5)  # never improves after the first epoch
    cfg = TrainConfig.load(params, overrides=[
        "method=multitask", "backbone=pe-core-tiny-test", "image_size=32", "peft=lp", "lr=0.01", "epochs=3",
        "schedule=plateau", "plateau_patience=1", "plateau_factor=0.1", "warmup_epochs=0", f"out={tmp_path}"])
    trainer.train(cfg)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["state"]["lr_scale"] == pytest.approx(0.01)  # lowered after epochs 2 and 3
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)  # epoch 3 trained at 0.01 x 0.1


def test_eight_emotion_classes_keep_contempt(params: Path, tmp_path: Path) -> None:
    common = ["method=multitask", "backbone=pe-core-tiny-test", "image_size=32", "peft=lp", "epochs=1"]
    for classes in (7, 8):
        cfg = TrainConfig.load(params, overrides=[*common, f"emotion_classes={classes}", f"out={tmp_path / str(classes)}"])
        metrics = trainer.train(cfg)
        rows = (tmp_path / str(classes) / "plots" / "confusion_emotion.csv").read_text().splitlines()[1:]
        actual = {row.split(",")[0] for row in rows}
        if classes == 8:
            assert "contempt" in actual and len(rows) == 8
        else:
            assert "contempt" not in actual and len(rows) == 6  # the 2 contempt faces are not scored
        assert metrics["n_samples"] == 8
    model = build_method(TrainConfig(backbone="pe-core-tiny-test", tasks=["emotion"], emotion_classes=8))
    out = model(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert out["emotion"].shape == (2, 8)
    loss, _ = model.loss(out, {"emotion": torch.tensor([7, 7])})
    assert loss > 0  # contempt is a class now, not ignored


def test_model_info_reports_heads_and_named_groups() -> None:
    info = json.loads(invoke("model-info", "multitask", "--set", "backbone=pe-core-tiny-test", "--set", "peft=ft4",
                             "--set", "lr=0.01").strip().splitlines()[-1])
    assert info["heads"] == {"emotion": 7, "age_bin": 9, "gender": 2}
    groups = {g["name"]: g for g in info["param_groups"]}
    assert groups["heads"]["lr"] == 0.01 and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert sum(g["n_params"] for g in info["param_groups"]) == info["trainable_params"]


def test_lr_reference_batch_scales_every_group() -> None:
    """MAE's rule: the LR given is per 256 samples; batch 64 x 2 accumulation steps trains at half of it."""
    cfg = TrainConfig(backbone="pe-core-tiny-test", peft="ft4", lr=0.01, batch_size=64, grad_accum=2,
                      lr_reference_batch=256)
    groups = {g["name"]: g["lr"] for g in trainer.optimizer_groups(build_method(cfg), cfg)}
    assert groups == {"heads": pytest.approx(0.005), "backbone": pytest.approx(0.0005)}


@pytest.mark.parametrize("peft", ["dora_plus", "mtlora"])
def test_dora_plus_trains_every_b_matrix_at_six_times_the_lr(peft: str) -> None:
    cfg = TrainConfig(backbone="pe-core-tiny-test", peft=peft, rank=4, lr=0.01)
    model = build_method(cfg)
    optimizer = trainer.build_optimizer(model, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["lora_B"]["lr"] == pytest.approx(0.06) and groups["other"]["lr"] == 0.01
    b = {id(p) for n, p in model.named_parameters() if ".lora_B" in n and p.requires_grad}
    assert b and b == {id(p) for p in groups["lora_B"]["params"]}
    magnitudes = [p for n, p in model.named_parameters() if "lora_magnitude_vector" in n]
    assert magnitudes and {id(p) for p in magnitudes} <= {id(p) for p in groups["no_decay"]["params"]}  # DoRA
    if peft == "mtlora":
        assert any("lora_B_tasks" in n for n, p in model.named_parameters() if id(p) in b)


@pytest.mark.slow
def test_dora_plus_on_pe_core_l_trains_the_thesis_share() -> None:
    """The thesis' best model: 8.47 % of PE-Core-L-14-336 trainable (random weights: only counts matter)."""
    info = json.loads(invoke("model-info", "multitask", "--set", "peft=dora_plus", "--set", "backbone=PE-Core-L-14-336",
                             "--set", "image_size=null", "--set", "rank=64").strip().splitlines()[-1])
    assert abs(100 * info["trainable_fraction"] - 8.47) < 1.0
    assert {g["name"] for g in info["param_groups"]} == {"lora_B", "other", "no_decay"}


def test_uncertainty_weighting_leaves_a_task_without_labels_alone() -> None:
    model = build_method(TrainConfig(backbone="pe-core-tiny-test", tasks=["emotion", "gender"],
                                     uncertainty_weighting=True))
    out = model(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8))
    loss, _ = model.loss(out, {"emotion": torch.full((4,), -100), "gender": torch.tensor([0, 1, 1, 0])})
    loss.backward()
    grad = model.weighting.log_vars.grad
    assert grad[0] == 0 and grad[1] != 0  # no labels, no pull on emotion's log-variance
    assert math.isfinite(loss.item())


def test_bad_recipe_settings_are_one_line_errors() -> None:
    for bad, match in (("schedule=linear", "schedule"), ("augment=[blur]", "augment"), ("emotion_classes=6", "emotion"),
                       ("crop_scale=[0.9, 0.5]", "crop_scale"), ("optimizer=lamb", "optimizer")):
        with pytest.raises(ValueError, match=match):
            TrainConfig.load(None, overrides=[bad])


def test_cross_eval_scores_each_test_set_and_task_falling_back_to_val(params: Path, tmp_path: Path) -> None:
    from flows.evaluate import score_run, test_set

    cfg = TrainConfig.load(params, overrides=["method=multitask", "backbone=pe-core-tiny-test", "image_size=32",
                                              "peft=lp", "tasks=[emotion, gender]", f"out={tmp_path / 'mt'}"])
    trainer.train(cfg)
    rows = score_run.fn(str(tmp_path / "mt"), ["imagefolder", "fairface", "imagefolder:all"], ["emotion", "gender", "au"])
    scored = {(task, dataset, len(y)) for task, _, dataset, y, _ in rows}
    assert scored == {("emotion", "imagefolder", 8),  # its test split (contempt included, then ignored)
                      ("gender", "fairface", 6),  # no test split: val
                      ("emotion", "imagefolder", 32)}  # every split
    assert test_set("utkface:all") == ("utkface", "all") and test_set("sfew") == ("sfew", None)
    with pytest.raises(ValueError, match="split"):
        test_set("rafdb:dev")
