"""Training in several processes (torch's elastic launcher, gloo on CPU) on real shards: every epoch reads each
training sample exactly once over the ranks, from shards of different sizes (tests/test_loaders.py: with
fewer shards than ranks x workers); two processes learn what one does with the same global batch; a
two-process checkpoint resumes in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_image
from fer_data.ingest import ingest
from fer_data.loaders import select
from fer_models.config import TrainConfig
from fer_models.train import BEST, CHECKPOINT, train

SLOW = pytest.mark.slow  # each launches 2 spawned processes (torch, open_clip and the methods imported in each)
N_TRAIN = 13  # shards of 5, 5 and 3 samples; global batches of 3, 3, 4 and 3, dealt 2 + 1 or 2 + 2


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    """RAF-DB layout: N_TRAIN training faces and 6 test faces over the 7 emotions, in 112 px shards of 5."""
    base = tmp_path_factory.mktemp("raw") / "RAF-DB" / "basic"
    rows = {**{f"train_{i:05d}.jpg": i % 7 + 1 for i in range(N_TRAIN)}, **{f"test_{i:04d}.jpg": i % 7 + 1 for i in range(6)}}
    for i, name in enumerate(rows):
        write_image(base / "Image" / "original" / name, seed=i)
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {v}\n" for n, v in rows.items()))
    out = tmp_path_factory.mktemp("out")
    ingest("rafdb", base.parent, out, detector="none", size=112, shard_samples=5)
    return out / "catalog.duckdb"


def config(catalog_path: Path, out: Path, **kw) -> TrainConfig:
    """MAE-ViT on a tiny random MAE encoder: no BatchNorm, whose statistics are per rank on CPU (torch's
    SyncBatchNorm, which the trainer uses on CUDA, has no CPU kernels). SGD: weights then differ by the
    gradients' rounding only (Adam's step divides a near-zero gradient by its own size, magnifying it)."""
    base = dict(method="mae_vit", catalog=str(catalog_path), backbone="mae-test", tasks=["emotion"],
                train_where="split = 'train'", test_where="split = 'test'", augment=[], epochs=2, batch_size=4,
                optimizer="sgd", lr=0.05, out=str(out))
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def two_process_run(catalog_path: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    metrics = train(config(catalog_path, out, devices=2, log_seen=True))
    return out, metrics


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@SLOW
def test_two_processes_read_each_sample_once_and_match_one(catalog_path: Path, tmp_path: Path,
                                                           two_process_run: tuple[Path, dict]) -> None:
    out, metrics = two_process_run
    assert json.loads((out / "seen.json").read_text()) == [
        {"epoch": e, "seen": N_TRAIN, "distinct": N_TRAIN} for e in (1, 2)]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert json.loads((out / "metrics.json").read_text()) == metrics  # rank 0 wrote the whole test set's
    assert metrics["n_samples"] == len(select(catalog_path, "split = 'test'")[1])
    single = train(config(catalog_path, tmp_path / "one"))
    assert single.keys() == metrics.keys()
    for k, v in single.items():
        assert metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert_close(weights(out / BEST), weights(tmp_path / "one" / BEST))


@SLOW
def test_two_process_checkpoint_resumes_in_one(catalog_path: Path, tmp_path: Path,
                                               two_process_run: tuple[Path, dict]) -> None:
    full, metrics = two_process_run
    assert train(config(catalog_path, tmp_path / "cut", devices=2), stop_after_epoch=1) == {}
    stopped = weights(tmp_path / "cut" / CHECKPOINT)["model"]
    resumed = train(config(catalog_path, tmp_path / "cut"))  # one process continues at epoch 2
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["world_size"] == 1
    assert resumed == pytest.approx(metrics, rel=1e-4, abs=1e-5)
    assert_close(weights(tmp_path / "cut" / CHECKPOINT)["model"], weights(full / CHECKPOINT)["model"])
    assert any(not torch.equal(stopped[k], weights(full / CHECKPOINT)["model"][k]) for k in stopped)  # epoch 2 trained


def test_the_number_of_processes_leaves_the_run_folder_alone() -> None:
    """A run resumes under another world size only if devices and nnodes are not part of what it learns."""
    one = TrainConfig(method="mae_vit", backbone="mae-test")
    many = TrainConfig(method="mae_vit", backbone="mae-test", devices=4, nnodes=2, node_rank=1, master_port=29400)
    assert one.digest() == many.digest() and one.out == many.out
    with pytest.raises(ValueError, match="node_rank=2: expected 0 to nnodes - 1"):
        TrainConfig.load(overrides=["method=mae_vit", "nnodes=2", "node_rank=2"])
    with pytest.raises(ValueError, match="devices=0"):
        TrainConfig.load(overrides=["method=mae_vit", "devices=0"])
