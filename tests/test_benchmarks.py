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
    clips = {"clips": 48, "frames_per_clip": 48, "runner": "local", "pipeline_frames_per_s": 20.0,
             "bare_frames_per_s": 30.0, "ratio": 0.67, "cpu_ratio": 0.8, "goal": 0.8, "base_clips": 12,
             "marginal_ratio": 0.85, "marginal_cpu_ratio": 0.9}
    assert [(r["ratio"], r["met"]) for r in rows_of("clip_ingest", clips)] == [(0.85, True)]  # start-up left out
    assert not rows_of("clip_ingest", {**clips, "marginal_ratio": 0.7})[0]["met"]


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


# ---------------------------------------------------------------- scale_ingest: `fer ingest` at two sizes


def test_scale_ingest_generators_are_deterministic_and_every_row_differs(tmp_path: Path) -> None:
    import hashlib

    scale = _module("scale_ingest")
    a, b = scale.write_fer2013(tmp_path / "a", 130), scale.write_fer2013(tmp_path / "b", 130)
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text().splitlines()
    assert lines[0] == "emotion,pixels,Usage" and len(lines) == 131
    rows = [line.split(",") for line in lines[1:]]
    assert all(len(r) == 3 and r[0] in "0123456" and r[2] in scale.USAGES for r in rows)
    assert all(len(r[1].split()) == 48 * 48 and 0 <= min(map(int, r[1].split())) for r in rows)
    assert len({r[1] for r in rows}) == 130 and {r[2] for r in rows} == set(scale.USAGES)

    for root in (tmp_path / "raf1", tmp_path / "raf2"):
        scale.write_rafdb(root, 70, processes=1 if root.name == "raf1" else 2)
    labels = (tmp_path / "raf1" / "EmoLabel" / "list_patition_label.txt").read_text()
    assert labels == (tmp_path / "raf2" / "EmoLabel" / "list_patition_label.txt").read_text()
    names = [line.split() for line in labels.splitlines()]
    assert len(names) == 70 and all(n.split("_")[0] in ("train", "test") and 1 <= int(v) <= 7 for n, v in names)
    files = sorted((tmp_path / "raf1" / "Image" / "aligned").iterdir())
    assert [f.name for f in files] == sorted(n[:-4] + "_aligned.jpg" for n, _ in names)
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert len(digests) == 70
    assert digests == {hashlib.sha256(f.read_bytes()).hexdigest()
                       for f in (tmp_path / "raf2" / "Image" / "aligned").iterdir()}
    from PIL import Image

    with Image.open(files[0]) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (100, 100), "RGB")
    # the block stamp survives JPEG: rows 64 apart with the same base still decode differently
    assert scale.raf_image(0, 0) != scale.raf_image(64 * 32, 0)


def test_scale_ingest_figures_and_summary_line() -> None:
    scale = _module("scale_ingest")
    # the line as rich prints it, wrapped anywhere
    assert scale.parse_summary("rafdb: 900 rows read = 900\nsamples + 0 rejects -> /x/catalog.duckdb") == (900, 900, 0)
    assert scale.parse_summary("Traceback ...") is None
    a = {"rows": 1000, "wall_s": 12.0, "peak_rss_fer_b": 500 * 2**20, "peak_rss_tree_b": 700 * 2**20}
    b = {"rows": 3000, "wall_s": 16.0, "peak_rss_fer_b": 500 * 2**20 + 2000 * 3000, "peak_rss_tree_b": 700 * 2**20}
    pair = scale.pair_figures(a, b)
    assert pair["marginal_rows_per_s"] == 500.0 and pair["fixed_s"] == 10.0
    assert (pair["rss_slope_fer_b"], pair["rss_slope_tree_b"]) == (3000.0, 0.0)
    goals = scale.judge(pair, bare=600.0)
    assert goals["ratio"] == pytest.approx(0.833, abs=1e-3) and goals["rate"]["met"]
    assert goals["rss_slope"]["value_b"] == 3000.0 and not goals["rss_slope"]["met"]  # the larger slope counts
    stalled = scale.pair_figures(a, {**b, "wall_s": 11.0})  # t2 <= t1: no rate, never a pass
    assert stalled["marginal_rows_per_s"] is None and not scale.judge(stalled, 600.0)["rate"]["met"]

    layout = {"layout": "FER2013 CSV", "judged_sizes": [1000, 3000], "runs": [
        {"rows_per_s": 83.3, "peak_rss_tree_mib": 700.0}, {"rows_per_s": 187.5, "peak_rss_tree_mib": 700.0}],
        **{k: v for k, v in pair.items() if k != "sizes"}, "bare_rows_per_s": 600.0, "goals": goals,
        "ratio": goals["ratio"]}
    rows = _module("report").rows_of("scale_ingest", {"runner": "local", "layouts": {"csv": layout}})
    assert [(r["short"], r["met"]) for r in rows] == [("scale ingest csv, rate", True),
                                                      ("scale ingest csv, memory", False)]
    assert rows[1]["ratio"] == pytest.approx(2048 / 3000, abs=1e-3)


def _scale_ingest_tiny(layout: str, repeats: int, *flags: str) -> dict:
    out = _run("scale_ingest.py", "--layouts", layout, "--sizes", "300", "900", "--bare-rows", "200",
               "--repeats", str(repeats), *flags)
    assert out["benchmark"] == "scale_ingest" and out["sizes"] == [300, 900] and out["cores"] >= 1
    r = out["layouts"][layout]
    assert [run["rows"] for run in r["runs"]] == [300, 900]
    for run in r["runs"]:
        assert run["samples"] == run["catalog_samples"] == run["rows"] and run["rejects"] == 0
        assert run["wall_s"] > 0 and run["rows_per_s"] > 0 and run["peak_rss_fer_mib"] > 50
        assert run["peak_rss_tree_mib"] >= run["peak_rss_fer_mib"] - 1 and run["rss_samples"] > 0
        walls = sorted(run["walls_s"])  # every run of the size; the median one (the lower of two) counts
        assert len(walls) == repeats and run["wall_s"] == walls[(repeats - 1) // 2]
    assert r["bare_rows_per_s"] > 0 and r["bare_rows"] == 200
    bare = sorted(r["bare_rows_per_s_all"])  # before each run and after the last; the median counts
    assert len(bare) == 2 * repeats + 1 and r["bare_rows_per_s"] == bare[repeats]
    assert {"marginal_rows_per_s", "fixed_s", "rss_slope_fer_b", "rss_slope_tree_b", "ratio", "goals"} <= set(r)
    if r["marginal_rows_per_s"] is not None:  # 600 extra rows can drown in start-up noise: no sign asserted
        assert r["marginal_rows_per_s"] > 0 and r["ratio"] > 0
    assert {"rss_slope", "rate"} <= set(r["goals"]) and isinstance(out["all_met"], bool)
    return out


@pytest.mark.slow
def test_scale_ingest_tiny_csv_prefect_flow() -> None:
    """About 90 s on 2 cores: each run starts an ephemeral Prefect server."""
    out = _scale_ingest_tiny("csv", 1)
    assert out["runner"] == "local" and out["layouts"]["csv"]["dataset"] == "fer2013"


def test_scale_ingest_tiny_loose_files_plain_runner() -> None:
    """Fast (about 20 s on 2 cores): no Prefect server to start; two rounds of the sizes."""
    out = _scale_ingest_tiny("loose", 2, "--runner", "none")
    assert out["runner"] == "none" and out["layouts"]["loose"]["dataset"] == "rafdb"
