"""AUFormer, PE-CLIP, MAE and PF-ViT through the one trainer on real-format shards (tiny sizes): the
trainer fills AU lists and occurrence rates from the catalog, k-fold selections hold out the right
samples, a GAN method steps its discriminator on its own optimizer, figures land as PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import write_image
from fer_cli.main import app
from fer_data.ingest import ingest
from fer_data.loaders import au_rates, select
from fer_data.samples.video import write_video_samples
from fer_models.config import TrainConfig
from fer_models.train import BEST, CHECKPOINT, load_run, train

TINY = dict(epochs=1, batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BP4D frames and DFEW clips from the sample generator, and an emotion image folder, in one catalog."""
    raw = write_video_samples(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("out")
    for name in ("bp4d", "dfew"):
        ingest(name, raw[name], out, segments=4, size=112)
    folder = tmp_path_factory.mktemp("folder")
    for i in range(24):
        split = "test" if i % 4 == 0 else "train"
        write_image(folder / split / ["neutral", "happy", "sad"][i % 3] / f"{i}.jpg", seed=i)
    ingest("imagefolder", folder, out, detector="none", size=112)
    return out / "catalog.duckdb"


def config(catalog_path: Path, out: Path, method: str, *overrides: str) -> TrainConfig:
    sets = [f"method={method}", f"catalog={catalog_path}", f"out={out}", *[f"{k}={v}" for k, v in TINY.items()]]
    return TrainConfig.load(None, overrides=[*sets, *overrides])


def test_auformer_fold_run_reads_rates_from_the_catalog(catalog_path: Path, tmp_path: Path) -> None:
    where = "dataset = 'bp4d' AND split = 'train'"
    cfg = config(catalog_path, tmp_path, "auformer", "backbone=vit-tiny-test", f"train_where={where}",
                 "test_where=dataset = 'bp4d' AND split = 'test'", "fold=2")
    metrics = train(cfg)
    saved = json.loads((tmp_path / "config.json").read_text())
    rates = au_rates(catalog_path, where, saved["aus"], fold=2)
    assert saved["aus"] == sorted(au_rates(catalog_path, where, fold=2))  # the training selection's AUs (issue 18)
    assert saved["au_rates"] == [pytest.approx(rates[au]) for au in saved["aus"]]
    _, held_out = select(catalog_path, "dataset = 'bp4d' AND split = 'test'", fold=2)
    assert metrics["n_samples"] == len(held_out) and 0.0 <= metrics["au/f1_mean"] <= 1.0
    rows = (tmp_path / "plots" / "au_f1.csv").read_text().splitlines()
    assert rows[0] == "au,f1" and [r.split(",")[0] for r in rows[1:]] == [f"AU{au}" for au in saved["aus"]]
    assert (tmp_path / "plots" / "png" / "au_f1.png").stat().st_size > 0
    _, model = load_run(tmp_path)  # rebuilds with the saved AU list and rates, loads the adapters
    assert model.tasks == ["au"]
    # `fer evaluate RUN` scores the run's own held-out fold (not bp4d's plain test split), as training did
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["n_samples"] == len(held_out) and evaluated == metrics


def test_pe_clip_trains_on_clips_of_one_fold(catalog_path: Path, tmp_path: Path) -> None:
    cfg = config(catalog_path, tmp_path, "pe_clip", "backbone=clip-tiny-test",
                 "train_where=dataset = 'dfew' AND split = 'train'", "test_where=dataset = 'dfew' AND split = 'test'",
                 "fold=1")
    metrics = train(cfg)
    _, test_ids = select(catalog_path, "dataset = 'dfew' AND split = 'test'", fold=1)
    assert metrics["n_samples"] == len(test_ids) > 0
    assert 0.0 <= metrics["emotion/uar"] <= 1.0


def test_mae_then_pf_vit_with_separate_discriminator_optimizer(catalog_path: Path, tmp_path: Path) -> None:
    images = "kind = 'image' AND split = '{}'"
    mae = config(catalog_path, tmp_path / "mae", "mae", "backbone=mae-test", f"train_where={images.format('train')}",
                 f"val_where={images.format('test')}", f"test_where={images.format('test')}", "epochs=2")
    metrics = train(mae)
    assert metrics["loss"] > 0 and "n_samples" in metrics
    grid = Image.open(tmp_path / "mae" / "plots" / "png" / "mae_reconstruction.png")
    assert grid.mode == "RGB" and grid.width > grid.height > 0

    labelled = "dataset = 'imagefolder' AND split = '{}'"
    pf = config(catalog_path, tmp_path / "pf", "pf_vit", "backbone=mae-test", f"pretrained={tmp_path / 'mae'}",
                f"train_where={labelled.format('train')}", f"val_where={labelled.format('test')}",
                f"test_where={labelled.format('test')}")
    metrics = train(pf)
    assert 0.0 <= metrics["emotion/uar"] <= 1.0
    ckpt = torch.load(tmp_path / "pf" / CHECKPOINT, map_location="cpu", weights_only=False)
    (disc_group,) = ckpt["adversary_optimizer"]["param_groups"]
    assert disc_group["lr"] == pf.pf_vit_disc_lr and tuple(disc_group["betas"]) == (0.5, 0.999)
    assert ckpt["adversary_optimizer"]["state"], "the discriminator's optimizer never stepped"
    best = torch.load(tmp_path / "pf" / BEST, weights_only=True)
    assert any(k.startswith("discriminator.") for k in best)
    assert {p.name for p in (tmp_path / "pf" / "plots" / "png").glob("*.png")} >= {"confusion_emotion.png", "pf_vit_poker_faces.png"}
