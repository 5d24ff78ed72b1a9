"""The label catalog: schema, views, atomic per-dataset replacement, merge, and safe queries.

The catalog is the Parquet folder beside the DuckDB file (`data/catalog/` for `data/catalog.duckdb`),
partitioned by dataset (`<table>/dataset=X/part0.parquet`): plain lists, no timestamps, rows in one
order, so the same rows give the same bytes (what DVC hashes) and pyarrow, pandas or polars read it
without DuckDB. The `.duckdb` file is a local index built from that folder: it records which Parquet
files it was built from and is rebuilt (aside, then renamed) when they changed or it is missing.
Every write builds a new index and a new Parquet folder aside and swaps them in, so neither a reader
nor a kill -9 sees half a write, and a reader holding the old file never blocks a writer.

Everything a user asks of the data ("how many AffectNet test faces have valence?", "which
AUs are rare in BP4D fold 1?") is one SQL query over these tables and views, run read-only.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from fer_data.labels import AGE_BINS, EMOTIONS, GENDERS

log = logging.getLogger(__name__)

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
    yaw          REAL,                      -- head pose in degrees from the 5 landmarks (faces/quality.py);
    pitch        REAL,                      --   a clip's: the mean over its sampled frames
    roll         REAL,
    face_size    REAL,                      -- face box side in source pixels
    sharpness    REAL,                      -- variance of the Laplacian of the aligned crop (grey)
    face_coverage REAL,                     -- clip: share of the video's frames in the main face track
    n_tracks     INTEGER,                   -- clip: face tracks found in the video
    shard        VARCHAR,
    extra        JSON
);
CREATE TABLE IF NOT EXISTS au_labels (
    sample_id VARCHAR NOT NULL,
    au        SMALLINT NOT NULL,
    present   BOOLEAN,                      -- NULL = not annotated / unknown (BP4D 9)
    intensity REAL
);
CREATE TABLE IF NOT EXISTS clip_frames (     -- each sampled frame of a clip sample (fer_data.faces.track)
    sample_id    VARCHAR NOT NULL,
    t            SMALLINT NOT NULL,         -- position in the sample (its t-th JPEG)
    frame        INTEGER NOT NULL,          -- frame index in the video or frame folder
    face_box     REAL[],                    -- x0, y0, x1, y1 in source pixels; NULL: an aligned release
    landmarks    REAL[],                    -- the 5 points the crop was aligned on (smoothed), source pixels
    score        REAL,                      -- the detector's score at this frame; NULL: no detection of its own
    interpolated BOOLEAN                    -- landmarks from the track, not this frame; NULL: no detector ran
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
    params      JSON
);
CREATE TABLE IF NOT EXISTS phashes (          -- fer_data.audit: perceptual hash of each aligned crop
    sample_id VARCHAR NOT NULL,
    phash     VARCHAR NOT NULL,
    group_id  BIGINT NOT NULL                 -- near-duplicate group
);
CREATE TABLE IF NOT EXISTS parquet_manifest ( -- the Parquet files this index was built from; none: written directly
    files JSON NOT NULL
);
"""
TABLES = ("samples", "au_labels", "clip_frames", "rejects", "shards", "ingests", "phashes")  # what the Parquet folder holds


def sql_string(value: str) -> str:
    """`value` as a DuckDB string literal, for the few places SQL cannot take a bound parameter."""
    return "'" + value.replace("'", "''") + "'"


