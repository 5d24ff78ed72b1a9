"""Catalog views on hand-made rows: values computed by hand, atomic swaps, merge, Parquet beside the index."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from fer_data import catalog
from fer_data.catalog import DatasetRows


def sample(sample_id: str, dataset: str, split: str = "train", **labels) -> dict:
    return {"sample_id": sample_id, "dataset": dataset, "split": split, "kind": "image",
            "source_path": f"/raw/{sample_id}.jpg", **labels}


def rows(dataset: str, samples: list[dict], aus: list[dict] | None = None, rejects: int = 0,
         shards: list[dict] | None = None) -> DatasetRows:
    bad = [{"dataset": dataset, "source_path": f"/raw/bad{i}", "stage": "adapter", "reason": "unparsable_row",
            "detail": ""} for i in range(rejects)]
    # two parts, as an ingest hands them over shard by shard
    parts = [{"samples": samples[:1], "au_labels": aus or [], "rejects": bad},
             {"samples": samples[1:], "shards": shards or []}]
    return DatasetRows(dataset, "/raw", len(samples) + rejects, {}, parts)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.duckdb"
    catalog.replace_dataset(path, rows("affectnet", [
        sample("a1", "affectnet", emotion=1, valence=0.5, arousal=0.1),
        sample("a2", "affectnet", emotion=1, valence=None, arousal=0.2),
        sample("a3", "affectnet", emotion=7),
        sample("a4", "affectnet", "test", emotion=None, valence=-0.3, arousal=0.3, extra={"expression": 8}),
    ], rejects=2))
    catalog.replace_dataset(path, rows("fairface", [
        sample("f1", "fairface", age_bin=3, gender=0),
        sample("f2", "fairface", age_bin=8, gender=1),
        sample("f3", "fairface", age_bin=3, gender=None),
    ]))
    # 3 BP4D frames, AU1 present 1/3, AU2 present 2/2 (third unknown), AU4 present 0/3.
    bp4d = [sample(f"b{i}", "bp4d") for i in range(3)]
    aus = [{"sample_id": f"b{i}", "au": au, "present": p, "intensity": None}
           for au, presents in {1: [True, False, False], 2: [True, True, None], 4: [False, False, False]}.items()
           for i, p in enumerate(presents)]
    catalog.replace_dataset(path, rows("bp4d", bp4d, aus))
    return path


def q(db: Path, sql: str) -> pd.DataFrame:
    return catalog.query(db, sql)


def test_task_coverage_counts_non_null_labels(db: Path) -> None:
    df = q(db, "SELECT * FROM task_coverage").set_index(["dataset", "split"])
    assert df.loc[("affectnet", "train")][["n_samples", "n_emotion", "n_valence_arousal"]].tolist() == [3, 3, 1]
    assert df.loc[("affectnet", "test")][["n_samples", "n_emotion", "n_valence_arousal"]].tolist() == [1, 0, 1]
    assert df.loc[("fairface", "train")][["n_age", "n_age_bin", "n_gender", "n_au"]].tolist() == [0, 3, 2, 0]
    assert df.loc[("bp4d", "train")][["n_emotion", "n_au"]].tolist() == [0, 3]


def test_class_balance_names_and_fractions(db: Path) -> None:
    df = q(db, "SELECT * FROM class_balance WHERE dataset = 'affectnet'")
    assert df[["label_name", "n"]].values.tolist() == [["happiness", 2], ["contempt", 1]]
    assert df.fraction.tolist() == pytest.approx([2 / 3, 1 / 3])
    ff = q(db, "SELECT task, label_name, n FROM class_balance WHERE dataset = 'fairface'")
    assert ff.values.tolist() == [["age_bin", "20-29", 2], ["age_bin", "70+", 1], ["gender", "male", 1],
                                  ["gender", "female", 1]]


def test_au_occurrence_ignores_unknown(db: Path) -> None:
    df = q(db, "SELECT au, n_labeled, n_present, rate FROM au_occurrence")
    assert df[["au", "n_labeled", "n_present"]].values.tolist() == [[1, 3, 1], [2, 2, 2], [4, 3, 0]]
    assert df.rate.tolist() == pytest.approx([1 / 3, 1.0, 0.0])


def test_au_loss_weights_inverse_rate_mean_one(db: Path) -> None:
    df = q(db, "SELECT au, weight FROM au_loss_weights").set_index("au")
    # 1/r = 3 and 1 -> mean 2 -> weights 1.5 and 0.5; AU4 never present has no finite weight.
    assert df.weight[1] == pytest.approx(1.5)
    assert df.weight[2] == pytest.approx(0.5)
    assert pd.isna(df.weight[4])


def test_failed_swap_keeps_previous_rows(db: Path) -> None:
    broken = rows("fairface", [sample("f9", "fairface", gender=0)],
                  aus=[{"sample_id": "f9", "au": None, "present": True, "intensity": None}])  # au NOT NULL
    with pytest.raises(duckdb.ConstraintException):
        catalog.replace_dataset(db, broken)
    assert sorted(q(db, "SELECT sample_id FROM samples WHERE dataset = 'fairface'").sample_id) == ["f1", "f2", "f3"]
    assert q(db, "SELECT n_samples FROM ingests WHERE dataset = 'fairface'").n_samples[0] == 3


def test_merge_and_parquet_partitions(db: Path, tmp_path: Path) -> None:
    part = tmp_path / "ingest" / "fairface" / "catalog.duckdb"
    part_rows = rows("fairface", [sample("f7", "fairface", gender=1, shard="shards/fairface/train-00000.tar")],
                     rejects=1, shards=[{"path": "shards/fairface/train-00000.tar", "dataset": "fairface",
                                         "split": "train", "n_samples": 1, "bytes": 10, "sha256": "0" * 64,
                                         "fingerprint": "f"}])
    catalog.replace_dataset(part, part_rows)
    merged = catalog.merge([part], db)
    assert merged == ["fairface"]
    # shard paths are re-based from the part's folder onto the merged catalog's folder
    assert q(db, "SELECT sample_id, shard FROM samples WHERE dataset = 'fairface'").values.tolist() == [
        ["f7", "ingest/fairface/shards/fairface/train-00000.tar"]]
    assert q(db, "SELECT path FROM shards").path.tolist() == ["ingest/fairface/shards/fairface/train-00000.tar"]
    assert q(db, "SELECT count(*) AS n FROM samples").n[0] == 4 + 1 + 3
    out = catalog.parquet_folder(db)  # every write leaves the Parquet beside the index
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["dataset=affectnet", "dataset=bp4d", "dataset=fairface"]
    back = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/samples/*/*.parquet', hive_partitioning=true) "
                      "WHERE dataset = 'affectnet'").fetchall()
    assert back == [(4,)]
    assert (out / "au_labels" / "dataset=bp4d").is_dir()


def test_fresh_merge_rebuilds_after_dvc_removed_the_parquet_folder(db: Path, tmp_path: Path) -> None:
    """`dvc repro` deletes a stage's outs (the Parquet folder) before rerunning it, but not the local index
    beside them: the catalog stage's fresh merge must rebuild, while a partial update still refuses."""
    part = tmp_path / "ingest" / "fairface" / "catalog.duckdb"
    catalog.replace_dataset(part, rows("fairface", [sample("f7", "fairface", gender=1)]))
    catalog.merge([part], db, fresh=True)
    shutil.rmtree(catalog.parquet_folder(db))
    with pytest.raises(FileNotFoundError, match="is missing but"):
        catalog.merge([part], db)  # keeps the other datasets' rows: they are gone, so it must not guess
    assert catalog.merge([part], db, fresh=True) == ["fairface"]
    assert q(db, "SELECT sample_id FROM samples").sample_id.tolist() == ["f7"]
    assert (catalog.parquet_folder(db) / "samples" / "dataset=fairface").is_dir()
