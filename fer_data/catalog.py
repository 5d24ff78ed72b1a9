"""The DuckDB label catalog: schema, atomic per-dataset replacement, views, Parquet export.

Everything a user asks of the data ("how many AffectNet test faces have valence?", "which
AUs are rare in BP4D fold 1?") is one SQL query over these tables and views.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from fer_data.labels import AGE_BINS, EMOTIONS, GENDERS

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sample_id    VARCHAR PRIMARY KEY,
    dataset      VARCHAR NOT NULL,
    split        VARCHAR NOT NULL,
    subject      VARCHAR,
    kind         VARCHAR NOT NULL,          -- image | clip
    source_path  VARCHAR NOT NULL,
    sha256       VARCHAR,                   -- of the source bytes (image file, video, or pixels)
    bytes        BIGINT,
    width        INTEGER,
    height       INTEGER,
    n_frames     INTEGER,
    fps          REAL,
    emotion      SMALLINT,                  -- fer_data.labels.EMOTIONS, NULL = missing
    valence      REAL,
    arousal      REAL,
    age          REAL,
    age_bin      SMALLINT,                  -- fer_data.labels.AGE_BINS
    gender       SMALLINT,                  -- 0 male, 1 female
    face_box     REAL[4],                   -- x0, y0, x1, y1 in source pixels
    face_score   REAL,
    landmarks    REAL[10],                  -- 5 points x0, y0, ..., x4, y4 in source pixels
    align_matrix REAL[6],                   -- 2x3 similarity, source -> aligned crop
    detector     VARCHAR,
    shard        VARCHAR,
    extra        JSON
);
CREATE TABLE IF NOT EXISTS au_labels (
    sample_id VARCHAR NOT NULL,
    au        SMALLINT NOT NULL,
    present   BOOLEAN,                      -- NULL = not annotated / unknown (BP4D 9)
    intensity REAL
);
CREATE TABLE IF NOT EXISTS shards (
    path        VARCHAR PRIMARY KEY,
    dataset     VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    n_samples   INTEGER NOT NULL,
    bytes       BIGINT NOT NULL,
    sha256      VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    dataset     VARCHAR NOT NULL,
    source_path VARCHAR NOT NULL,
    stage       VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL,
    detail      VARCHAR
);
CREATE TABLE IF NOT EXISTS ingests (
    dataset     VARCHAR PRIMARY KEY,
    raw_root    VARCHAR NOT NULL,
    rows_read   BIGINT NOT NULL,
    n_samples   BIGINT NOT NULL,
    n_rejects   BIGINT NOT NULL,
    params      JSON,
    finished_at TIMESTAMP NOT NULL
);
"""


def _label_table(name: str, labels: Sequence[str]) -> str:
    values = ", ".join(f"({i}, '{label}')" for i, label in enumerate(labels))
    return f"CREATE OR REPLACE VIEW {name}(id, name) AS SELECT * FROM (VALUES {values})"


VIEWS = [
    _label_table("emotion_names", EMOTIONS),
    _label_table("age_bin_names", AGE_BINS),
    _label_table("gender_names", GENDERS),
    """
CREATE OR REPLACE VIEW task_coverage AS
SELECT s.dataset, s.split,
       count(*)                                          AS n_samples,
       count(s.emotion)                                  AS n_emotion,
       count(*) FILTER (s.valence IS NOT NULL AND s.arousal IS NOT NULL) AS n_valence_arousal,
       count(s.age)                                      AS n_age,
       count(s.age_bin)                                  AS n_age_bin,
       count(s.gender)                                   AS n_gender,
       count(*) FILTER (s.sample_id IN (SELECT sample_id FROM au_labels WHERE present IS NOT NULL)) AS n_au
FROM samples s GROUP BY s.dataset, s.split ORDER BY s.dataset, s.split
""",
    """
CREATE OR REPLACE VIEW class_balance AS
WITH labelled AS (
    SELECT dataset, split, 'emotion' AS task, emotion AS label FROM samples WHERE emotion IS NOT NULL
    UNION ALL SELECT dataset, split, 'age_bin', age_bin FROM samples WHERE age_bin IS NOT NULL
    UNION ALL SELECT dataset, split, 'gender', gender FROM samples WHERE gender IS NOT NULL
)
SELECT l.dataset, l.split, l.task, l.label,
       coalesce(e.name, a.name, g.name) AS label_name,
       count(*) AS n,
       count(*) / sum(count(*)) OVER (PARTITION BY l.dataset, l.split, l.task) AS fraction
FROM labelled l
LEFT JOIN emotion_names e ON l.task = 'emotion' AND e.id = l.label
LEFT JOIN age_bin_names a ON l.task = 'age_bin' AND a.id = l.label
LEFT JOIN gender_names  g ON l.task = 'gender'  AND g.id = l.label
GROUP BY l.dataset, l.split, l.task, l.label, label_name ORDER BY l.dataset, l.split, l.task, l.label
""",
    """
CREATE OR REPLACE VIEW au_occurrence AS
SELECT s.dataset, s.split, a.au,
       count(a.present)                    AS n_labeled,
       count(*) FILTER (a.present)         AS n_present,
       count(*) FILTER (a.present) / nullif(count(a.present), 0) AS rate
FROM au_labels a JOIN samples s USING (sample_id)
GROUP BY s.dataset, s.split, a.au ORDER BY s.dataset, s.split, a.au
""",
    # Inverse occurrence rate, normalised to mean 1 over the AUs of one dataset split; AUs never
    # present get NULL (no finite inverse) and are left out of the mean.
    """
CREATE OR REPLACE VIEW au_loss_weights AS
SELECT dataset, split, au, rate,
       (1.0 / nullif(rate, 0)) / avg(1.0 / nullif(rate, 0)) OVER (PARTITION BY dataset, split) AS weight
FROM au_occurrence ORDER BY dataset, split, au
""",
    """
CREATE OR REPLACE VIEW reject_summary AS
SELECT dataset, stage, reason, count(*) AS n FROM rejects GROUP BY dataset, stage, reason ORDER BY dataset, n DESC
""",
]