def _label_table(name: str, labels: Sequence[str]) -> str:
    values = ", ".join(f"({i}, {sql_string(label)})" for i, label in enumerate(labels))
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
    # rows read = rows giving samples + rejects, per dataset: with `--faces all` a row gives a sample per
    # face, the first (extra.face_index 0, or none) standing for the row.
    """
CREATE OR REPLACE VIEW ingest_accounting AS
SELECT i.dataset, i.rows_read, coalesce(k.n_rows, 0) AS rows_giving_samples, i.n_samples, i.n_rejects,
       i.rows_read = coalesce(k.n_rows, 0) + i.n_rejects AS accounted
FROM ingests i LEFT JOIN (
    SELECT dataset, count(*) FILTER (coalesce(CAST(extra->>'face_index' AS INTEGER), 0) = 0) AS n_rows
    FROM samples GROUP BY dataset) k USING (dataset)
ORDER BY i.dataset
""",
    # Which backend of the ingest's detector chain made each dataset's samples: `step` is its place in
    # the chain (`auto`'s picks are step 1), so the rows of a step past 1 are what it recovered.
    """
CREATE OR REPLACE VIEW detector_summary AS
WITH chains AS (SELECT dataset, list_transform(string_split(coalesce(params->>'detector', 'auto'), ','),
                                               lambda x: trim(x)) AS chain FROM ingests)
SELECT s.dataset, s.detector, coalesce(list_position(c.chain, s.detector), 1) AS step,
       count(*) AS n_samples,
       count(*) FILTER (coalesce(CAST(s.extra->>'face_index' AS INTEGER), 0) = 0) AS n_rows,
       coalesce(list_position(c.chain, s.detector), 1) > 1 AS recovered
FROM samples s LEFT JOIN chains c USING (dataset)
GROUP BY ALL ORDER BY s.dataset, step, s.detector
""",
    # Distributions of pose and quality per dataset (fer_data.faces.quality): NULLs counted apart.
    """
CREATE OR REPLACE VIEW face_quality AS
SELECT dataset, measure, count(value) AS n, count(*) - count(value) AS n_null, min(value) AS min,
       quantile_cont(value, 0.05) AS p05, quantile_cont(value, 0.25) AS p25, quantile_cont(value, 0.5) AS p50,
       quantile_cont(value, 0.75) AS p75, quantile_cont(value, 0.95) AS p95, max(value) AS max
FROM (SELECT dataset, unnest(['yaw', 'pitch', 'roll', 'face_size', 'sharpness', 'face_score']) AS measure,
             unnest([yaw, pitch, roll, face_size, sharpness, face_score]) AS value FROM samples)
GROUP BY dataset, measure
ORDER BY dataset, list_position(['yaw', 'pitch', 'roll', 'face_size', 'sharpness', 'face_score'], measure)
""",
    """
CREATE OR REPLACE VIEW reject_summary AS
SELECT dataset, stage, reason, count(*) AS n FROM rejects GROUP BY dataset, stage, reason ORDER BY dataset, n DESC
""",
    # The audit's near-duplicate groups of more than one current sample, and those crossing datasets or splits.
    """
CREATE OR REPLACE VIEW duplicates AS
WITH hashed AS (SELECT p.group_id, p.sample_id, s.dataset, s.split, p.phash
                FROM phashes p JOIN samples s USING (sample_id))
SELECT * FROM hashed WHERE group_id IN (SELECT group_id FROM hashed GROUP BY 1 HAVING count(*) > 1) ORDER BY 1, 2
""",
    """
CREATE OR REPLACE VIEW leakage AS
SELECT group_id, count(*) AS n, count(DISTINCT dataset) AS n_datasets, count(DISTINCT split) AS n_splits,
       list(sample_id ORDER BY sample_id) AS samples,
       list(DISTINCT dataset || '/' || split ORDER BY dataset || '/' || split) AS where_found
FROM duplicates GROUP BY group_id
HAVING count(DISTINCT dataset) > 1 OR count(DISTINCT split) > 1 ORDER BY n DESC, group_id
""",
]

SAMPLE_COLUMNS = [
    "sample_id", "dataset", "split", "subject", "kind", "source_path", "sha256", "bytes", "width", "height",
    "n_frames", "fps", "emotion", "valence", "arousal", "age", "age_bin", "gender", "face_box", "face_score",
    "landmarks", "align_matrix", "detector", "yaw", "pitch", "roll", "face_size", "sharpness", "face_coverage",
    "n_tracks", "shard", "extra",
]
AU_COLUMNS = ["sample_id", "au", "present", "intensity"]
SHARD_COLUMNS = ["path", "dataset", "split", "n_samples", "bytes", "sha256", "fingerprint"]
REJECT_COLUMNS = ["dataset", "source_path", "stage", "reason", "detail"]


