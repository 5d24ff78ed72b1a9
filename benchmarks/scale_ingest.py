"""Ingest at scale: the real `fer ingest` command at two sizes, its marginal rate and memory per extra sample.

What users run is timed: `fer ingest DATASET RAW_ROOT --out OUT` as a subprocess (default runner:
the Prefect flow on an ephemeral server; `--runner none` for the plain thread path), each size into
a fresh output folder, on generated raw data in two native layouts:

- `csv`: FER2013's `fer2013.csv` (emotion,pixels,Usage; 48x48 grey pixel strings), adapter `fer2013`;
- `loose`: RAF-DB basic, aligned release only (`Image/aligned/<split>_NNNNN_aligned.jpg` 100x100 JPEGs
  + `EmoLabel/list_patition_label.txt`), adapter `rafdb`; with no original images and no manual
  landmarks, `--detector auto` takes the plain-resize path for both layouts (no face detector),
  so the rate is about decoding, resizing to 224 px and JPEG encoding.

Each size runs `--repeats` times (default 3), in rounds of every size in turn, and its median run
(by wall time) counts: this machine's speed drifts within minutes, and one slow spell on one 100k run
moved the ratio from 0.86 to 0.61 between two otherwise equal runs of this benchmark (2026-12-02).
Per run: wall seconds of the `fer` process (start to exit, Python start-up and Prefect's server
start-up included) and its peak RSS, sampled every `--interval` s, alone (plus the kernel's own
high-water mark, VmHWM) and summed over its process tree (the ephemeral Prefect server is a child).
Two sizes N1 < N2 give the marginal rate (N2-N1)/(t2-t1), which leaves the fixed costs out (they
are reported as the intercept `fixed_s`), and the RSS slope (rss2-rss1)/(N2-N1) in bytes per extra
sample. Every run must account for its rows: the line `N rows read = S samples + R rejects` must
say S == N (the generated rows are all good) and the catalog must hold N samples, so a broken run
cannot pass for a fast one.

Beside it, on the same generated rows, a bare single-core loop (cv2 with one thread, in this
process) does the minimum work: CSV: csv-read the row, parse the pixel string (np.fromstring) ->
uint8 48x48 -> grey to RGB -> resize to 224 (cubic, as ingest upscales) -> JPEG quality 95; loose:
read bytes -> decode (cv2) -> resize to 224 -> JPEG quality 95. No hashing, no labels, no writing.
It times `--bare-rows` rows after a short warm-up, before each `fer ingest` run and after the last;
bare = the median of those. ratio = marginal / bare: with one core the bare loop is the floor, and an
ingest that uses more cores than one can pass 1. Measured around the runs, not once: this machine's
speed drifts within minutes (one bare loop, 5000 rows, gave 1411, 1666 and 2112 rows/s on three
benchmark runs of one day).

Goals: peak RSS slope <= 2048 bytes per extra sample (the larger of the fer process's and its
tree's slope), and ratio >= 0.8. With more than two sizes the goals are judged on the two largest;
every consecutive pair is reported. Prints progress and the goals to stderr, one JSON line on stdout.

Each run gets a fresh, isolated PREFECT_HOME (so both sizes pay the same server start-up and
database creation) unless PREFECT_API_URL is set, in which case that server is used. A run whose
process tree exceeds `--max-rss-gib` (default 85 % of RAM) is killed and reported as a failure:
at the 22-29 KB per sample the Prefect flow path took when this was written, `--million` would
need more than 24 GiB.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from fer_cli.env import OFFLINE_ENV

FER_SIDE = 48
RAF_SIDE = 100
CROP = 224
QUALITY = 95  # what ingest writes
RAW_QUALITY = 90  # the generated RAF-DB JPEGs
N_BASES = 32  # distinct base faces; every row also carries its own index in its pixels
CHUNK = 2000  # rows per generator chunk (and per pool task)
USAGES = ("Training", "PublicTest", "PrivateTest")
USAGE_P = (0.8, 0.1, 0.1)  # FER2013's proportions, about
GOAL_RSS_SLOPE_B = 2048.0
GOAL_RATIO = 0.8
SUMMARY = re.compile(r"(\d+)\s+rows\s+read\s*=\s*(\d+)\s+samples\s*\+\s*(\d+)\s+rejects")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- generators


@functools.cache
def bases(seed: int) -> tuple[np.ndarray, ...]:
    """N_BASES real face photos (scikit-image's astronaut, shifted, scaled, lit and noised per base),
    100x100 RGB uint8; deterministic in `seed`."""
    import skimage.data

    photo = skimage.data.astronaut()
    rng = np.random.default_rng([seed, 0])
    out = []
    for _ in range(N_BASES):
        dx, dy = rng.integers(-20, 21, 2)
        side = int(rng.integers(170, 231))
        y0, x0 = 30 + int(dy), 125 + int(dx)
        crop = photo[y0:y0 + side, x0:x0 + side].astype(np.float32)
        crop = crop * rng.uniform(0.8, 1.2) + rng.normal(0.0, 4.0, crop.shape)
        out.append(cv2.resize(np.clip(crop, 0, 255).astype(np.uint8), (RAF_SIDE, RAF_SIDE),
                              interpolation=cv2.INTER_AREA))
    return tuple(out)


@functools.cache
def fer_tails(seed: int) -> tuple[str, ...]:
    """Each base as a 48x48 grey pixel string without its first 4 values (those carry the row index)."""
    tails = []
    for img in bases(seed):
        grey = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (FER_SIDE, FER_SIDE), interpolation=cv2.INTER_AREA)
        tails.append(" ".join(map(str, grey.reshape(-1)[4:].tolist())))
    return tuple(tails)


def _chunk_rng(seed: int, layout: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1 if layout == "csv" else 2, chunk])


def write_fer2013(root: Path, n: int, seed: int = 0) -> Path:
    """`root/fer2013.csv` with `n` rows, written in chunks (memory stays at one chunk). Row i is base
    i % 32 with its first 4 pixels set to i's 4 bytes, so no two rows have the same pixels."""
    root.mkdir(parents=True, exist_ok=True)
    tails = fer_tails(seed)
    path = root / "fer2013.csv"
    with open(path, "w", newline="") as f:
        f.write("emotion,pixels,Usage\n")
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(n, start + CHUNK)
            rng = _chunk_rng(seed, "csv", c)
            emotions = rng.integers(0, 7, stop - start)
            usages = rng.choice(3, stop - start, p=USAGE_P)
            f.write("".join(
                f"{e},{i >> 24 & 255} {i >> 16 & 255} {i >> 8 & 255} {i & 255} {tails[i % N_BASES]},{USAGES[u]}\n"
                for i, e, u in zip(range(start, stop), emotions.tolist(), usages.tolist())))
    return path


def raf_name(i: int) -> str:
    """Row i's image name as the label file lists it: every 5th row is a test image."""
    return f"{'test' if i % 5 == 4 else 'train'}_{i + 1:05d}.jpg"


def raf_image(i: int, seed: int) -> bytes:
    """Row i's 100x100 JPEG: base i % 32 with four 8x8 blocks (one JPEG block each) whose grey levels
    spell i in base 64, so every file differs in its pixels and its bytes. PIL, not cv2, encodes: the
    writers are forked, and cv2 in a child forked after the parent ran its thread pool can hang."""
    img = bases(seed)[i % N_BASES].copy()
    for j in range(4):
        img[:8, 8 * j:8 * j + 8] = (i // 64 ** j) % 64 * 4
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=RAW_QUALITY)
    return buf.getvalue()


def _write_raf_chunk(job: tuple[str, int, int, int]) -> int:
    folder, start, stop, seed = job
    for i in range(start, stop):
        with open(os.path.join(folder, raf_name(i)[:-4] + "_aligned.jpg"), "wb") as f:
            f.write(raf_image(i, seed))
    return stop - start


def write_rafdb(root: Path, n: int, seed: int = 0, processes: int | None = None) -> Path:
    """RAF-DB basic aligned release of `n` images under `root` (Image/aligned/ + EmoLabel/), images
    written by a pool of `processes` (default: the cores), labels 1..7 from a seeded generator."""
    aligned = root / "Image" / "aligned"
    aligned.mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    with open(label_file, "w") as f:
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(n, start + CHUNK)
            labels = _chunk_rng(seed, "loose", c).integers(1, 8, stop - start)
            f.write("".join(f"{raf_name(i)} {v}\n" for i, v in zip(range(start, stop), labels.tolist())))
    bases(seed)  # made once here; forked workers inherit it
    jobs = [(str(aligned), start, min(n, start + CHUNK), seed) for start in range(0, n, CHUNK)]
    processes = processes or min(2, os.cpu_count() or 1)
    if processes > 1 and len(jobs) > 1:
        with get_context("fork").Pool(processes) as pool:
            for _ in pool.imap_unordered(_write_raf_chunk, jobs):
                pass
    else:
        for job in jobs:
            _write_raf_chunk(job)
    return label_file


LAYOUTS = {  # layout -> (adapter, description, writer)
    "csv": ("fer2013", "FER2013 CSV (48x48 grey pixel strings)", write_fer2013),
    "loose": ("rafdb", "RAF-DB aligned (100x100 JPEG files)", write_rafdb),
}


# ---------------------------------------------------------------- the bare loop


def _csv_rows(root: Path) -> Iterator[str]:
    with open(root / "fer2013.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            yield row[1]


def _raf_paths(root: Path) -> Iterator[Path]:
    aligned = root / "Image" / "aligned"
    with open(root / "EmoLabel" / "list_patition_label.txt") as f:
        for line in f:
            yield aligned / (line.split()[0][:-4] + "_aligned.jpg")


def bare_rate(layout: str, root: Path, n: int, warmup: int = 50) -> tuple[float, int, float]:
    """(rows/s, rows timed, CPU seconds a row) of the bare single-core loop over the first rows of `root`."""
    cv2.setNumThreads(1)
    params = [cv2.IMWRITE_JPEG_QUALITY, QUALITY]

    def one_csv(pixels: str) -> None:
        grey = np.fromstring(pixels, dtype=np.uint8, sep=" ").reshape(FER_SIDE, FER_SIDE)  # 5x np.array(split())
        rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
        cv2.imencode(".jpg", cv2.resize(rgb, (CROP, CROP), interpolation=cv2.INTER_CUBIC), params)

    def one_file(path: Path) -> None:
        img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        cv2.imencode(".jpg", cv2.resize(img, (CROP, CROP), interpolation=cv2.INTER_CUBIC), params)

    one, rows = (one_csv, _csv_rows(root)) if layout == "csv" else (one_file, _raf_paths(root))
    for _, item in zip(range(warmup), rows):
        one(item)
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _, item in zip(range(n), rows):
        one(item)
        done += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if done == 0:
        raise RuntimeError(f"bare loop over {root}: no rows after the {warmup} warm-up rows")
    return done / elapsed, done, cpu / done


# ---------------------------------------------------------------- one `fer ingest` run


def _hwm(pid: int) -> int:
    """The kernel's peak RSS of a process (VmHWM), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children and theirs (`fer` and the server it ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_fer(cmd: list[str], env: dict[str, str], logs: Path, interval: float, max_rss: int,
            timeout: float) -> dict[str, Any]:
    """Run the command, sampling its memory; wall and CPU seconds, peaks, exit status and output."""
    import psutil

    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
        start, cpu = time.perf_counter(), _children_cpu()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group: killable as a whole
        try:
            me = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            me = None
        peak_fer = peak_tree = hwm = 0
        samples = 0
        seen: dict[int, psutil.Process] = {}
        killed = None
        try:
            while True:
                if me is not None:
                    try:
                        rss = me.memory_info().rss
                        hwm = max(hwm, _hwm(proc.pid))
                        tree = rss
                        for child in me.children(recursive=True):
                            seen.setdefault(child.pid, child)
                            try:
                                tree += child.memory_info().rss
                            except psutil.Error:
                                pass
                        peak_fer, peak_tree = max(peak_fer, rss), max(peak_tree, tree)
                        samples += 1
                    except psutil.Error:
                        pass
                if peak_tree > max_rss:
                    killed = f"killed: process tree RSS {peak_tree / 2**30:.1f} GiB > --max-rss-gib"
                elif time.perf_counter() - start > timeout:
                    killed = f"killed: still running after --timeout {timeout:g} s"
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                try:
                    proc.wait(timeout=interval)
                    break
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:  # interrupted: leave no ingest running behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    leftover = 0
    for p in seen.values():  # children of our child that outlived it (a server left behind) must not skew the next run
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                leftover += 1
        except psutil.Error:
            pass
    stdout = ANSI.sub("", (logs / "stdout.txt").read_text(errors="replace"))
    stderr = ANSI.sub("", (logs / "stderr.txt").read_text(errors="replace"))
    return {"wall_s": wall, "cpu_s": cpu, "exit": proc.returncode, "killed": killed, "peak_rss_fer": max(peak_fer, hwm),
            "peak_rss_fer_sampled": peak_fer, "peak_rss_tree": max(peak_tree, hwm), "rss_samples": samples,
            "leftover_processes": leftover, "stdout": stdout, "stderr": stderr}


def catalog_samples(out: Path, dataset: str) -> int:
    """Samples of `dataset` in OUT/catalog.duckdb (what a user would query afterwards)."""
    import duckdb

    with duckdb.connect(str(out / "catalog.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*) FROM samples WHERE dataset = ?", [dataset]).fetchone()[0]


def parse_summary(text: str) -> tuple[int, int, int] | None:
    """(rows read, samples, rejects) from `fer ingest`'s last summary line, whatever the wrapping."""
    found = SUMMARY.findall(" ".join(text.split()))
    return tuple(int(v) for v in found[-1]) if found else None


def fer_env(prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    if not env.get("PREFECT_API_URL"):
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(prefect_home)
        env.pop("PREFECT_PROFILES_PATH", None)
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env["COLUMNS"] = "1000"  # rich wraps at 80 columns when not on a terminal
    env["NO_COLOR"] = "1"
    return env


def fer_command(spec: str | None) -> list[str]:
    """`--fer` as given, else the `fer` beside this interpreter (the project's venv), else on PATH."""
    if spec:
        return shlex.split(spec)
    beside = Path(sys.executable).parent / "fer"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("fer")
    if not found:
        raise SystemExit("no `fer` command beside this Python or on PATH: install the project or pass --fer")
    return [found]


# ---------------------------------------------------------------- figures


def pair_figures(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Marginal rate, fixed cost and RSS slopes between two runs of sizes a['rows'] < b['rows']."""
    dn, dt = b["rows"] - a["rows"], b["wall_s"] - a["wall_s"]
    marginal = dn / dt if dt > 0 else None
    return {
        "sizes": [a["rows"], b["rows"]],
        "marginal_rows_per_s": None if marginal is None else round(marginal, 1),
        "marginal_cpu_ms_per_row": (round(1000 * (b["cpu_s"] - a["cpu_s"]) / dn, 3)
                                    if "cpu_s" in a and "cpu_s" in b else None),
        "fixed_s": None if marginal is None else round(a["wall_s"] - a["rows"] / marginal, 2),
        "rss_slope_fer_b": round((b["peak_rss_fer_b"] - a["peak_rss_fer_b"]) / dn, 1),
        "rss_slope_tree_b": round((b["peak_rss_tree_b"] - a["peak_rss_tree_b"]) / dn, 1),
    }


def judge(pair: dict[str, Any], bare: float, bare_cpu_ms: float | None = None) -> dict[str, Any]:
    """The goals on one pair of sizes; `cpu_ratio` (bare CPU a row / the ingest's marginal CPU a row,
    1 = no work beyond the bare loop's) is reported beside them: other load on the machine hardly moves it."""
    marginal = pair["marginal_rows_per_s"]
    ratio = None if marginal is None else round(marginal / bare, 3)
    slope = max(pair["rss_slope_fer_b"], pair["rss_slope_tree_b"])
    cpu = pair.get("marginal_cpu_ms_per_row")
    return {
        "ratio": ratio,
        "cpu_ratio": round(bare_cpu_ms / cpu, 3) if bare_cpu_ms and cpu and cpu > 0 else None,
        "rss_slope": {"value_b": slope, "max_b": GOAL_RSS_SLOPE_B, "met": slope <= GOAL_RSS_SLOPE_B},
        "rate": {"value": ratio, "min_ratio": GOAL_RATIO, "met": ratio is not None and ratio >= GOAL_RATIO},
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cores": os.cpu_count(), "cpu": cpu, "arch": platform.machine(), "ram_gib": round(ram / 2**30, 1),
            "python": platform.python_version(), "load_average_start": round(os.getloadavg()[0], 2)}


def code_version() -> dict[str, Any]:
    """The commit of the checkout this script sits in, and whether it has uncommitted changes."""
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parent)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- main


def run_once(layout: str, dataset: str, n: int, raw: Path, raw_bytes: int, repeat: int, args: argparse.Namespace,
             fer: list[str], work: Path) -> dict[str, Any]:
    """One `fer ingest` of `raw` into a fresh output folder and a fresh Prefect home; its figures."""
    out = work / f"out_{layout}_{n}_{repeat}"
    cmd = [*fer, "ingest", dataset, str(raw), "--out", str(out), "--runner", args.runner, *args.ingest_args]
    got = run_fer(cmd, fer_env(work / f"prefect_{layout}_{n}_{repeat}"), work / f"logs_{layout}_{n}_{repeat}",
                  args.interval, int(args.max_rss_gib * 2**30), args.timeout)
    summary = parse_summary(got["stdout"]) or parse_summary(got["stderr"])
    if got["killed"] or got["exit"] != 0 or summary is None:
        tail = "\n".join((got["stderr"] + got["stdout"]).strip().splitlines()[-25:])
        why = got["killed"] or f"exit {got['exit']}" + ("" if summary else ", no 'rows read' line")
        raise RuntimeError(f"`{shlex.join(cmd)}` failed ({why}) after {got['wall_s']:.1f} s, "
                           f"peak tree RSS {got['peak_rss_tree'] / 2**20:.0f} MiB:\n{tail}")
    rows_read, n_samples, n_rejects = summary
    in_catalog = catalog_samples(out, dataset)
    if (rows_read, n_samples, n_rejects, in_catalog) != (n, n, 0, n):
        raise RuntimeError(f"{dataset} at {n} rows: fer says {rows_read} rows read = {n_samples} samples + "
                           f"{n_rejects} rejects, catalog has {in_catalog} samples; expected {n} good rows")
    run = {"rows": n, "wall_s": round(got["wall_s"], 2), "cpu_s": round(got["cpu_s"], 2),
           "load_average": round(os.getloadavg()[0], 2), "rows_per_s": round(n / got["wall_s"], 1),
           "peak_rss_fer_b": got["peak_rss_fer"], "peak_rss_tree_b": got["peak_rss_tree"],
           "peak_rss_fer_mib": round(got["peak_rss_fer"] / 2**20, 1),
           "peak_rss_tree_mib": round(got["peak_rss_tree"] / 2**20, 1),
           "rss_samples": got["rss_samples"], "samples": n_samples, "rejects": n_rejects,
           "catalog_samples": in_catalog, "raw_mib": round(raw_bytes / 2**20, 1),
           "out_mib": round(dir_bytes(out) / 2**20, 1), "leftover_processes": got["leftover_processes"]}
    log(f"{layout} {n:,}: fer ingest {run['wall_s']:.1f} s ({run['cpu_s']:.1f} s CPU, load "
        f"{run['load_average']}) = {run['rows_per_s']:.0f} rows/s, peak RSS "
        f"{run['peak_rss_fer_mib']:.0f} MiB (tree {run['peak_rss_tree_mib']:.0f} MiB), {n_samples} samples")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return run


def bench_layout(layout: str, args: argparse.Namespace, fer: list[str], work: Path) -> dict[str, Any]:
    dataset, description, writer = LAYOUTS[layout]
    result: dict[str, Any] = {"dataset": dataset, "layout": description, "runs": []}
    bare: list[tuple[float, int, float]] = []

    def measure_bare(raw: Path, when: str) -> None:
        """The bare loop on `raw` (its files in the page cache as fer's are), `--bare-repeats` times."""
        got = [bare_rate(layout, raw, args.bare_rows) for _ in range(args.bare_repeats)]
        bare.extend(got)
        log(f"{layout}: bare loop {when}: {', '.join(f'{r:.0f}' for r, _, _ in got)} rows/s ({got[0][1]} rows, 1 core)")

    raws: dict[int, tuple[Path, int]] = {}
    generate_s: dict[int, float] = {}
    for n in args.sizes:
        raw = work / f"raw_{layout}_{n}"
        start = time.perf_counter()
        writer(raw, n, args.seed)
        generate_s[n] = time.perf_counter() - start
        raws[n] = raw, dir_bytes(raw)
        log(f"{layout} {n:,}: generated {raws[n][1] / 2**20:.0f} MiB in {generate_s[n]:.1f} s")
    # Rounds of every size in turn, so a slow spell of this machine falls on both sizes alike; each
    # size's figures are its median run (by wall time).
    tries: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    for r in range(args.repeats):
        for n in args.sizes:
            raw, raw_bytes = raws[n]
            measure_bare(raw, f"before the {n:,}-row run ({r + 1}/{args.repeats})")
            tries[n].append(run_once(layout, dataset, n, raw, raw_bytes, r, args, fer, work))
    measure_bare(raws[args.sizes[-1]][0], "after the last run")
    for n in args.sizes:
        ranked = sorted(tries[n], key=lambda run: run["wall_s"])
        result["runs"].append({**ranked[(len(ranked) - 1) // 2], "walls_s": [run["wall_s"] for run in tries[n]],
                               "generate_s": round(generate_s[n], 2)})
        if not args.keep:
            shutil.rmtree(raws[n][0], ignore_errors=True)
    # The yardstick: the median of the bare loops around the runs. This machine's speed drifts by up
    # to a third within minutes (the bare loop's CPU time a row went from 0.47 to 0.69 ms between
    # runs), so one measurement before a 10-minute benchmark could put the ratio anywhere.
    result["bare_rows_per_s"] = round(statistics.median(r for r, _, _ in bare), 1)
    result["bare_cpu_ms_per_row"] = round(1000 * statistics.median(c for _, _, c in bare), 3)
    result["bare_rows"] = bare[0][1]
    result["bare_rows_per_s_all"] = [round(r, 1) for r, _, _ in bare]
    runs = result["runs"]
    result["pairs"] = [pair_figures(a, b) for a, b in zip(runs, runs[1:])]
    headline = result["pairs"][-1]  # the two largest sizes
    result.update({k: v for k, v in headline.items() if k != "sizes"}, judged_sizes=headline["sizes"])
    result["goals"] = judge(headline, result["bare_rows_per_s"], result["bare_cpu_ms_per_row"])
    result["ratio"] = result["goals"]["ratio"]
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000], help="rows per run (2 or more)")
    p.add_argument("--million", action="store_true", help="add a 1,000,000-row run (hours and a lot of disk today)")
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--runner", default="local", help="passed to `fer ingest --runner` (local = Prefect flow; none)")
    p.add_argument("--ingest-args", default="", help='more flags for `fer ingest`, e.g. "--workers 2"')
    p.add_argument("--fer", default=None, help="the command to run (default: `fer` beside this Python)")
    p.add_argument("--bare-rows", type=int, default=5000, help="rows the bare loop times")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each size, in rounds of every size (each size's median run counts)")
    p.add_argument("--bare-repeats", type=int, default=1,
                   help="bare loop repeats before each run and after the last (the median of all counts)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between memory samples")
    p.add_argument("--max-rss-gib", type=float, default=None,
                   help="kill a run whose process tree exceeds this (default: 85%% of RAM)")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one run may take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where data goes (default: a temp folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the generated data and outputs (needs --workdir)")
    args = p.parse_args(argv)
    args.sizes = sorted(set(args.sizes + ([1_000_000] if args.million else [])))
    if len(args.sizes) < 2 or args.sizes[0] < 1:
        p.error("--sizes needs two or more different positive sizes")
    if args.repeats < 1:
        p.error("--repeats needs 1 or more")
    if args.keep and not args.workdir:
        p.error("--keep needs --workdir")
    args.ingest_args = shlex.split(args.ingest_args)
    info = machine()
    if args.max_rss_gib is None:
        args.max_rss_gib = round(0.85 * info["ram_gib"], 1)
    fer = fer_command(args.fer)
    results: dict[str, Any] = {
        "benchmark": "scale_ingest", "machine": info, "cores": info["cores"], "sizes": args.sizes,
        "runner": args.runner, "code": code_version(),
        "command": shlex.join([*fer, "ingest", "DATASET", "RAW_ROOT", "--out", "OUT", "--runner", args.runner,
                               *args.ingest_args]),
        "prefect": (f"server at {os.environ['PREFECT_API_URL']}" if os.environ.get("PREFECT_API_URL")
                    else "ephemeral server, fresh PREFECT_HOME per run"),
        "goal": {"rss_slope_b": GOAL_RSS_SLOPE_B, "ratio": GOAL_RATIO}, "layouts": {},
    }
    start = time.perf_counter()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scale_ingest_", dir=args.workdir) as tmp:
        work = args.workdir / "scale_ingest" if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for layout in args.layouts:
            try:
                results["layouts"][layout] = bench_layout(layout, args, fer, work)
            except RuntimeError as err:
                log(f"scale_ingest, {layout}: {err}")
                sys.exit(1)
    results["total_s"] = round(time.perf_counter() - start, 1)
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    for layout, r in results["layouts"].items():
        g = r["goals"]
        a, b = r["judged_sizes"]
        log(f"{layout} ({r['dataset']}) {a:,} -> {b:,} rows: marginal {r['marginal_rows_per_s']} rows/s, "
            f"fixed {r['fixed_s']} s, bare {r['bare_rows_per_s']} rows/s")
        log(f"  goal RSS slope <= {GOAL_RSS_SLOPE_B:.0f} B/sample: {g['rss_slope']['value_b']:.0f} "
            f"(fer {r['rss_slope_fer_b']:.0f}, tree {r['rss_slope_tree_b']:.0f}) "
            f"{'PASS' if g['rss_slope']['met'] else 'FAIL'}")
        log(f"  goal marginal >= {GOAL_RATIO} x bare: {g['ratio']} {'PASS' if g['rate']['met'] else 'FAIL'} "
            f"(CPU a row: {r['marginal_cpu_ms_per_row']} ms, bare {r['bare_cpu_ms_per_row']} ms, "
            f"cpu_ratio {g['cpu_ratio']})")
    results["all_met"] = all(r["goals"]["rss_slope"]["met"] and r["goals"]["rate"]["met"]
                             for r in results["layouts"].values())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
