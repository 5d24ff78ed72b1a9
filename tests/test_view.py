"""`fer view`: the offline browser of a selection on real ingested shards (crops, rejects, near-duplicate
groups, charts), thumbnails written once, a large selection paged, and (slow) a real headless Chromium that
renders the tiles without touching the network."""

from __future__ import annotations

import html
import http.server
import io
import json
import math
import re
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_image
from fer_cli.main import app
from fer_data import catalog
from fer_data.audit import audit
from fer_data.browser import CHUNK, PAGE_SIZE, THUMB, build
from fer_data.ingest import ingest
from fer_data.shards import sample_key

# RAF-DB basic layout: train_00003 is test_0001's photo again (a leak across splits); two rejects: a file that
# is not an image, and a photo without a face (its source can be shown).
LABELS = {"train_00001.jpg": 4, "train_00002.jpg": 1, "train_00003.jpg": 7, "test_0001.jpg": 7, "test_0002.jpg": 6,
          "train_00009.jpg": 3, "train_00005.jpg": 5}
SEEDS = {"train_00001.jpg": 1, "train_00002.jpg": 2, "train_00003.jpg": 3, "test_0001.jpg": 3, "test_0002.jpg": 5}


def rows_of(out: Path) -> list[dict]:
    """The grid's rows as the page's data scripts carry them."""
    rows = []
    for script in sorted((out / "rows").glob("*.js")):
        columns, chunk = json.loads("[" + script.read_text().strip()[len("FER.add("):-len(");")] + "]")
        rows += [dict(zip(columns, r)) for r in chunk]
    return rows


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raf") / "RAF-DB"
    base = root / "basic"
    for name, seed in SEEDS.items():
        write_image(base / "Image" / "original" / name, seed=seed)
    (base / "Image" / "original" / "train_00009.jpg").write_bytes(b"<b>not a jpeg</b>")
    Image.new("RGB", (128, 128), (90, 140, 200)).save(base / "Image" / "original" / "train_00005.jpg")
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {v}\n" for n, v in LABELS.items()))
    out = tmp_path_factory.mktemp("out")
    ingest("rafdb", root, out, detector="centerface", size=112)
    audit(out / "catalog.duckdb")
    return out / "catalog.duckdb"


