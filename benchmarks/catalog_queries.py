"""Catalog questions at scale: DuckDB over the project's own schema against pandas over CSV; one JSON line.

A catalog of `--samples` samples (default 1M) and ~11.6 AU rows per sample is generated in SQL
(`range()` and `hash()`, so it is deterministic and takes seconds) with the schema and views of
`fer_data.catalog`. The mix is the project's datasets scaled up: AffectNet-like emotion +
valence/arousal, FairFace/UTKFace age and gender, DFEW/FERV39K clips, BP4D (23 AU columns, 12 of
them coded, the rest mostly NULL), DISFA (12 AUs) and CASME II (13 sparse AUs); missing labels are
NULL at realistic rates and each (dataset, AU) has its own occurrence rate.

Four questions are timed: the views `task_coverage`, `class_balance`, `au_occurrence` and a
training selection (`SELECT sample_id, shard FROM samples WHERE dataset='rafdb' AND split='train'
AND emotion IS NOT NULL`).

- DuckDB: open a read-only connection to the catalog file (as `fer sql` does), run the query and
  fetch it into a DataFrame, all timed; median of `--repeats` runs.
- pandas from CSV (the user's alternative, and the goal's baseline): the same tables exported
  with `COPY ... (HEADER)`, read with `pd.read_csv` limited to the columns the question needs
  (`usecols`, which favours pandas), then answered in pandas; one run, read time included.
- pandas in memory: the same pandas code on frames already loaded, reported separately so the
  comparison of query engines alone is visible too.

Both answers are compared (sorted, floats to 1e-9 relative) and the script fails if they differ.
Goal per question: DuckDB under 1 s and at least 10x faster than pandas from CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from fer_data import catalog
from fer_data.labels import AGE_BINS, EMOTIONS, GENDERS

BP4D_CODED = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
BP4D_ALL = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 27, 28)
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
CASME2_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 24)
# AffectNet-like skew (happy-heavy, few fear/disgust/contempt); 7-class sets leave contempt out.
EMOTION_WEIGHTS = (0.25, 0.40, 0.08, 0.05, 0.03, 0.02, 0.08, 0.02)
AGE_BIN_WEIGHTS = (0.02, 0.08, 0.12, 0.30, 0.22, 0.12, 0.08, 0.04, 0.02)


@dataclass(frozen=True)
class Mix:
    """One dataset of the generated catalog: its share of the samples and which labels it carries."""

    share: float
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    kind: str = "image"
    emotion_classes: int = 0  # 0 = no emotion labels, 7 or 8
    emotion_null: float = 0.0
    valence_arousal: float = 0.0  # fraction with both
    age: float = 0.0
    age_bin: float = 0.0
    gender: float = 0.0
    aus: dict[int, float] = field(default_factory=dict)  # AU -> fraction NULL (not annotated)
    detector: str = "centerface"
    folds: int = 0


MIX: dict[str, Mix] = {
    "affectnet": Mix(0.16, (("train", 0.94), ("val", 0.06)), emotion_classes=8, emotion_null=0.03,
                     valence_arousal=0.97, detector="given"),
    "rafdb": Mix(0.015, (("train", 0.8), ("test", 0.2)), emotion_classes=7, gender=0.9, detector="given"),
    "fer2013": Mix(0.035, emotion_classes=7, detector="none"),
    "ferplus": Mix(0.035, emotion_classes=8, emotion_null=0.04, detector="none"),
    "fairface": Mix(0.10, (("train", 0.86), ("val", 0.14)), age_bin=1.0, gender=1.0),
    "utkface": Mix(0.024, age=1.0, age_bin=1.0, gender=0.99, detector="none"),
    "dfew": Mix(0.016, (("train", 0.8), ("test", 0.2)), kind="clip", emotion_classes=7, detector="none", folds=5),
    "ferv39k": Mix(0.039, (("train", 0.8), ("test", 0.2)), kind="clip", emotion_classes=7, detector="none"),
    "bp4d": Mix(0.42, (("train", 0.67), ("test", 0.33)), folds=3,
                aus={au: 0.02 if au in BP4D_CODED else 0.85 for au in BP4D_ALL}),
    "disfa": Mix(0.15, (("train", 0.67), ("test", 0.33)), aus=dict.fromkeys(DISFA_AUS, 0.0), folds=3),
    "casme2": Mix(0.006, (("train", 0.8), ("test", 0.2)), kind="clip", emotion_classes=7, emotion_null=0.3,
                  aus=dict.fromkeys(CASME2_AUS, 0.05)),
}

SELECTION = ("SELECT sample_id, shard FROM samples "
             "WHERE dataset = 'rafdb' AND split = 'train' AND emotion IS NOT NULL")


def _u(salt: str, key: str = "i") -> str:
    """A deterministic uniform [0, 1) per row and salt."""
    return f"((hash({key}, '{salt}') % 1000003) / 1000003.0)"


def _pick(u: str, values: list[str], weights: tuple[float, ...]) -> str:
    """SQL CASE drawing one of `values` with probabilities proportional to `weights`."""
    total, edge, arms = sum(weights), 0.0, []
    for value, w in zip(values[:-1], weights[:-1]):
        edge += w / total
        arms.append(f"WHEN {u} < {edge:.6f} THEN {value}")
    return f"CASE {' '.join(arms)} ELSE {values[-1]} END"


def _maybe(fraction: float, salt: str, expr: str) -> str:
    """`expr` for a `fraction` of the rows, NULL for the rest."""
    if fraction <= 0:
        return "NULL"
    return expr if fraction >= 1 else f"CASE WHEN {_u(salt)} < {fraction} THEN {expr} END"


def samples_sql(name: str, mix: Mix, n: int) -> str:
    """INSERT of `n` rows of dataset `name` into `samples`."""
    splits = _pick(_u("split"), [f"'{s}'" for s, _ in mix.splits], tuple(w for _, w in mix.splits))
    emotion = "NULL"
    if mix.emotion_classes:
        weights = EMOTION_WEIGHTS[:mix.emotion_classes]
        emotion = _maybe(1 - mix.emotion_null, "emotion_null",
                         _pick(_u("emotion"), [str(c) for c in range(len(weights))], weights))
    age = f"round(1 + 80 * {_u('age')} * {_u('age2')}, 1)"
    age_bin = _pick(_u("age_bin"), [str(b) for b in range(len(AGE_BINS))], AGE_BIN_WEIGHTS)
    clip = mix.kind == "clip"
    box = f"[{_u('x')} * 40 + 20, {_u('y')} * 40 + 20, {_u('x')} * 40 + 180, {_u('y')} * 40 + 200]"
    marks = ", ".join(f"{_u(f'l{k}')} * 100 + {60 + 10 * k}" for k in range(10))
    pose = "NULL" if mix.detector == "none" else f"90 * ({_u('yaw')} - 0.5)"  # no landmarks: no pose
    return f"""
    INSERT INTO samples BY NAME
    SELECT '{name}:' || lpad(i::VARCHAR, 8, '0') AS sample_id, '{name}' AS dataset, {splits} AS split,
           'S' || lpad((i // 400)::VARCHAR, 5, '0') AS subject, '{mix.kind}' AS kind,
           '/raw/{name}/' || lpad(i::VARCHAR, 8, '0') || '{'' if clip else '.jpg'}' AS source_path,
           sha256(sample_id) AS sha256, 3000 + hash(i, 'bytes') % 20000 AS bytes,
           224 + hash(i, 'w') % 400 AS width, 224 + hash(i, 'h') % 400 AS height,
           {'16 + hash(i, ' + "'frames'" + ') % 200' if clip else 'NULL'} AS n_frames,
           {'25.0' if clip else 'NULL'} AS fps,
           {emotion} AS emotion,
           {_maybe(mix.valence_arousal, 'va', f"2 * {_u('v')} - 1")} AS valence,
           {_maybe(mix.valence_arousal, 'va', f"2 * {_u('a')} - 1")} AS arousal,
           {_maybe(mix.age, 'age_null', age)} AS age,
           {_maybe(mix.age_bin, 'age_bin_null', age_bin)} AS age_bin,
           {_maybe(mix.gender, 'gender_null', f"hash(i, 'g') % 2")} AS gender,
           {box} AS face_box, {'NULL' if mix.detector == 'none' else f"0.5 + 0.5 * {_u('score')}"} AS face_score,
           [{marks}] AS landmarks,
           [0.9, 0.1, -30 * {_u('m')}, -0.1, 0.9, -20 * {_u('m')}] AS align_matrix,
           '{mix.detector}' AS detector,
           {pose} AS yaw, {pose.replace('yaw', 'pitch')} / 2 AS pitch, {pose.replace('yaw', 'roll')} / 3 AS roll,
           160 + 200 * {_u('size')} AS face_size, 50 + 500 * {_u('sharp')} AS sharpness,
           {f"0.5 + 0.5 * {_u('cover')}" if clip and mix.detector != 'none' else 'NULL'} AS face_coverage,
           {"1 + hash(i, 'tracks') % 3" if clip and mix.detector != 'none' else 'NULL'} AS n_tracks,
           'ingest/{name}/shards/{name}/' || split || '-' || lpad((i // 1000)::VARCHAR, 5, '0') || '.tar' AS shard,
           {f"json_object('fold', 1 + i % {mix.folds})" if mix.folds else 'NULL'} AS extra
    FROM range({n}) t(i)
    """


def au_sql(name: str, mix: Mix) -> str:
    """INSERT of every AU row of dataset `name`; each AU has its own occurrence rate (4%..54%)."""
    values = ", ".join(f"({au}, {0.04 + 0.5 * ((au * 7919) % 97) / 97:.4f}, {null})" for au, null in mix.aus.items())
    return f"""
    INSERT INTO au_labels
    SELECT s.sample_id, a.au,
           CASE WHEN hash(s.sample_id, a.au, 'null') % 10000 >= a.null_rate * 10000
                THEN hash(s.sample_id, a.au, 'present') % 10000 < a.rate * 10000 END AS present,
           CASE WHEN '{name}' = 'disfa' THEN (hash(s.sample_id, a.au, 'int') % 6)::REAL END AS intensity
    FROM samples s CROSS JOIN (VALUES {values}) a(au, rate, null_rate)
    WHERE s.dataset = '{name}'
    """


def generate(workdir: Path, n_samples: int) -> tuple[Path, dict[str, Path], float]:
    """The catalog file and its two tables as CSV; seconds spent."""
    start = time.perf_counter()
    db = workdir / "catalog.duckdb"
    db.unlink(missing_ok=True)
    with catalog.connect(db) as con:
        for name, mix in MIX.items():
            con.execute(samples_sql(name, mix, max(1, round(mix.share * n_samples))))
            if mix.aus:
                con.execute(au_sql(name, mix))
        csv = {table: workdir / f"{table}.csv" for table in ("samples", "au_labels")}
        for table, path in csv.items():
            con.execute(f"COPY {table} TO '{path}' (HEADER)")
    return db, csv, time.perf_counter() - start


# pandas answers: the same questions as the views in fer_data.catalog, written the way a pandas user would.

def pd_task_coverage(samples: pd.DataFrame, au: pd.DataFrame) -> pd.DataFrame:
    s = samples.assign(
        va=samples.valence.notna() & samples.arousal.notna(),
        has_au=samples.sample_id.isin(au.loc[au.present.notna(), "sample_id"].unique()),
    )
    return s.groupby(["dataset", "split"]).agg(
        n_samples=("sample_id", "size"), n_emotion=("emotion", "count"), n_valence_arousal=("va", "sum"),
        n_age=("age", "count"), n_age_bin=("age_bin", "count"), n_gender=("gender", "count"), n_au=("has_au", "sum"),
    ).reset_index()


def pd_class_balance(samples: pd.DataFrame, au: pd.DataFrame | None = None) -> pd.DataFrame:
    parts = []
    for task, names in (("emotion", EMOTIONS), ("age_bin", AGE_BINS), ("gender", GENDERS)):
        counts = samples.dropna(subset=[task]).groupby(["dataset", "split", task]).size().reset_index(name="n")
        counts = counts.rename(columns={task: "label"}).astype({"label": int})
        parts.append(counts.assign(task=task, label_name=counts.label.map(dict(enumerate(names)))))
    out = pd.concat(parts, ignore_index=True)
    out["fraction"] = out.n / out.groupby(["dataset", "split", "task"]).n.transform("sum")
    return out[["dataset", "split", "task", "label", "label_name", "n", "fraction"]]


def pd_au_occurrence(samples: pd.DataFrame, au: pd.DataFrame) -> pd.DataFrame:
    m = au.merge(samples[["sample_id", "dataset", "split"]], on="sample_id")
    m = m.assign(labeled=m.present.notna(), pos=m.present.eq(True))
    out = m.groupby(["dataset", "split", "au"]).agg(n_labeled=("labeled", "sum"), n_present=("pos", "sum"))
    out = out.reset_index()
    out["rate"] = out.n_present / out.n_labeled.where(out.n_labeled > 0)
    return out


def pd_selection(samples: pd.DataFrame, au: pd.DataFrame | None = None) -> pd.DataFrame:
    keep = (samples.dataset == "rafdb") & (samples.split == "train") & samples.emotion.notna()
    return samples.loc[keep, ["sample_id", "shard"]]


@dataclass(frozen=True)
class Question:
    sql: str
    answer: Callable[..., pd.DataFrame]
    samples_cols: tuple[str, ...]
    au_cols: tuple[str, ...] = ()
    keys: tuple[str, ...] = ("dataset", "split")


LABEL_COLS = ("dataset", "split", "emotion", "age_bin", "gender")
QUESTIONS = {
    "task_coverage": Question("SELECT * FROM task_coverage", pd_task_coverage,
                              ("sample_id", "dataset", "split", "emotion", "valence", "arousal", "age", "age_bin",
                               "gender"), ("sample_id", "present")),
    "class_balance": Question("SELECT * FROM class_balance", pd_class_balance, LABEL_COLS,
                              keys=("dataset", "split", "task", "label")),
    "au_occurrence": Question("SELECT * FROM au_occurrence", pd_au_occurrence, ("sample_id", "dataset", "split"),
                              ("sample_id", "au", "present"), keys=("dataset", "split", "au")),
    "selection": Question(SELECTION, pd_selection, ("sample_id", "dataset", "split", "emotion", "shard"),
                          keys=("sample_id",)),
}


def same_answer(duck: pd.DataFrame, pandas: pd.DataFrame, keys: tuple[str, ...]) -> None:
    """Raise unless both frames hold the same rows (order-free), counts exact, floats to 1e-9."""
    def norm(df: pd.DataFrame) -> pd.DataFrame:
        df = df.sort_values(list(keys)).reset_index(drop=True)
        return df.astype({c: "float64" for c in df.columns if pd.api.types.is_numeric_dtype(df[c])}).astype(
            {c: object for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])})
    pd.testing.assert_frame_equal(norm(duck), norm(pandas[list(duck.columns)]), check_exact=False, rtol=1e-9)


def ask_duckdb(db: Path, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchdf()


def timed(fn: Callable[[], pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3, help="DuckDB runs per question (median)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the generated files here (default: a temp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        db, csv, generate_s = generate(workdir, args.samples)
        with catalog.connect(db, read_only=True) as con:
            n_samples, n_au = con.execute(
                "SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM au_labels)").fetchone()

        def read(q: Question) -> tuple[pd.DataFrame, pd.DataFrame | None]:
            au = pd.read_csv(csv["au_labels"], usecols=list(q.au_cols)) if q.au_cols else None
            return pd.read_csv(csv["samples"], usecols=list(q.samples_cols)), au

        results = {}
        for name, q in QUESTIONS.items():
            runs = [timed(lambda: ask_duckdb(db, q.sql)) for _ in range(args.repeats)]
            duck_s, duck = statistics.median(t for t, _ in runs), runs[0][1]
            csv_s, answer = timed(lambda: q.answer(*read(q)))
            frames = read(q)
            memory_s, _ = timed(lambda: q.answer(*frames))
            same_answer(duck, answer, q.keys)
            results[name] = {"duckdb_s": round(duck_s, 4), "pandas_csv_s": round(csv_s, 3),
                             "pandas_memory_s": round(memory_s, 3), "speedup": round(csv_s / duck_s, 1),
                             "speedup_memory": round(memory_s / duck_s, 1), "rows": len(duck), "equal": True}
    print(json.dumps({
        "benchmark": "catalog_queries", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "samples": n_samples, "au_rows": n_au, "generate_s": round(generate_s, 1), "repeats": args.repeats,
        "goal": {"max_s": 1.0, "speedup": 10.0}, "queries": results,
    }))


if __name__ == "__main__":
    main()
