"""`make bench`: every benchmark in one run, side by side -> results.json, results.md (table), results.png (chart).

Each benchmark script runs as its own process (a fresh interpreter, nothing shared) and prints one
JSON line; this collects the lines, turns each into table rows (pipeline figure, baseline figure,
ratio, goal, met?) and writes them with a description of the machine, including its load average
before and after, since other work on the machine skews every figure.

Sizes are chosen for about 10 minutes on 2 cores, plus scale_ingest's twelve real `fer ingest` runs (25k
and 100k rows of a CSV and a loose-file layout, three rounds): about 12 more on 2026-12-02. `--quick` runs
tiny sizes (a smoke test, one round) and
`--args NAME="..."` passes more flags to one script, e.g. `--args catalog_queries="--samples 5000000"`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# script name -> (flags of the full run, flags of a --quick run)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "catalog_queries": ([], ["--samples", "5000", "--repeats", "1"]),
    "loader_throughput": ([], ["--images", "96", "--shard-samples", "24", "--batch-size", "16", "--repeats", "1"]),
    # shards vs loose JPEGs over HTTP from 127.0.0.1 with 20 ms per request, as from an object store
    "loader_remote": ([], ["--images", "64", "--shard-samples", "16", "--batch-size", "8", "--latency-ms", "5",
                           "--repeats", "1"]),
    # 4000 images: each ingest pays ~0.25 s once (listing, catalog swap), 40 % of a 1000-image aligned run
    "ingest_throughput": (["--images", "4000", "--clips", "16"], ["--images", "8", "--clips", "2"]),
    "train_throughput": ([], ["--backbone", "vit-tiny-test", "--image-size", "32", "--shard-size", "112",
                              "--batch-size", "4", "--steps", "2", "--workers", "1"]),
    # `fer ingest` as users run it (Prefect flow), 25k and 100k rows of a CSV and a loose-file layout
    "scale_ingest": ([], ["--sizes", "300", "900", "--bare-rows", "300", "--repeats", "1"]),
    # `fer ingest` of in-the-wild clips as users run it: every frame detected, tracks linked, T aligned
    "clip_ingest": (["--clips", "48", "--frames", "48", "--base-clips", "12"], ["--clips", "2", "--frames", "8"]),
}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "ram_gib": round(ram / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": version("torch"), "duckdb": version("duckdb"), "pandas": version("pandas")}


def run(name: str, flags: list[str]) -> tuple[dict[str, Any], float]:
    """One benchmark script in its own interpreter: its JSON line and the seconds it took."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *flags], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise RuntimeError(f"{name} {' '.join(flags)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1]), elapsed


def row(short: str, benchmark: str, pipeline: str, baseline: str, ratio: float, goal: float, goal_text: str = "",
        met: bool = True) -> dict[str, Any]:
    """One table row (`short` labels the chart); `met`: the ratio reaches `goal` and the caller's own condition held."""
    return {"short": short, "benchmark": benchmark, "pipeline": pipeline, "baseline": baseline, "ratio": ratio,
            "goal": goal, "goal_text": goal_text or f"≥ {goal:g}", "met": met and ratio >= goal}