CLIP_FRAME_COLUMNS = ["sample_id", "t", "frame", "face_box", "landmarks", "score", "interpolated"]
COLUMNS = {"samples": SAMPLE_COLUMNS, "au_labels": AU_COLUMNS, "clip_frames": CLIP_FRAME_COLUMNS,
           "rejects": REJECT_COLUMNS, "shards": SHARD_COLUMNS}
WRITE_MEMORY = "256MB"  # DuckDB's own memory while a write inserts, indexes and exports; beyond it DuckDB spills to disk
_INSERT_ROWS = 5_000  # rows of one table gathered per INSERT: few statements, bounded memory
_REBASED = {"samples": "shard", "shards": "path"}  # columns holding paths relative to the catalog's folder
_HIVE = "hive_partitioning = true, hive_types_autocast = false"  # `dataset` from the folder name, as text


class QueryError(duckdb.Error, ValueError):
    """A query or selection the catalog refuses or DuckDB rejects, in one line. A `ValueError` (a user's
    mistake) and a `duckdb.Error` (what callers of DuckDB already catch)."""


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


def parquet_folder(path: str | Path) -> Path:
    """The Parquet folder a catalog index belongs to: `data/catalog.duckdb` -> `data/catalog`."""
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"a catalog file needs a suffix such as .duckdb (its Parquet folder is the name "
                         f"without it): {path}")
    return path.with_suffix("")


# --- reading ---------------------------------------------------------------------------------------

def connect(path: str | Path, read_only: bool = False, wait_s: float = 5.0) -> duckdb.DuckDBPyConnection:
    """A connection to the index file. Read-only: brought up to date with its Parquet folder first.

    Writable: the file itself, for tools that build a catalog directly (benchmarks); the catalog's own
    writes go through `rewrite`. Such a file has no manifest, so the next reader takes its rows as the
    catalog's and exports them to the Parquet folder.
    """
    path = Path(path)
    if read_only:
        return _indexed(path, lambda: _open(path, read_only=True, wait_s=wait_s))
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only=False, wait_s=wait_s)
    _create_schema(con)
    con.execute("DELETE FROM parquet_manifest")
    return con


