"""The catalog as files others read and DVC hashes, and as SQL users type: Parquet that pyarrow and pandas
read (NULL lists included) with the same bytes for the same rows; the .duckdb index rebuilt from it;
writes (ingest, merge) that a failure, a kill -9 or a reader cannot leave half done; read-only SQL."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fer_data import catalog
from fer_data.catalog import DatasetRows, QueryError
from fer_data.ingest import ingest
from fer_data.loaders import au_rates, select

REPO = Path(__file__).resolve().parent.parent


def sample(sample_id: str, dataset: str, split: str = "train", kind: str = "image", **fields: Any) -> dict:
    return {"sample_id": sample_id, "dataset": dataset, "split": split, "kind": kind,
            "source_path": f"{sample_id}.jpg", "shard": f"shards/{dataset}/{split}-00000.tar", **fields}


FACE = {"face_box": [1.0, 2.0, 30.0, 40.0], "landmarks": [float(i) for i in range(10)],
        "align_matrix": [1.0, 0.0, -2.0, 0.0, 1.0, -3.0], "face_score": 0.9, "detector": "yunet"}


def image_rows() -> DatasetRows:
    """Faces found and not found in one partition: fixed-size lists next to NULL ones."""
    samples = [sample("r1", "rafdb", emotion=1, **FACE),
               sample("r2", "rafdb", emotion=None, detector="none"),  # every list NULL
               sample("r3", "rafdb", "test", emotion=6, face_box=[0.5, 0.5, 9.0, 9.0], extra={"note": "it's"}),
               sample("r4", "rafdb", "test", emotion=0, **FACE)]
    rejects = [{"dataset": "rafdb", "source_path": "bad.jpg", "stage": "decode", "reason": "corrupt_image",
                "detail": None}]
    shards = [{"path": f"shards/rafdb/{s}-00000.tar", "dataset": "rafdb", "split": s, "n_samples": 2, "bytes": 10,
               "sha256": "0" * 64, "fingerprint": "f"} for s in ("train", "test")]
    return DatasetRows("rafdb", "raw/rafdb", 5, {"size": 112}, [{"samples": samples[:2], "rejects": rejects},
                                                                {"samples": samples[2:], "shards": shards}])


def clip_rows() -> DatasetRows:
    samples = [sample(f"d{i}", "dfew", kind="clip", n_frames=16, fps=25.0, emotion=i % 7,
                      extra={"fold": i % 5 + 1}, **(FACE if i % 2 else {})) for i in range(5)]
    frames = [{"sample_id": f"d{i}", "t": t, "frame": 2 * t, "face_box": FACE["face_box"] if i % 2 else None,
               "landmarks": FACE["landmarks"] if i % 2 else None, "score": 0.9 if i % 2 and t else None,
               "interpolated": bool(t) if i % 2 else None} for i in range(5) for t in range(2)]
    return DatasetRows("dfew", "raw/dfew", 5, {"segments": 16}, [{"samples": samples, "clip_frames": frames}])


def au_rows() -> DatasetRows:
    samples = [sample(f"b{i}", "bp4d", extra={"fold": 1 + i % 3}, **(FACE if i else {})) for i in range(4)]
    aus = [{"sample_id": f"b{i}", "au": au, "present": [True, False, None][(i + au) % 3],
            "intensity": None if au != 12 else float(i)} for i in range(4) for au in (1, 2, 12)]
    return DatasetRows("bp4d", "raw/bp4d", 4, {}, [{"samples": samples, "au_labels": aus}])


def build(path: Path, *datasets: DatasetRows) -> Path:
    for rows in datasets:
        catalog.replace_dataset(path, rows)
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = build(tmp_path / "data" / "catalog.duckdb", image_rows(), clip_rows(), au_rows())
    with catalog.rewrite(path) as con:  # what the audit writes, so that every table has rows
        con.execute("INSERT INTO phashes SELECT sample_id, md5(sample_id)[:16], 0 FROM samples")
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder, by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def plain(value: Any) -> Any:
    """A cell as plain Python, whoever read it: arrays -> lists, NaN/NA -> None, numbers -> float."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value  # NULLs make ints floats


def records(df: pd.DataFrame) -> list[str]:
    """Rows as sorted canonical JSON: equal lists mean equal tables, whatever the column order or dtypes."""
    cols = sorted(df.columns)
    return sorted(json.dumps({c: plain(row[c]) for c in cols}, sort_keys=True, default=str)
                  for row in df.astype(object).to_dict("records"))


