"""Loaders over real shards: shapes, ignore values for missing labels, SQL selection, workers, epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import write_image
from fer_data.ingest import ingest
from fer_data.labels import IGNORE_INDEX
from fer_data.loaders import (IndexedSamples, epoch_order, make_loader, make_rank_loader, rank_batches,
                              sample_shards, select, targets_of)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """FairFace layout (age bin + gender, one row missing gender) ingested into 3 shards."""
    root = tmp_path_factory.mktemp("fairface")
    lines = ["file,age,gender,race,service_test"]
    for i in range(9):
        write_image(root / "train" / f"{i}.jpg", seed=i)
        lines.append(f"train/{i}.jpg,{['20-29', '3-9', 'more than 70'][i % 3]},{['Male', 'Female'][i % 2]},White,True")
    (root / "fairface_label_train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("out")
    ingest("fairface", root, out, detector="none", size=112, shard_samples=3)
    return out


def test_eval_loader_gives_every_sample_once(sharded: Path) -> None:
    urls, ids = select(sharded / "catalog.duckdb", "dataset = 'fairface' AND split = 'train'")
    assert len(urls) == 3 and len(ids) == 9
    batches = list(make_loader(urls, ("age_bin", "gender", "emotion"), batch_size=4, train=False))
    assert [b[0].shape for b in batches] == [(4, 3, 112, 112), (4, 3, 112, 112), (1, 3, 112, 112)]
    seen = [sid for _, t in batches for sid in t["sample_id"]]
    assert sorted(seen) == sorted(ids)
    targets = {sid: (int(a), int(g), int(e)) for _, t in batches
               for sid, a, g, e in zip(t["sample_id"], t["age_bin"], t["gender"], t["emotion"])}
    assert targets["fairface:train/2.jpg"] == (8, 0, IGNORE_INDEX)  # "more than 70", Male, no emotion label
    assert targets["fairface:train/1.jpg"] == (1, 1, IGNORE_INDEX)


def test_selection_restricts_samples(sharded: Path) -> None:
    urls, ids = select(sharded / "catalog.duckdb", "age_bin = 8")
    seen = [sid for _, t in make_loader(urls, ("age_bin",), 8, train=False, sample_ids=ids) for sid in t["sample_id"]]
    assert sorted(seen) == ["fairface:train/2.jpg", "fairface:train/5.jpg", "fairface:train/8.jpg"]


def test_train_loader_epochs_and_workers(sharded: Path) -> None:
    urls, _ = select(sharded / "catalog.duckdb", "true")
    loader = make_loader(urls, ("gender",), batch_size=2, train=True, num_workers=2, epoch_samples=12)
    ids = [sid for _, t in loader for sid in t["sample_id"]]
    assert len(ids) == 12  # fixed epoch length, shards repeated as needed
    one_pass = make_loader(urls, ("gender",), batch_size=3, train=True, num_workers=3)
    # 3 workers split 3 shards: every sample exactly once, none repeated.
    assert sorted(s for _, t in one_pass for s in t["sample_id"]) == sorted(f"fairface:train/{i}.jpg" for i in range(9))


def test_fsspec_url(sharded: Path) -> None:
    urls, _ = select(sharded / "catalog.duckdb", "true", root=f"file://{sharded}")
    assert all(u.startswith("file://") for u in urls)
    assert sum(len(t["sample_id"]) for _, t in make_loader(urls, ("gender",), 4, train=False)) == 9


def test_au_and_affect_targets_mask_missing() -> None:
    labels = {"aus": {"1": True, "2": False, "4": None}, "valence": 0.5, "arousal": None, "emotion": 3}
    t = targets_of(labels, ("au", "valence_arousal", "emotion"), aus=(1, 2, 4, 6))
    assert t["au"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert t["au_mask"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert t["valence_arousal_mask"].item() == 0.0
    assert t["emotion"].item() == 3


@pytest.mark.parametrize("n, batch_size, world", [(9, 4, 1), (9, 4, 2), (13, 4, 3), (5, 4, 4), (3, 2, 4), (12, 6, 5)])
def test_rank_batches_deal_each_position_once(n: int, batch_size: int, world: int) -> None:
    """Every rank takes the same number of steps; real slots over all ranks are the epoch's order exactly
    once; a rank with nothing of a global batch pads it, and the batch's total says how many are real."""
    order = epoch_order(n, seed=3)
    assert sorted(order) == list(range(n))
    per_rank = [rank_batches(order, batch_size, r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    real = [s.index for batches in per_rank for batch in batches for s in batch if not s.pad]
    assert sorted(real) == list(range(n))
    for step in zip(*per_rank):  # one global batch: near-equal sizes, none short at the end
        assert sum(not s.pad for batch in step for s in batch) == step[0][0].batch_total <= batch_size
        assert all(len(batch) >= 1 for batch in step)
    assert sorted(epoch_order(n, 3, epoch_samples=2 * n + 1)[:2 * n]) == sorted(2 * list(range(n)))
    assert epoch_order(20, seed=3) == epoch_order(20, seed=3) != epoch_order(20, seed=4) != list(range(20))


def test_rank_loaders_read_every_selected_sample_once(sharded: Path) -> None:
    """Two ranks x two workers over 3 shards of a 7-sample selection (2 or 3 of them per shard): each
    sample read once from its shard, by offset, with the same targets the streaming loader gives."""
    shard_of = sample_shards(sharded / "catalog.duckdb", "sample_id != 'fairface:train/4.jpg' AND "
                                                       "sample_id != 'fairface:train/7.jpg'")
    dataset = IndexedSamples(shard_of, ("age_bin", "gender"))
    seen = {}
    for rank in range(2):
        for pixels, t in make_rank_loader(dataset, batch_size=3, seed=0, rank=rank, world=2, num_workers=2):
            assert pixels.shape[1:] == (3, 112, 112) and not t["pad"].any()
            for i, sid in enumerate(t["sample_id"]):
                assert sid not in seen
                seen[sid] = (int(t["age_bin"][i]), int(t["gender"][i]), pixels[i])
    assert sorted(seen) == sorted(shard_of)
    urls, ids = select(sharded / "catalog.duckdb", "true")
    for pixels, t in make_loader(urls, ("age_bin", "gender"), 9, train=False):
        for i, sid in enumerate(t["sample_id"]):
            if sid in seen:
                assert seen[sid][:2] == (int(t["age_bin"][i]), int(t["gender"][i]))
                assert torch.equal(seen[sid][2], pixels[i])


def test_decoded_samples_are_kept_between_epochs_up_to_the_budget(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the trainer's own process a set that fits the budget is decoded once for all epochs, with the
    same pixels and targets as decoding every time; past the budget the rest is decoded each epoch, and
    loader workers keep nothing (theirs restart every epoch)."""
    import fer_data.loaders as loaders

    decoded: list[int] = []
    real = loaders._image

    def counting(data: bytes) -> torch.Tensor:
        decoded.append(1)
        return real(data)

    monkeypatch.setattr(loaders, "_image", counting)
    shard_of = sample_shards(sharded / "catalog.duckdb", "true")
    n = len(shard_of)

    def epochs(dataset: IndexedSamples) -> list[tuple[torch.Tensor, dict]]:
        return [b for seed in (0, 1) for b in make_rank_loader(dataset, batch_size=4, seed=seed)]

    plain = epochs(IndexedSamples(shard_of, ("age_bin", "gender")))
    assert len(decoded) == 2 * n
    decoded.clear()
    cached = epochs(IndexedSamples(shard_of, ("age_bin", "gender"), cache_bytes=1 << 30))
    assert len(decoded) == n
    for (p1, t1), (p2, t2) in zip(plain, cached, strict=True):
        assert torch.equal(p1, p2) and t1["sample_id"] == t2["sample_id"] and torch.equal(t1["gender"], t2["gender"])
    decoded.clear()
    one = 3 * 112 * 112
    epochs(IndexedSamples(shard_of, ("age_bin", "gender"), cache_bytes=2 * one))  # room for two samples
    assert len(decoded) == 2 * n - 2
    assert IndexedSamples(shard_of, cache_bytes=1 << 30).__getstate__()["cache_bytes"] == 0