def query(path: str | Path, sql: str, params: Iterable[Any] | None = None) -> pd.DataFrame:
    """Run one read-only statement (SELECT, WITH, FROM, DESCRIBE, ...) over the catalog as a DataFrame.

    What `fer sql` and every selection run: exactly one statement, on a connection that cannot touch
    files (no COPY TO, ATTACH, read_text, ...) and cannot change that setting. Refusals and DuckDB's
    errors come back as one-line `QueryError`s.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryError(_first_line(err)) from err
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.type.name for s in statements) or "nothing"
        raise QueryError(f"the catalog answers one read-only query (SELECT ...), got: {kinds}")
    path = Path(path)

    def attach() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        try:
            _retry_lock(path, 5.0, lambda: con.execute("ATTACH ? AS catalog (READ_ONLY)", [str(path)]))
            con.execute("USE catalog")
        except BaseException:
            con.close()
            raise
        return con

    con = _indexed(path, attach)
    try:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con.execute(statements[0], list(params or [])).fetchdf()
    except duckdb.Error as err:
        raise QueryError(_first_line(err)) from err
    finally:
        con.close()


def expression(where: str) -> str:
    """A selection (`--where`, a config's `train_where` / `test_where`) checked to be exactly one SQL
    expression, ready to stand in parentheses in a WHERE clause: it can neither close them nor add a
    statement. Raises `QueryError` naming the selection otherwise."""
    try:
        parsed = duckdb.SQLExpression(where)
    except duckdb.Error as err:
        raise QueryError(f"selection {where!r} is not one SQL expression: {_first_line(err)}") from err
    return f"(\n{parsed}\n)"  # own lines: a trailing `--` comment cannot swallow the closing parenthesis


def write_counts(path: str | Path, target: str | Path) -> pd.DataFrame:
    """Per-dataset rows read / samples / rejects as a DVC metrics JSON ({dataset: {...}}); returns them."""
    counts = query(path, "SELECT dataset, rows_read, n_samples, n_rejects FROM ingests ORDER BY dataset")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(json.loads(counts.set_index("dataset").to_json(orient="index")), indent=2) + "\n")
    return counts


# --- writing ---------------------------------------------------------------------------------------

@contextmanager
def rewrite(path: str | Path, drop: Collection[str] | None = ()) -> Iterator[duckdb.DuckDBPyConnection]:
    """A new version of the catalog: yields a connection to a fresh index (a temporary file) holding
    the current rows less the datasets in `drop` (`None`: none of them); when the block ends, its rows
    become the Parquet folder and the index, both swapped in whole. An exception leaves both as they were.
    The catalog is locked meanwhile: read it through the yielded connection.
    """
    path = Path(path)
    folder = parquet_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        # A fresh rewrite (`drop=None`) needs none of the current rows: a missing folder (DVC removes a
        # stage's outs before rerunning it, not the index beside them) is then no error.
        listing = _settle(path, migrate=True, required=drop is not None)
        with _new_index(path) as con:
            if listing is not None and drop is not None:
                _load(con, folder, drop=drop)
            # No transaction: the index is a new file no reader sees before the swap, and each
            # statement's commit lets DuckDB write its rows out instead of holding them.
            yield con
            _publish(con, folder)


class DatasetWriter:
    """One dataset's rows replaced in all tables, pushed while they are made: `add` one part
    ({table: rows}, a shard's worth) at a time, then `commit`. Until then nothing is visible; leaving
    the block without `commit` (an error, an interrupted ingest) leaves the catalog as it was. The
    catalog is locked from entering the block to leaving it.

    Why pushed: an ingest adds each shard's rows as the shard completes, while its workers process
    the next ones, instead of inserting every row on one core after the last shard."""

    def __init__(self, path: str | Path, dataset: str, parquet_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        if parquet_dir is not None and Path(parquet_dir).resolve() != parquet_folder(self.path).resolve():
            raise ValueError(f"the Parquet of {self.path} is {parquet_folder(self.path)}, not {parquet_dir}")
        self.dataset = dataset
        self.counts = dict.fromkeys(COLUMNS, 0)
        self._pending: dict[str, list[dict[str, Any]]] = {table: [] for table in COLUMNS}
        self._stack: ExitStack | None = None

    def __enter__(self) -> DatasetWriter:
        with ExitStack() as stack:
            self.con = stack.enter_context(rewrite(self.path, drop=[self.dataset]))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:  # not committed: the new index is removed, the catalog untouched
            stack, self._stack = self._stack, None
            err = exc[1] if exc and exc[1] is not None else RuntimeError(f"{self.dataset}: left without commit")
            stack.__exit__(type(err), err, err.__traceback__)  # the index's removal; `err` is not raised here

    def add(self, part: dict[str, list[dict[str, Any]]]) -> None:
        for table, items in part.items():
            self._pending[table].extend(items)
            if len(self._pending[table]) >= _INSERT_ROWS:
                self._insert(table)

    def _insert(self, table: str) -> None:
        df = _frame(self._pending[table], COLUMNS[table])
        self.con.register("incoming", df)
        self.con.execute(f"INSERT INTO {table} ({', '.join(df.columns)}) SELECT * FROM incoming")
        self.con.unregister("incoming")
        self.counts[table] += len(df)
        self._pending[table] = []

    def commit(self, raw_root: str, rows_read: int, params: dict[str, Any]) -> None:
        """The rest of the rows and the `ingests` row in, then the new catalog swapped in whole."""
        if self._stack is None:
            raise RuntimeError(f"{self.dataset}: commit outside the block, or twice")
        for table, items in self._pending.items():
            if items:
                self._insert(table)
        self.con.execute(
            "INSERT INTO ingests (dataset, raw_root, rows_read, n_samples, n_rejects, params) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [self.dataset, raw_root, rows_read, self.counts["samples"], self.counts["rejects"],
             json.dumps(params, sort_keys=True)],
        )
        stack, self._stack = self._stack, None
        stack.close()  # publishes


def replace_dataset(path: str | Path, rows: DatasetRows, parquet_dir: str | Path | None = None) -> None:
    """Swap one dataset's rows in all tables: all of the new run or, if anything fails, the old one.
    The Parquet folder is always the one beside `path`; `parquet_dir`, if given, must name it."""
    with DatasetWriter(path, rows.dataset, parquet_dir) as writer:
        for part in rows.parts:
            writer.add(part)
        writer.commit(rows.raw_root, rows.rows_read, rows.params)


def merge(parts: Iterable[str | Path], dest: str | Path, fresh: bool = False) -> list[str]:
    """Copy every dataset of the part catalogs (index files or their Parquet folders) into `dest`,
    replacing those datasets there; `fresh`: `dest` then holds the parts' datasets and nothing else.

    DVC runs one ingest stage per dataset, each with its own catalog; this joins them. The parts are
    read before `dest` changes, so `dest` may be one of them; a failure leaves `dest` as it was.
    """
    dest = Path(dest)
    folders = [_part_folder(Path(part)) for part in parts]  # before dest is locked: it may be among them
    merged: list[str] = []
    with rewrite(dest, drop=None if fresh else ()) as con:
        for folder in folders:
            datasets = [d for (d,) in con.execute(
                f"SELECT DISTINCT dataset FROM read_parquet(?, {_HIVE}) ORDER BY 1", [_files(folder, "ingests")]
            ).fetchall()]
            # Shard paths are relative to their catalog's folder: re-base them on dest's folder.
            prefix = Path(os.path.relpath(folder.resolve().parent, dest.resolve().parent)).as_posix() + "/"
            _delete(con, datasets)
            _load(con, folder, rebase="" if prefix == "./" else prefix)
            merged += datasets
    return merged


_EXTRA_JSON = json.JSONEncoder(sort_keys=True)  # `json.dumps(extra, sort_keys=True)`, its encoder made once


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The rows as object columns, missing values None (DuckDB's NULL), `extra` as JSON text: built
    column by column, where a frame of the dicts then made object with NaN back to None took twice as long."""
    data = {c: [row.get(c) for row in rows] for c in columns}
    if "extra" in data:
        data["extra"] = [None if e is None else _EXTRA_JSON.encode(e) for e in data["extra"]]
    return pd.DataFrame(data, columns=columns, dtype=object)


# --- the index and its Parquet folder --------------------------------------------------------------

def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _retry_lock(path: Path, wait_s: float, attempt: Callable[[], Any]) -> Any:
    """`attempt()` until DuckDB's file lock lets it, for at most `wait_s`; then one error naming the
    file and the process holding it (only a writer that opened the file itself can hold it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return attempt()
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() > deadline:
                holder = re.search(r"held in (.+?) by user", str(err))
                who = holder.group(1) if holder else _first_line(err)
                raise RuntimeError(f"catalog {path} is locked by another process ({who}): close it, retry") from err
            time.sleep(0.2)


def _open(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    return _retry_lock(path, wait_s, lambda: duckdb.connect(str(path), read_only=read_only))


def _create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("BEGIN TRANSACTION")  # one commit, not one per statement
    con.execute(SCHEMA)
    for view in VIEWS:
        con.execute(view)
    con.execute("COMMIT")


@cache
def _columns() -> dict[str, list[tuple[str, str]]]:
    """(name, type) of each table's columns, in schema order: what the Parquet holds and loads."""
    con = duckdb.connect(":memory:")
    con.execute(SCHEMA)
    rows = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                       "WHERE database_name = current_database() ORDER BY table_name, column_index").fetchall()
    con.close()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        out.setdefault(table, []).append((column, data_type))
    return out


def _files(folder: Path, table: str) -> list[str]:
    return [str(p) for p in sorted((folder / table).glob("*/*.parquet"))]


def _listing(folder: Path) -> list[list[Any]] | None:
    """The Parquet files of a folder as the index's cache key: name, size, mtime, inode (None: no folder)."""
    if not folder.is_dir():
        return None
    return [[p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino]
            for p in sorted(folder.rglob("*.parquet")) for st in [p.stat()]]


def _manifest(con: duckdb.DuckDBPyConnection) -> list[list[Any]] | None:
    """The listing an index was built from; None when it was written directly (no manifest)."""
    found = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                        "AND table_name = 'parquet_manifest'").fetchone()[0]
    row = con.execute("SELECT files FROM parquet_manifest").fetchone() if found else None
    return None if row is None else json.loads(row[0])