def test_view_pages(catalog_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "view"
    sql = "SELECT sample_id FROM samples WHERE split = 'train' ORDER BY sample_id DESC"
    result = CliRunner().invoke(app, ["view", sql, "--catalog", str(catalog_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["samples"] == 3 and summary["pages"] == 1 and summary["rejects"] == 2
    others = catalog.query(catalog_path, "SELECT count(DISTINCT sample_id) AS n FROM duplicates WHERE split <> 'train' "
                                         "AND group_id IN (SELECT group_id FROM duplicates WHERE split = 'train')").n[0]
    assert others >= 1  # a test crop near-duplicates a train crop: the leak the duplicates page shows
    assert summary["thumbnails_written"] == 3 + others + 1  # 3 crops, their groups' test crops, the reject's photo

    rows = rows_of(out)  # the query's order, its labels
    assert [r["sample_id"] for r in rows] == ["rafdb:train_00003", "rafdb:train_00002", "rafdb:train_00001"]
    assert [(r["emotion"], r["dataset"], r["split"], r["kind"]) for r in rows] == [
        ("neutral", "rafdb", "train", "image"), ("surprise", "rafdb", "train", "image"), ("happiness", "rafdb", "train", "image")]
    pose = catalog.query(catalog_path, "SELECT sample_id, yaw, sharpness, face_coverage FROM samples")
    for r in rows:  # pose and quality to one decimal where the catalog has them; NULL stays absent, never 0
        known = pose[pose.sample_id == r["sample_id"]].iloc[0]
        for name in ("yaw", "sharpness", "face_coverage"):
            assert r[name] == (None if pd.isna(known[name]) else round(float(known[name]), 1))
    for r in rows:  # the thumbnail is the sample's own crop, small
        thumb = Image.open(out / r["thumb"])
        assert thumb.format == "JPEG" and thumb.size == (THUMB, THUMB)
    shard = catalog.query(catalog_path, "SELECT shard FROM samples WHERE sample_id = 'rafdb:train_00002'").shard[0]
    with tarfile.open(catalog_path.parent / shard) as tar:
        crop = Image.open(io.BytesIO(tar.extractfile(f"{sample_key('rafdb:train_00002')}.jpg").read()))
    small = lambda image: np.asarray(image.convert("L").resize((16, 16)), float)  # noqa: E731
    expected = small(crop)
    assert np.abs(small(Image.open(out / rows[1]["thumb"])) - expected).mean() < \
        np.abs(small(Image.open(out / rows[0]["thumb"])) - expected).mean()

    rejects = (out / "rejects.html").read_text()
    shown = re.findall(r'<tr><td>(<img class="thumb"|<span class="none">).*?<td><b>([^<]+)</b>', rejects, re.S)
    assert sorted(shown) == [('<img class="thumb"', "no_face"), ('<span class="none">', "corrupt_image")]
    assert "&lt;b&gt;" not in rejects and "<b>not a jpeg" not in rejects  # the file's bytes are never shown raw
    duplicates = (out / "duplicates.html").read_text()
    group = re.search(r'<section class="group leaks">(.*?)</section>', duplicates, re.S)[1]
    assert "rafdb/test" in group and "rafdb/train" in group and "crosses datasets/splits" in group
    charts = (out / "charts.html").read_text()
    assert "rafdb: emotion" in charts and charts.count("<rect") == 8  # one bar per emotion, zeros included
    for page in out.glob("*.html"):  # everything it loads is a file in the folder
        text = page.read_text()
        assert "Content-Security-Policy" in text
        for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
            assert not re.match(r"[a-z]+:|//", ref) and (out / ref).exists(), (page.name, ref)

    again = build(catalog_path, sql, out)  # thumbnails are written once
    assert again.n_thumbnails == 0 and rows_of(out) == rows


def test_view_mistakes_are_one_line(catalog_path: Path, tmp_path: Path) -> None:
    for sql, message in [("SELECT dataset FROM samples", "must return a sample_id column"),
                         ("DELETE FROM samples", "read-only"),
                         ("SELECT sample_id FROM samples; DROP TABLE samples", "one read-only query")]:
        result = CliRunner().invoke(app, ["view", sql, "--catalog", str(catalog_path), "--out", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output, result.output
    assert catalog.query(catalog_path, "SELECT count(*) AS n FROM samples").n[0] == 5


def test_missing_shards_still_give_a_browser(catalog_path: Path, tmp_path: Path) -> None:
    """Shards not where the catalog says (an empty --root): every page is written, the tiles have no image."""
    result = build(catalog_path, "SELECT sample_id FROM samples", tmp_path / "view", root=tmp_path / "empty")
    assert result.n_samples == 5 and result.n_thumbnails == 1  # only the reject's source, read from the raw root
    assert len(rows_of(tmp_path / "view")) == 5 and (tmp_path / "view" / "duplicates.html").exists()


def synthetic_catalog(folder: Path, n: int, per_shard: int = 5000) -> Path:
    """A catalog of `n` image samples in real tar shards (one small crop each), written directly."""
    pixels = io.BytesIO()
    Image.new("RGB", (112, 112), (150, 110, 90)).save(pixels, "JPEG")
    ids = [f"big:{i:07d}" for i in range(n)]
    shards = []
    for start in range(0, n, per_shard):
        shard = f"shards/big-{start // per_shard:04d}.tar"
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        with tarfile.open(folder / shard, "w") as tar:
            for sample_id in ids[start:start + per_shard]:
                for ext, data in (("jpg", pixels.getvalue()), ("json", json.dumps({"sample_id": sample_id}).encode())):
                    info = tarfile.TarInfo(f"{sample_key(sample_id)}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards += [shard] * len(ids[start:start + per_shard])
    frame = pd.DataFrame({"sample_id": ids, "dataset": "big", "split": ["train", "val", "test"] * (n // 3) + ["train"] * (n % 3),
                          "kind": "image", "source_path": ids, "emotion": [i % 8 for i in range(n)], "shard": shards})
    path = folder / "catalog.duckdb"
    with catalog.connect(path) as con:
        con.register("incoming", frame)
        con.execute(f"INSERT INTO samples ({', '.join(frame.columns)}) SELECT * FROM incoming")
    return path


@pytest.mark.slow
def test_a_large_selection_is_paged(tmp_path: Path) -> None:
    n = 20_000
    path = synthetic_catalog(tmp_path / "big", n)
    started = time.perf_counter()
    result = build(path, "SELECT sample_id FROM samples ORDER BY sample_id", tmp_path / "view")
    first = time.perf_counter() - started
    assert result.n_samples == n and result.n_pages == math.ceil(n / PAGE_SIZE) and result.n_thumbnails == n
    assert len(list((tmp_path / "view" / "rows").glob("*.js"))) == math.ceil(n / CHUNK)
    rows = rows_of(tmp_path / "view")
    assert len(rows) == n and rows[0]["sample_id"] == "big:0000000" and rows[-1]["emotion"] == "contempt"
    started = time.perf_counter()
    assert build(path, "SELECT sample_id FROM samples", tmp_path / "view", limit=500).n_thumbnails == 0
    assert len(rows_of(tmp_path / "view")) == 500  # the larger selection's scripts are gone
    again = time.perf_counter() - started
    print(f"view of {n} samples: {first:.1f} s with thumbnails, {again:.1f} s again")
    assert first < 120 and again < 20


# --- a real browser ----------------------------------------------------------------------------------

# Appended to a copy of a page: on load, the URLs of every resource the page requested (failed ones too).
PROBE = """<script>addEventListener("load", () => { document.body.dataset.loaded =
  JSON.stringify(performance.getEntriesByType("resource").map(e => e.name)); });</script>"""


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A proxy that answers nothing and records every request a browser sends through it."""

    def _record(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")
        self.send_error(502)

    do_GET = do_POST = do_HEAD = do_CONNECT = _record

    def log_message(self, *args: object) -> None:
        pass


def chromium(page: Path, proxy: str) -> tuple[str, list[str]]:
    """Headless Chromium's DOM of a page after its scripts ran and its images loaded, and the resources it
    requested; the network is a proxy that answers nothing."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium is needed (.ci/run installs it: apt-get install -y chromium)"
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--proxy-server={proxy}", "--no-first-run", "--disable-background-networking",
                           "--virtual-time-budget=5000", "--window-size=1280,900", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    probe.unlink()
    loaded = re.search(r'data-loaded="([^"]*)"', done.stdout)
    assert loaded, f"the page did not finish loading: {done.stderr[-500:]}"
    return done.stdout, json.loads(html.unescape(loaded[1]))


@pytest.mark.slow
def test_chromium_renders_tiles_offline(catalog_path: Path, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        control = tmp_path / "control.html"  # both checks see a page that fetches from the network
        control.write_text('<body><img src="http://example.com/face.jpg"></body>')
        assert chromium(control, proxy)[1] == ["http://example.com/face.jpg"]
        assert any("example.com" in line for line in server.seen), server.seen
        server.seen.clear()

        out = tmp_path / "view"
        build(catalog_path, "SELECT sample_id FROM samples", out)
        dom, requested = chromium(out / "index.html", proxy)
        tiles = re.findall(r'<figure class="tile ([^"]*)"', dom)
        assert len(tiles) == 5 and all("loaded" in t and "broken" not in t for t in tiles), tiles
        assert "page 1 of 1 (5 samples)" in dom
        assert all(url.startswith(out.as_uri()) for url in requested), requested
        for page in ("rejects.html", "duplicates.html", "charts.html"):
            dom, requested = chromium(out / page, proxy)
            assert "fer view" in dom and all(url.startswith(out.as_uri()) for url in requested), requested
        # what went through the proxy is Chromium's own (its Google services), never a page's
        assert [s for s in server.seen if not re.search(r"google\.com|gvt1\.com|googleapis\.com", s)] == []
    finally:
        server.shutdown()
