"""The benchmark scripts: their answer checks, table rows, and tiny end-to-end runs (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(script: str, *flags: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), *flags], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_answer_ignores_row_order_but_not_a_wrong_count() -> None:
    same_answer = _module("catalog_queries").same_answer
    duck = pd.DataFrame({"dataset": ["a", "b"], "split": ["train", "test"], "n": [3, 5], "rate": [0.5, None]})
    shuffled = duck.iloc[::-1].astype({"n": "float64"})
    same_answer(duck, shuffled, ("dataset", "split"))
    with pytest.raises(AssertionError):
        same_answer(duck, shuffled.assign(n=[5, 4]), ("dataset", "split"))
    with pytest.raises(AssertionError):
        same_answer(duck, shuffled.assign(rate=[0.0, 0.5]), ("dataset", "split"))  # NULL is no 0


def test_report_rows_judge_each_goal() -> None:
    rows_of = _module("report").rows_of
    catalog = {"samples": 10, "au_rows": 20, "goal": {"max_s": 1.0, "speedup": 10.0}, "queries": {
        "fast": {"duckdb_s": 0.4, "pandas_csv_s": 8.0, "pandas_memory_s": 5.0, "speedup": 20.0, "equal": True},
        "slow": {"duckdb_s": 1.5, "pandas_csv_s": 30.0, "pandas_memory_s": 5.0, "speedup": 20.0, "equal": True},
        "few": {"duckdb_s": 0.1, "pandas_csv_s": 0.5, "pandas_memory_s": 0.1, "speedup": 5.0, "equal": True}}}
    assert [r["met"] for r in rows_of("catalog_queries", catalog)] == [True, False, False]
    loader = {"images": 8, "size": 112, "batch_size": 4, "workers": 2, "same_pixels": True, "goal": 3.0,
              "shards_img_per_s": 2000.0, "imagefolder_img_per_s": 2500.0, "ratio": 0.8,
              "cold_shards_img_per_s": 1400.0, "cold_imagefolder_img_per_s": 400.0, "cold_ratio": 3.5}
    rows = rows_of("loader_throughput", loader)
    assert [(r["ratio"], r["goal"], r["met"]) for r in rows] == [(0.8, 3.0, False), (3.5, 3.0, True)]
    train = {"peft": "lora", "backbone": "b", "image_size": 64, "batch_size": 8, "precision": "fp32",
             "loader_img_per_s": 95.0, "in_memory_img_per_s": 100.0, "ratio": 0.95, "goal": 0.9}
    assert rows_of("train_throughput", train)[0]["met"]


@pytest.mark.slow
def test_catalog_queries_tiny(tmp_path: Path) -> None:
    out = _run("catalog_queries.py", "--samples", "3000", "--repeats", "1", "--workdir", str(tmp_path))
    # 3000 samples: bp4d 1260 x 23 AUs + disfa 450 x 12 + casme2 18 x 13
    assert (out["samples"], out["au_rows"]) == (3000, 1260 * 23 + 450 * 12 + 18 * 13)
    assert set(out["queries"]) == {"task_coverage", "class_balance", "au_occurrence", "selection"}
    for q in out["queries"].values():
        assert q["equal"] is True and q["rows"] > 0
        assert {"duckdb_s", "pandas_csv_s", "pandas_memory_s", "speedup", "speedup_memory"} <= set(q)
    assert {"samples.csv", "au_labels.csv", "catalog.duckdb"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_loader_throughput_tiny() -> None:
    out = _run("loader_throughput.py", "--images", "40", "--shard-samples", "10", "--batch-size", "8",
               "--repeats", "1", "--workers", "0")
    assert out["same_pixels"] is True and out["images"] == 40 and out["shards"] >= 4
    for key in ("shards_img_per_s", "imagefolder_img_per_s", "cold_shards_img_per_s", "cold_imagefolder_img_per_s",
                "decode_img_per_s"):
        assert out[key] > 0
    assert out["ratio"] == pytest.approx(out["shards_img_per_s"] / out["imagefolder_img_per_s"], abs=0.02)


@pytest.mark.slow
def test_report_writes_table_and_chart(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "report.py"), "--quick", "--only", "catalog_queries",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["short"] for r in results["rows"]] == [f"catalog {q}" for q in
                                                    ("task_coverage", "class_balance", "au_occurrence", "selection")]
    assert results["machine"]["cores"] >= 1 and not results["errors"]
    table = (tmp_path / "results.md").read_text()
    assert table.count("| catalog `") == 4 and "| benchmark | pipeline | baseline | ratio | goal | met? |" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