def rows_of(name: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one benchmark's JSON line."""
    if name == "catalog_queries":
        goal, size = r["goal"], f"{r['samples']:,} samples, {r['au_rows']:,} AU rows"
        return [row(f"catalog {q}", f"catalog `{q}` ({size})", f"DuckDB {v['duckdb_s']:.3f} s",
                    f"pandas + CSV {v['pandas_csv_s']:.2f} s (in memory {v['pandas_memory_s']:.2f} s)",
                    v["speedup"], goal["speedup"], f"< {goal['max_s']:g} s and ≥ {goal['speedup']:g}x",
                    v["equal"] and v["duckdb_s"] < goal["max_s"])
                for q, v in r["queries"].items()]
    if name == "loader_throughput":
        what = f"{r['images']} × {r['size']} px, batch {r['batch_size']}, {r['workers']} workers"
        goal = f"≥ {r['goal']:g}x"
        return [
            row("loader, warm cache", f"loader: make_loader (shards) vs ImageFolder (loose JPEGs), warm cache, {what}",
                f"{r['shards_img_per_s']:.0f} img/s", f"{r['imagefolder_img_per_s']:.0f} img/s", r["ratio"],
                r["goal"], goal, r["same_pixels"]),
            row("loader, cold-ish", "loader, same, page cache dropped first (cold-ish)",
                f"{r['cold_shards_img_per_s']:.0f} img/s", f"{r['cold_imagefolder_img_per_s']:.0f} img/s",
                r["cold_ratio"], r["goal"], goal),
        ]
    if name == "loader_remote":
        what = (f"{r['images']} × {r['size']} px over HTTP, {r['latency_ms']:g} ms per request, batch {r['batch_size']}, "
                f"{r['workers']} workers")
        return [row("loader, remote", f"loader: make_loader (shard URLs) vs loose JPEGs through fsspec, {what}",
                    f"{r['shards_img_per_s']:.0f} img/s", f"{r['loose_img_per_s']:.0f} img/s", r["ratio"], r["goal"],
                    met=r["read_once"] and r["same_pixels"])]
    if name == "ingest_throughput":
        cases = {"images_detect": ("ingest, images + CenterFace", "img/s", "decode + detect"),
                 "images_aligned": ("ingest, pre-aligned images", "img/s", "decode only"),
                 "clips_detect": ("ingest, clips T=16 + CenterFace", "clips/s", "decode + detect every frame")}
        return [row(label, f"{label} ({r[case]['n']})", f"{r[case]['pipeline_per_s']:g} {unit}",
                    f"{r[case]['bare_per_s']:g} {unit} ({bare})", r[case]["ratio"], r[case]["goal"])
                for case, (label, unit, bare) in cases.items()]
    if name == "train_throughput":
        what = f"{r['peft']} {r['backbone']} @ {r['image_size']} px, batch {r['batch_size']}, {r['precision']}"
        return [row("training input", f"training input, {what}", f"{r['loader_img_per_s']:g} img/s (loader)",
                    f"{r['in_memory_img_per_s']:g} img/s (in-memory tensors)", r["ratio"], r["goal"])]
    if name == "scale_ingest":
        out = []
        for layout, v in r["layouts"].items():
            a, b = v["judged_sizes"]
            what = f"`fer ingest` at scale, {v['layout']}, {a:,} → {b:,} rows, runner {r['runner']}"
            marginal = v["marginal_rows_per_s"]
            rates = ", ".join(f"{run['rows_per_s']:.0f}" for run in v["runs"])
            pipe = (f"{marginal:.0f} rows/s marginal (overall {rates}; fixed {v['fixed_s']:.1f} s)"
                    if marginal is not None else f"no marginal rate (t2 ≤ t1; overall {rates} rows/s)")
            out.append(row(f"scale ingest {layout}, rate", f"{what}: marginal rate", pipe,
                           f"{v['bare_rows_per_s']:.0f} rows/s (bare loop, 1 core)", v["ratio"] or 0.0,
                           v["goals"]["rate"]["min_ratio"]))
            slope, limit = v["goals"]["rss_slope"]["value_b"], v["goals"]["rss_slope"]["max_b"]
            peaks = ", ".join(f"{run['peak_rss_tree_mib']:.0f}" for run in v["runs"])
            out.append(row(f"scale ingest {layout}, memory", f"{what}: peak RSS per extra sample",
                           f"{slope:,.0f} B/sample (peak RSS of the tree {peaks} MiB)", f"goal {limit:,.0f} B/sample",
                           round(limit / max(slope, 1.0), 3), 1.0,
                           f"≤ {limit:,.0f} B/sample (ratio = goal / slope ≥ 1)"))
        return out
    if name == "clip_ingest":
        what = f"`fer ingest` of clips with face tracks, {r['clips']} × {r['frames_per_clip']} frames, runner {r['runner']}"
        whole = (f"{r['pipeline_frames_per_s']:g} vs {r['bare_frames_per_s']:g} frames/s (decode + detect) "
                 f"whole run, ratio {r['ratio']:g}, CPU-seconds ratio {r['cpu_ratio']:g}")
        if "marginal_ratio" not in r:  # --quick: no base run
            return [row("clip ingest, tracks", what, whole, "bare loop", r["ratio"], r["goal"])]
        # judged as scale_ingest is: the clips beyond the first --base-clips, so start-up is out of both sides
        return [row("clip ingest, tracks", f"{what}: marginal, beyond the first {r['base_clips']}", whole,
                    f"marginal CPU-seconds ratio {r['marginal_cpu_ratio']:g}", r["marginal_ratio"], r["goal"])]
    raise ValueError(f"no table rows for {name}")


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = results["load_average"]
    lines = [
        f"Measured {results['date']} on {m['cpu']} ({m['arch']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
        f"{m['os']}), Python {m['python']}, torch {m['torch']}, DuckDB {m['duckdb']}, pandas {m['pandas']}; "
        f"training on {results.get('device', 'n/a')}. Load average (1 min) {load['start']:.1f} before, "
        f"{load['end']:.1f} after the run; `make bench` took {results['total_s']:.0f} s.",
        "",
        "| benchmark | pipeline | baseline | ratio | goal | met? |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['benchmark']} | {r['pipeline']} | {r['baseline']} | {r['ratio']:g} | {r['goal_text']} | "
              f"{'yes' if r['met'] else '**no**'} |" for r in results["rows"]]
    lines += [f"| {name} | failed: {err.splitlines()[0]} | | | | **no** |" for name, err in results["errors"].items()]
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars of each ratio (log scale) with its goal marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["ratio"] for r in rows], color=["tab:green" if r["met"] else "tab:red" for r in rows])
    ax.scatter([r["goal"] for r in rows], y, marker="|", s=400, color="black", zorder=3, label="goal")
    for yi, r in zip(y, rows):
        ax.annotate(f"{r['ratio']:g}", (r["ratio"], yi), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=8)
    ax.set_yticks(y, [r["short"] for r in rows], fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("ratio: pipeline / baseline (higher is better; log scale)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs, figures mean nothing")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument("--args", action="append", default=[], metavar='NAME="FLAGS"', help="more flags for one script")
    p.add_argument("--out", type=Path, default=HERE, help="where results.{json,md,png} go")
    args = p.parse_args()
    extra = {name: shlex.split(flags) for name, flags in (a.split("=", 1) for a in args.args)}
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "quick": args.quick,
                               "load_average": {"start": os.getloadavg()[0]}, "raw": {}, "elapsed_s": {},
                               "rows": [], "errors": {}}
    start = time.perf_counter()
    for name in args.only:
        full, quick = BENCHMARKS[name]
        flags = (quick if args.quick else full) + extra.get(name, [])
        print(f"== {name} {' '.join(flags)}", flush=True)
        try:
            raw, elapsed = run(name, flags)
        except RuntimeError as err:
            print(err, file=sys.stderr, flush=True)
            results["errors"][name] = str(err)
            continue
        print(json.dumps(raw), flush=True)
        results["raw"][name], results["elapsed_s"][name] = raw, round(elapsed, 1)
        results["rows"] += rows_of(name, raw)
        results["device"] = raw.get("device", results.get("device"))
    results["total_s"] = round(time.perf_counter() - start, 1)
    results["load_average"]["end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    if results["rows"]:
        chart(results["rows"], args.out / "results.png")
    print(table)
    sys.exit(1 if results["errors"] else 0)


if __name__ == "__main__":
    main()
