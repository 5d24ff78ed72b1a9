"""The shards are plain WebDataset: Hugging Face `datasets` reads them with its `webdataset` builder, and
this locks in the key format it relies on: `<key>.jpg` + `<key>.json` per image, `<key>.NN.jpg` per clip
frame, the key being `shards.sample_key(sample_id)` (dot-free, so `datasets` splits at the right dot)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from fer_data import catalog, shards
from fer_data.ingest import ingest
from fer_data.samples.video import write_video_samples


def load(catalog_path: Path, tmp_path: Path) -> tuple[datasets.Dataset, dict]:
    """The catalog's shards through `datasets.load_dataset("webdataset")`, and the catalog's rows by sample id."""
    rows = catalog.query(catalog_path, "SELECT sample_id, dataset, split, emotion, kind, shard FROM samples")
    files = sorted({str(catalog_path.parent / s) for s in rows.shard})
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    return ds, {r.sample_id: r for r in rows.itertuples()}


def check_rows(ds: datasets.Dataset, by_id: dict, size: int) -> None:
    assert ds.num_rows == len(by_id)
    seen = set()
    for row in ds:
        labels = row["json"]
        sample = by_id[labels["sample_id"]]
        assert row["__key__"] == shards.sample_key(sample.sample_id)
        assert Path(row["__url__"]).name == Path(sample.shard).name
        assert (labels["dataset"], labels["split"], labels["emotion"]) == (sample.dataset, sample.split, sample.emotion)
        frames = [row[k] for k in sorted(k for k in row if k.endswith("jpg"))]
        assert frames and all(image.size == (size, size) for image in frames)
        seen.add(sample.sample_id)
    assert seen == set(by_id)


def test_image_shards_load_with_hf_datasets(rafdb_root: Path, tmp_path: Path) -> None:
    result = ingest("rafdb", rafdb_root, tmp_path / "out", detector="none", size=112)
    ds, by_id = load(result.catalog, tmp_path)
    assert set(ds.column_names) == {"__key__", "__url__", "jpg", "json"}
    assert isinstance(ds.features["jpg"], datasets.Image)  # decoded as images, not bytes
    check_rows(ds, by_id, 112)


@pytest.mark.slow
def test_clip_shards_load_with_hf_datasets(tmp_path: Path) -> None:
    raw = write_video_samples(tmp_path / "raw")
    result = ingest("dfew", raw["dfew"], tmp_path / "out", segments=4, size=112)
    ds, by_id = load(result.catalog, tmp_path)
    assert set(ds.column_names) == {"__key__", "__url__", "00.jpg", "01.jpg", "02.jpg", "03.jpg", "json"}
    assert all(isinstance(ds.features[f"0{i}.jpg"], datasets.Image) for i in range(4))
    check_rows(ds, by_id, 112)