SAMPLE_COLUMNS = [
    "sample_id", "dataset", "split", "subject", "kind", "source_path", "sha256", "bytes", "width", "height",
    "n_frames", "fps", "emotion", "valence", "arousal", "age", "age_bin", "gender", "face_box", "face_score",
    "landmarks", "align_matrix", "detector", "shard", "extra",
]
AU_COLUMNS = ["sample_id", "au", "present", "intensity"]
SHARD_COLUMNS = ["path", "dataset", "split", "n_samples", "bytes", "sha256", "fingerprint"]
REJECT_COLUMNS = ["dataset", "source_path", "stage", "reason", "detail"]


COLUMNS = {"samples": SAMPLE_COLUMNS, "au_labels": AU_COLUMNS, "rejects": REJECT_COLUMNS, "shards": SHARD_COLUMNS}
WRITE_MEMORY = "1GB"  # DuckDB's own memory while an ingest writes and exports; beyond it DuckDB spills to disk (64 MB failed to commit 1M samples)
_INSERT_ROWS = 5_000  # rows of one table gathered per INSERT: few statements, bounded memory


@dataclass
class DatasetRows:
    """Everything one ingest of one dataset puts in the catalog, replaced as a unit.

    `parts` yields {table: rows} pieces (one shard's worth each), so a million-row dataset goes
    in without ever being in memory at once.
    """

    dataset: str
    raw_root: str
    rows_read: int
    params: dict[str, Any]
    parts: Iterable[dict[str, list[dict[str, Any]]]]


def connect(path: str | Path, read_only: bool = False, wait_s: float = 60.0) -> duckdb.DuckDBPyConnection:
    """Open the catalog (creating schema and views); waits for a writer holding the file lock.

    DuckDB allows one writing process per file: a second ingest waits up to `wait_s`, then
    fails with a message that names the file instead of a bare lock error.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no catalog at {path}: run `fer ingest` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise RuntimeError(f"catalog {path} is locked by another process (another ingest?): {err}") from err
            time.sleep(0.5)
    if not read_only:
        con.execute("BEGIN TRANSACTION")  # one commit, not one per statement
        con.execute(SCHEMA)
        for view in VIEWS:
            con.execute(view)
        con.execute("COMMIT")
    return con


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    if "extra" in df:
        df["extra"] = [None if e is None else json.dumps(e, sort_keys=True) for e in df["extra"]]
    return df.astype(object).where(df.notna(), None)


def _swap(con: duckdb.DuckDBPyConnection, dataset: str, fill: Callable[[], None]) -> None:
    """Delete one dataset's rows from every table and `fill()` new ones in one transaction."""
    try:
        con.begin()
        con.execute("DELETE FROM au_labels WHERE sample_id IN (SELECT sample_id FROM samples WHERE dataset = ?)",
                    [dataset])
        for table in ("samples", "rejects", "shards", "ingests"):
            con.execute(f"DELETE FROM {table} WHERE dataset = ?", [dataset])
        fill()
        con.commit()
    except BaseException:
        con.rollback()
        raise