def _manifest_of(path: Path) -> list[list[Any]] | None:
    if not path.exists():
        return None
    with _open(path, read_only=True, wait_s=5.0) as con:
        return _manifest(con)


def _indexed(path: Path, open_index: Callable[[], duckdb.DuckDBPyConnection]) -> duckdb.DuckDBPyConnection:
    """`open_index()` once the index matches its Parquet folder: rebuilt first if missing or stale. The
    check costs a listing of the folder and one read of the connection the caller wanted anyway."""
    folder = parquet_folder(path)
    if not path.exists() and not folder.exists():
        raise FileNotFoundError(f"no catalog at {path}: run `fer ingest` first")
    if path.exists():
        con = open_index()
        manifest = _manifest(con)
        if manifest is not None and manifest == _listing(folder):
            return con
        con.close()
    with _lock(path):  # rebuild once, whoever else is waiting for it
        listing = _settle(path, migrate=False)
        if listing is not None and listing != _manifest_of(path):
            with _new_index(path) as con:
                _load(con, folder)
                _record(con, listing)
    return open_index()


def _settle(path: Path, migrate: bool, required: bool = True) -> list[list[Any]] | None:
    """Under the lock: finish or undo an interrupted folder swap; export an index written directly (an
    older fer, or `connect` for writing), whose rows are the catalog's, when its Parquet folder exists
    or `migrate`; returns the Parquet listing (None: no folder). `required`: the caller reads the
    current rows, so an index whose Parquet folder is gone is an error."""
    folder = parquet_folder(path)
    new, old = _aside(folder, "new"), _aside(folder, "old")
    if not folder.exists() and old.exists():  # stopped between the two renames: `new` was complete
        (new if new.exists() else old).rename(folder)
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    listing, manifest = _listing(folder), _manifest_of(path)
    if path.exists() and manifest is None and (listing is not None or migrate):
        with _open(path, read_only=True, wait_s=5.0) as con:
            _publish(con, folder, record=False)  # rebuilt from the folder next
        listing = _listing(folder)
    elif listing is None and manifest is not None and required:
        raise FileNotFoundError(f"{folder} is missing but {path} was built from it: restore it "
                                f"(`dvc checkout`), or delete {path} and ingest again")
    return listing


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One writer (or index rebuild) of a catalog at a time. An flock: the kernel frees it when its
    holder dies, kill -9 included."""
    with open(path.with_name(path.name + ".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process is writing this catalog; waiting for it", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextmanager
def _new_index(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An empty index in a temporary file, renamed over `path` when the block ends; removed if it fails.
    Readers that hold the old file keep reading it; new ones get the new one."""
    tmp = path.with_name(path.name + ".tmp")
    wal = Path(f"{path}.wal")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp), config={"memory_limit": WRITE_MEMORY})  # spill, not grow, with the data
    try:
        _create_schema(con)
        yield con
        con.close()  # checkpoints: the file is whole before it is renamed
        wal.unlink(missing_ok=True)  # a crashed direct writer's log belongs to the old file
        os.replace(tmp, path)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)