def duck_table(path: Path, table: str) -> pd.DataFrame:
    """A table as DuckDB holds it, with the dataset of each row (the Parquet's partition)."""
    names = [n for n, _ in catalog._columns()[table]]
    joined = "dataset" not in names
    sql = (f"SELECT s.dataset, t.* FROM {table} t JOIN samples s USING (sample_id)" if joined
           else f"SELECT * FROM {table}")
    with catalog.connect(path, read_only=True) as con:
        rows = con.execute(sql).fetchall()
        cols = [d[0] for d in con.description]
    df = pd.DataFrame(rows, columns=cols, dtype=object)
    for col in ("extra", "params"):
        if col in df:
            df[col] = [None if v is None else json.loads(v) for v in df[col]]
    return df


def parsed_json(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("extra", "params"):
        if col in df:
            df[col] = [None if v is None else json.loads(v) for v in df[col].astype(object)]
    return df


# ------------------------------------------------------------------------------------- 14.1: readable Parquet

def test_parquet_reads_in_pyarrow_and_pandas_with_duckdbs_values(db: Path) -> None:
    folder = catalog.parquet_folder(db)
    assert sorted(p.name for p in folder.iterdir()) == sorted(catalog.TABLES)
    for table in catalog.TABLES:
        for part in sorted((folder / table).glob("dataset=*/*.parquet")):  # every partition on its own
            pq.read_table(part)
        expected = records(duck_table(db, table))
        arrow = parsed_json(pq.read_table(folder / table).to_pandas())
        frame = parsed_json(pd.read_parquet(folder / table))
        assert records(arrow) == expected, table
        assert records(frame) == expected, table
    faces = pd.read_parquet(folder / "samples", columns=["sample_id", "face_box", "landmarks", "align_matrix"])
    faces = faces.set_index("sample_id")
    assert faces.face_box["r2"] is None and list(faces.face_box["r3"]) == [0.5, 0.5, 9.0, 9.0]
    assert list(faces.landmarks["d1"]) == FACE["landmarks"] and faces.align_matrix["d0"] is None


def test_parquet_reads_in_polars(db: Path) -> None:
    polars = pytest.importorskip("polars", reason="polars is not installed (pyarrow and pandas are tested above)")
    folder = catalog.parquet_folder(db)
    for table in catalog.TABLES:
        got = polars.read_parquet(folder / table / "**" / "*.parquet", hive_partitioning=True)
        assert len(got) == len(duck_table(db, table)), table


# ------------------------------------------------------------------------------------- 14.5: deterministic bytes

def test_same_rows_give_the_same_parquet_bytes(db: Path, tmp_path: Path) -> None:
    folder = catalog.parquet_folder(db)
    first = snapshot(folder)
    assert "ingests/dataset=rafdb/part0.parquet" in first  # a catalog can be rebuilt from its Parquet alone
    with catalog.rewrite(db):  # the same rows written again
        pass
    assert snapshot(folder) == first
    # Another folder, the datasets in another order: the same bytes (no paths, ids or times inside).
    other = build(tmp_path / "elsewhere" / "catalog.duckdb", au_rows(), clip_rows(), image_rows())
    with catalog.rewrite(other) as con:
        con.execute("INSERT INTO phashes SELECT sample_id, md5(sample_id)[:16], 0 FROM samples")
    assert snapshot(catalog.parquet_folder(other)) == first
    assert "finished_at" not in dict(catalog._columns()["ingests"])


# ------------------------------------------------------------------------------------- 14.5: the index

def test_missing_index_is_rebuilt_from_the_parquet(db: Path) -> None:
    want = catalog.query(db, "SELECT * FROM samples ORDER BY sample_id")
    counts = catalog.query(db, "SELECT * FROM ingests ORDER BY dataset")
    db.unlink()
    assert catalog.query(db, "SELECT * FROM samples ORDER BY sample_id").equals(want)
    assert catalog.query(db, "SELECT * FROM ingests ORDER BY dataset").equals(counts)
    assert db.exists()
    with catalog.connect(db, read_only=True) as con:  # REAL[4] again, not the Parquet's plain list
        assert con.execute("SELECT typeof(face_box) FROM samples LIMIT 1").fetchone() == ("FLOAT[4]",)


def test_replaced_parquet_is_seen_by_the_next_query(db: Path, tmp_path: Path) -> None:
    assert catalog.query(db, "SELECT count(*) AS n FROM samples").n[0] == 13
    other = build(tmp_path / "other" / "catalog.duckdb", clip_rows())
    folder = catalog.parquet_folder(db)
    os.rename(folder, tmp_path / "old-parquet")
    os.rename(catalog.parquet_folder(other), folder)  # as `dvc checkout` of another version would
    assert catalog.query(db, "SELECT DISTINCT dataset FROM samples").dataset.tolist() == ["dfew"]
    with catalog.connect(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (5,)


def test_rows_written_into_the_index_itself_reach_the_parquet(db: Path) -> None:
    """Parquet and index never disagree silently: a direct write drops the manifest, so the next reader
    takes the index's rows as the catalog's and exports them."""
    with catalog.connect(db) as con:
        con.execute("DELETE FROM samples WHERE dataset = 'dfew'")
    assert catalog.query(db, "SELECT count(*) AS n FROM samples").n[0] == 8
    assert len(pd.read_parquet(catalog.parquet_folder(db) / "samples")) == 8
    db.unlink()
    assert catalog.query(db, "SELECT count(*) AS n FROM samples").n[0] == 8


def test_missing_parquet_is_an_error_not_an_empty_catalog(db: Path, tmp_path: Path) -> None:
    os.rename(catalog.parquet_folder(db), tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="is missing but .* was built from it"):
        catalog.query(db, "SELECT count(*) FROM samples")


# ------------------------------------------------------------------------------------- 19.2: read-only SQL

@pytest.fixture
def shard(db: Path) -> Path:
    path = db.parent / "shards" / "rafdb" / "train-00000.tar"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a shard" * 100)
    return path


ATTACKS = {
    "copy": "COPY (SELECT 'gone' AS x) TO '{shard}'",
    "copy in a query": "SELECT 1; COPY (SELECT 'gone' AS x) TO '{shard}'",
    "attach": "ATTACH '{new}' (READ_WRITE)",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "two statements": "SELECT 1; SELECT 2",
    "glob": "SELECT * FROM glob('/etc/*')",
    "settings": "SET enable_external_access = true",
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_user_sql_cannot_write_read_files_or_run_two_statements(db: Path, shard: Path, attack: str) -> None:
    new = db.parent / "new.duckdb"
    sql = ATTACKS[attack].format(shard=shard, new=new)
    before = snapshot(db.parent)
    with pytest.raises(QueryError) as err:
        catalog.query(db, sql)
    assert "\n" not in str(err.value)
    assert snapshot(db.parent) == before and not new.exists()
    # the same through `fer sql`: one line, exit 2, nothing written
    from fer_cli.main import app

    result = CliRunner().invoke(app, ["sql", sql, "--catalog", str(db)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error:") and "Traceback" not in result.output
    assert snapshot(db.parent) == before and not new.exists()


def test_user_sql_still_answers_questions(db: Path) -> None:
    df = catalog.query(db, "WITH c AS (SELECT * FROM class_balance) FROM c SELECT dataset, sum(n) AS n "
                           "WHERE task = ? GROUP BY ALL ORDER BY ALL", ["emotion"])
    assert df.values.tolist() == [["dfew", 5], ["rafdb", 3]]
    assert "sample_id" in catalog.query(db, "DESCRIBE samples").column_name.tolist()


@pytest.mark.parametrize("where", [
    "1=1; COPY (SELECT 'gone' AS x) TO '{shard}'",              # a second statement
    "true); COPY (SELECT 'gone' AS x) TO '{shard}'; SELECT 1 WHERE (true",  # ran the COPY before
    "true) UNION ALL SELECT 'x', '{shard}' --",                 # closing the parenthesis
    "split = 'train'\n) OR (true",
    "length(content) > 0 FROM read_text('/etc/passwd')",
    "(SELECT count(*) FROM read_text('/etc/passwd')) > 0",      # one expression, but it reads a file
])
def test_selection_from_a_run_config_is_one_read_only_expression(db: Path, shard: Path, where: str) -> None:
    run = db.parent / "runs" / "x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"test_where": where.format(shard=shard)}))
    test_where = json.loads((run / "config.json").read_text())["test_where"]
    before = snapshot(db.parent)
    with pytest.raises(QueryError):
        select(db, test_where)
    with pytest.raises(QueryError):
        au_rates(db, test_where, fold=1)
    assert snapshot(db.parent) == before


def test_plain_selections_work(db: Path) -> None:
    _, ids = select(db, "dataset = 'rafdb' AND split = 'test' -- the test split")
    assert ids == {"r3", "r4"}
    _, ids = select(db, "sample_id IN (SELECT sample_id FROM au_labels WHERE au = 12 AND present)")
    assert ids == {"b0", "b3"}
    assert au_rates(db, "dataset = 'bp4d'", aus=[1]) == {1: pytest.approx(1 / 3)}  # b2 of b0, b2, b3 (b1 unknown)


# ------------------------------------------------------------------------------------- 19.5: merge

def fairface(path: Path) -> Path:
    return build(path, DatasetRows("fairface", "raw/ff", 2, {}, [{"samples": [
        sample("f1", "fairface", gender=0), sample("f2", "fairface", gender=1)]}]))


def test_destination_among_the_parts_is_read_before_it_is_replaced(db: Path, tmp_path: Path) -> None:
    from flows.catalog import merge_parts

    part = fairface(tmp_path / "ingest" / "fairface" / "catalog.duckdb")
    n = catalog.query(db, "SELECT count(*) AS n FROM samples").n[0]
    merge_parts.fn([str(db), str(catalog.parquet_folder(part))], db.parent)
    got = catalog.query(db, "SELECT dataset, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL")
    assert got.values.tolist() == [["bp4d", 4], ["dfew", 5], ["fairface", 2], ["rafdb", 4]]
    assert got.n.sum() == n + 2
    # fresh: datasets not among the parts are gone; the Parquet says the same as the index
    merge_parts.fn([str(part)], db.parent)
    assert catalog.query(db, "SELECT DISTINCT dataset FROM samples").dataset.tolist() == ["fairface"]
    assert sorted(p.name for p in (catalog.parquet_folder(db) / "samples").iterdir()) == ["dataset=fairface"]


def test_failed_merge_leaves_the_destination_as_it_was(db: Path, tmp_path: Path) -> None:
    good = fairface(tmp_path / "ingest" / "fairface" / "catalog.duckdb")
    broken = tmp_path / "ingest" / "broken" / "catalog.duckdb"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a database")
    before = snapshot(db.parent)
    with pytest.raises(duckdb.Error):
        catalog.merge([good, broken], db)
    assert snapshot(db.parent) == before
    assert "fairface" not in catalog.query(db, "SELECT DISTINCT dataset FROM samples").dataset.tolist()


def test_kill_9_mid_merge_leaves_the_destination_as_it_was(db: Path, tmp_path: Path) -> None:
    parts = [fairface(tmp_path / "ingest" / name / "catalog.duckdb") for name in ("a", "b")]
    before = snapshot(db.parent)
    # Kill the merging process once it has copied the first part's rows.
    code = textwrap.dedent(f"""
        import os, signal, sys
        from fer_data import catalog
        load, calls = catalog._load, []
        def dying(*args, **kw):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return load(*args, **kw)
        catalog._load = dying
        catalog.merge({[str(p) for p in parts]!r}, {str(db)!r}, fresh=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    leftovers = {name for name in snapshot(db.parent)} - set(before)
    assert all(".lock" in name or ".tmp" in name for name in leftovers), leftovers
    assert {k: v for k, v in snapshot(db.parent).items() if k in before} == before
    assert catalog.query(db, "SELECT count(*) AS n FROM samples").n[0] == 13
    assert catalog.merge(parts[:1], db, fresh=True) == ["fairface"]  # the next merge is not blocked


# ------------------------------------------------------------------------------------- 19.7: quoting

def test_paths_with_quotes(rafdb_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "it's out"
    result = ingest("rafdb", rafdb_root, out, detector="none", size=112)
    assert result.n_samples == 4
    assert (out / "catalog" / "samples").is_dir() and (out / "catalog" / "ingests").is_dir()
    dest = tmp_path / "o'brien" / "catalog.duckdb"
    assert catalog.merge([out / "catalog"], dest) == ["rafdb"]
    assert catalog.query(dest, "SELECT count(*) AS n FROM samples").n[0] == 4
    assert select(dest, "split = 'train'")[0][0].startswith(str(dest.parent.resolve()))


# ------------------------------------------------------------------------------------- 19.4: readers and the swap

def hold(path: Path, read_only: bool) -> subprocess.Popen:
    """Another process with the index open until killed; returns once it has it."""
    code = (f"import duckdb, sys, time; con = duckdb.connect({str(path)!r}, read_only={read_only}); "
            "print(con.execute('SELECT count(*) FROM samples').fetchone()[0], flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip().isdigit()
    return proc


def test_a_reader_holding_the_catalog_does_not_block_the_swap(db: Path) -> None:
    reader = hold(db, read_only=True)
    try:
        start = time.monotonic()
        catalog.replace_dataset(db, DatasetRows("dfew", "raw/dfew", 1, {}, [
            {"samples": [sample("d9", "dfew", kind="clip")]}]))
        assert time.monotonic() - start < 10
        assert catalog.query(db, "SELECT count(*) AS n FROM samples WHERE dataset = 'dfew'").n[0] == 1
    finally:
        reader.kill()
        reader.wait()


def test_a_process_writing_the_index_itself_is_named(db: Path) -> None:
    writer = hold(db, read_only=False)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"{db.name} is locked by another process \(.*PID {writer.pid}\)"):
            catalog.query(db, "SELECT 1")
        assert time.monotonic() - start < 15
    finally:
        writer.kill()
        writer.wait()