def replace_dataset(path: str | Path, rows: DatasetRows, parquet_dir: str | Path | None = None) -> None:
    """Swap one dataset's rows in all tables: all of the new run or, if anything fails, the old one;
    then, with `parquet_dir`, `export_parquet` over the same connection (a second open costs more
    than the export)."""
    def fill() -> None:
        counts = dict.fromkeys(COLUMNS, 0)
        pending: dict[str, list[dict[str, Any]]] = {table: [] for table in COLUMNS}

        def insert(table: str) -> None:
            df = _frame(pending[table], COLUMNS[table])
            con.register("incoming", df)
            con.execute(f"INSERT INTO {table} ({', '.join(df.columns)}) SELECT * FROM incoming")
            con.unregister("incoming")
            counts[table] += len(df)
            pending[table] = []

        for part in rows.parts:
            for table, items in part.items():
                pending[table].extend(items)
                if len(pending[table]) >= _INSERT_ROWS:
                    insert(table)
        for table, items in pending.items():
            if items:
                insert(table)
        con.execute(
            "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, now())",
            [rows.dataset, rows.raw_root, rows.rows_read, counts["samples"], counts["rejects"],
             json.dumps(rows.params, sort_keys=True)],
        )

    with connect(path) as con:
        con.execute(f"SET memory_limit = '{WRITE_MEMORY}'")  # spill, not grow, with the dataset
        _swap(con, rows.dataset, fill)
        if parquet_dir is not None:
            _export(con, Path(parquet_dir))


def merge(parts: Iterable[str | Path], dest: str | Path) -> list[str]:
    """Copy every dataset of the part catalogs into `dest`, replacing it there.

    DVC runs one ingest stage per dataset, each with its own catalog file; this joins them.
    """
    merged = []
    dest = Path(dest)
    with connect(dest) as con:
        for part in parts:
            # Shard paths are relative to their catalog's folder: re-base them on dest's folder.
            prefix = Path(os.path.relpath(Path(part).resolve().parent, dest.resolve().parent)).as_posix() + "/"
            prefix = "" if prefix == "./" else prefix
            rebase = {"samples": "* REPLACE (? || shard AS shard)", "shards": "* REPLACE (? || path AS path)"}
            con.execute(f"ATTACH '{Path(part)}' AS part (READ_ONLY)")
            try:
                for (dataset,) in con.execute("SELECT dataset FROM part.ingests ORDER BY dataset").fetchall():
                    def fill(dataset: str = dataset) -> None:
                        con.execute("INSERT INTO au_labels SELECT a.* FROM part.au_labels a "
                                    "JOIN part.samples s USING (sample_id) WHERE s.dataset = ?", [dataset])
                        for table in ("samples", "rejects", "shards", "ingests"):
                            columns = rebase.get(table, "*")
                            args = [prefix, dataset] if table in rebase else [dataset]
                            con.execute(f"INSERT INTO {table} SELECT {columns} FROM part.{table} WHERE dataset = ?", args)

                    _swap(con, dataset, fill)
                    merged.append(dataset)
            finally:
                con.execute("DETACH part")
    return merged


def export_parquet(path: str | Path, out_dir: str | Path) -> Path:
    """Parquet copy of the catalog, partitioned by dataset (`out_dir/<table>/dataset=X/*.parquet`)."""
    with connect(path, read_only=True) as con:
        return _export(con, Path(out_dir))


def _export(con: duckdb.DuckDBPyConnection, out_dir: Path) -> Path:
    """Each table is written to a fresh folder that then replaces the old one: writing into the old
    folder would leave the partitions of datasets (or rejects) that are gone from the catalog."""
    out_dir.mkdir(parents=True, exist_ok=True)
    queries = {
        "samples": "SELECT * FROM samples",
        "au_labels": "SELECT s.dataset, a.* FROM au_labels a JOIN samples s USING (sample_id)",
        "rejects": "SELECT * FROM rejects",
        "shards": "SELECT * FROM shards",
    }
    for table, query in queries.items():
        target, fresh, old = out_dir / table, out_dir / f".{table}.new", out_dir / f".{table}.old"
        for leftover in (fresh, old):
            shutil.rmtree(leftover, ignore_errors=True)
        if con.execute(f"SELECT count(*) FROM ({query})").fetchone()[0]:
            con.execute(f"COPY ({query} ORDER BY ALL) TO '{fresh}' "
                        "(FORMAT PARQUET, PARTITION_BY (dataset), FILENAME_PATTERN 'part{i}')")
        if target.exists():
            target.rename(old)
        if fresh.exists():
            fresh.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def write_counts(path: str | Path, target: str | Path) -> pd.DataFrame:
    """Per-dataset rows read / samples / rejects as a DVC metrics JSON ({dataset: {...}}); returns them."""
    counts = query(path, "SELECT dataset, rows_read, n_samples, n_rejects FROM ingests ORDER BY dataset")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(json.loads(counts.set_index("dataset").to_json(orient="index")), indent=2) + "\n")
    return counts


def query(path: str | Path, sql: str, params: Iterable[Any] | None = None) -> pd.DataFrame:
    """Run a read-only SQL query over the catalog and return a DataFrame."""
    with connect(path, read_only=True) as con:
        return con.execute(sql, list(params or [])).fetchdf()