def _record(con: duckdb.DuckDBPyConnection, listing: list[list[Any]] | None) -> None:
    con.execute("DELETE FROM parquet_manifest")
    con.execute("INSERT INTO parquet_manifest VALUES (?)", [json.dumps(listing)])


def _aside(folder: Path, tag: str) -> Path:
    """A staging name beside `folder` (`.catalog.new.tmp`): `*.tmp` is what DVC and git ignore."""
    return folder.with_name(f".{folder.name}.{tag}.tmp")


def _publish(con: duckdb.DuckDBPyConnection, folder: Path, record: bool = True) -> None:
    """Export the connection's tables into a fresh folder beside `folder`, `record` its listing in the
    index and swap it in: writing into the old folder would leave partitions of datasets that are gone,
    and a crash half-way a mix of two catalogs."""
    new, old = _aside(folder, "new"), _aside(folder, "old")
    shutil.rmtree(new, ignore_errors=True)
    _export(con, new)
    if record:
        _record(con, _listing(new))  # names, sizes, mtimes and inodes survive the rename of the folder
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _export(con: duckdb.DuckDBPyConnection, out: Path) -> None:
    """Each table as Parquet partitioned by dataset, byte for byte the same for the same rows: sorted,
    one thread, fixed-size arrays as plain lists (pyarrow cannot read DuckDB's arrays holding NULLs)."""
    out.mkdir(parents=True)
    present = {t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    con.execute("SET threads = 1")
    try:
        for table in TABLES:
            if table not in present:  # an older catalog
                continue
            columns = _columns()[table]
            select = ", ".join(f"t.{name}::{_as_list(kind)} AS {name}" if _as_list(kind) != kind else f"t.{name}"
                               for name, kind in columns)
            if any(name == "dataset" for name, _ in columns):
                body = f"SELECT {select} FROM {table} t"
            else:
                body = f"SELECT s.dataset, {select} FROM {table} t JOIN samples s USING (sample_id)"
            if con.execute(f"SELECT count(*) FROM ({body})").fetchone()[0]:
                con.execute(f"COPY ({body} ORDER BY ALL) TO ? "
                            "(FORMAT PARQUET, PARTITION_BY (dataset), FILENAME_PATTERN 'part{i}')", [str(out / table)])
    finally:
        con.execute("RESET threads")


def _as_list(kind: str) -> str:
    """A DuckDB type with fixed-size arrays made plain lists: REAL[4] -> REAL[]."""
    return re.sub(r"\[\d+\]$", "[]", kind)


def _load(con: duckdb.DuckDBPyConnection, folder: Path, drop: Collection[str] = (), rebase: str = "") -> None:
    """Insert a Parquet folder's rows (less the datasets in `drop`; path columns prefixed with `rebase`)."""
    if not _files(folder, "ingests") and any(_files(folder, table) for table in TABLES):
        raise ValueError(f"{folder} has no ingests table: it was written by an older fer; ingest it again")
    for table in TABLES:
        files = _files(folder, table)
        if not files:
            continue
        names = [name for name, _ in _columns()[table]]
        select = ", ".join(f"$rebase || {n} AS {n}" if _REBASED.get(table) == n else n for n in names)
        args: dict[str, Any] = {"files": files, "drop": list(drop)}
        if table in _REBASED:
            args["rebase"] = rebase
        con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {select} FROM read_parquet($files, {_HIVE}) "
                    "WHERE NOT list_contains($drop::VARCHAR[], dataset)", args)


def _delete(con: duckdb.DuckDBPyConnection, datasets: Sequence[str]) -> None:
    args = {"d": list(datasets)}
    for table in ("au_labels", "clip_frames", "phashes"):
        con.execute(f"DELETE FROM {table} WHERE sample_id IN "
                    "(SELECT sample_id FROM samples WHERE list_contains($d::VARCHAR[], dataset))", args)
    for table in ("samples", "rejects", "shards", "ingests"):
        con.execute(f"DELETE FROM {table} WHERE list_contains($d::VARCHAR[], dataset)", args)


def _part_folder(part: Path) -> Path:
    """The Parquet folder of a merge part: the folder itself, or the one beside an index file."""
    if not part.is_dir():
        if not part.suffix or not (part.exists() or parquet_folder(part).is_dir()):
            raise FileNotFoundError(f"no catalog at {part}")
        with _lock(part):
            _settle(part, migrate=True)
        part = parquet_folder(part)
    if not _files(part, "ingests"):
        raise ValueError(f"{part} is not a catalog: no ingests/ Parquet in it")
    return part
