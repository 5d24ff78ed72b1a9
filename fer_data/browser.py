"""`fer view`: a static, offline HTML browser of a catalog selection, plain files that open in any browser.

Pages: `index.html` (the samples' aligned crops, clips as a frame strip, with labels, dataset/split, pose
and quality; filterable by emotion/dataset/split and paged in the browser), `rejects.html` (each reject's
source thumbnail and reason), `duplicates.html` (near-duplicate groups of the audit side by side, those
that cross datasets or splits first) and `charts.html` (per-dataset class balance and AU occurrence as
inline SVG). Nothing is fetched from the network: no CDN, no server, a Content-Security-Policy that
forbids it; the sample rows travel as data scripts (`rows/NNNN.js`, one per `CHUNK` rows), which browsers
load from file:// where they refuse fetch(). Only `PAGE_SIZE` tiles are in the page at once, so 100k
samples stay usable. Thumbnails are small JPEGs named by shard and key, written once: a rerun over
the same shards writes none. Every text from the catalog is escaped (Jinja2) or set as text (JS).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fer_data import catalog
from fer_data.labels import AGE_BINS, EMOTIONS, GENDERS
from fer_data.shards import read_members

PAGE_SIZE = 100  # tiles per page of the grid
CHUNK = 5000  # sample rows per data script
THUMB = 96  # thumbnail side in pixels (a clip frame: half of it)
STRIP_FRAMES = 8  # frames of a clip's strip, evenly spread
MAX_REJECTS = 2000  # rejects listed with a source thumbnail (the count says how many there are)
MAX_GROUPS, MAX_MEMBERS = 300, 16  # duplicate groups shown, and members shown per group
OPTIONAL = ("yaw", "pitch", "roll", "face_size", "sharpness", "face_coverage", "n_tracks")  # NULL until filled
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# The grid's columns, in the order the data scripts carry them (browser.js reads them by name).
GRID_COLUMNS = ("sample_id", "dataset", "split", "kind", "emotion", "age_bin", "gender", "aus", "n_frames",
                "thumb", *OPTIONAL)


@dataclass(frozen=True)
class ViewResult:
    out: Path
    n_samples: int
    n_pages: int
    n_thumbnails: int  # written by this run (0 when a previous run wrote them all)
    n_rejects: int
    n_groups: int
    seconds: float


def build(catalog_path: str | Path, sql: str, out: str | Path, limit: int | None = None,
          page_size: int = PAGE_SIZE, root: str | Path | None = None, workers: int | None = None) -> ViewResult:
    """Write the browser of the samples `sql` selects (a read-only query returning `sample_id`) to `out`."""
    started = time.perf_counter()
    catalog_path, out = Path(catalog_path), Path(out)
    base = Path(root) if root is not None else catalog_path.resolve().parent
    rows = selection(catalog_path, sql, limit)
    out.mkdir(parents=True, exist_ok=True)
    groups = duplicate_groups(catalog_path, list(rows.sample_id))
    rejects = reject_rows(catalog_path, sorted(set(rows.dataset)))
    members = groups.drop_duplicates("sample_id")[["sample_id", "shard"]] if len(groups) else groups
    wanted = pd.concat([rows[["sample_id", "shard"]], members]).drop_duplicates("sample_id")
    thumbs = {sid: thumb_name(shard, sid) for sid, shard in zip(wanted.sample_id, wanted.shard)}
    written = write_thumbnails(base, out, wanted, thumbs, workers)
    written += write_reject_thumbnails(out, rejects, workers)
    rejects["thumb"] = [t if t and (out / t).exists() else "" for t in rejects.thumb]  # unreadable: no preview
    rows["thumb"] = rows.sample_id.map(thumbs)
    n_chunks = write_rows(out, rows)
    charts = class_balance(rows) + au_occurrence(catalog_path, list(rows.sample_id))
    pages = _templates()
    context = {"sql": sql, "n": len(rows), "n_rejects": len(rejects), "n_groups": groups.group_id.nunique() if len(groups) else 0}
    write_text(out / "index.html", pages["index"].render(**context, page_size=page_size, chunks=range(n_chunks)))
    write_text(out / "rejects.html", pages["rejects"].render(**context, rejects=rejects.head(MAX_REJECTS).to_dict("records")))
    write_text(out / "duplicates.html", pages["duplicates"].render(
        **context, groups=_group_records(groups, thumbs), audited=has_audit(catalog_path)))
    write_text(out / "charts.html", pages["charts"].render(**context, charts=charts))
    write_text(out / "style.css", STYLE)
    write_text(out / "browser.js", SCRIPT)
    return ViewResult(out, len(rows), max(1, math.ceil(len(rows) / page_size)), written, len(rejects),
                      context["n_groups"], time.perf_counter() - started)


# --- what is shown ---------------------------------------------------------------------------------

def selection(catalog_path: Path, sql: str, limit: int | None) -> pd.DataFrame:
    """The selected samples in the query's order (at most `limit`), with label names and AUs present."""
    picked = catalog.query(catalog_path, sql)
    if "sample_id" not in picked.columns:
        raise ValueError(f"fer view shows samples: the query must return a sample_id column "
                         f"(e.g. SELECT sample_id FROM samples WHERE ...), it returned: {', '.join(picked.columns)}")
    ids = list(picked.sample_id.drop_duplicates())[:limit]
    present = set(catalog.query(catalog_path, "SELECT column_name FROM (DESCRIBE samples)").column_name)
    optional = ", ".join(f"s.{c}" if c in present else f"NULL AS {c}" for c in OPTIONAL)
    rows = catalog.query(catalog_path, f"""
        SELECT s.sample_id, s.dataset, s.split, s.kind, s.source_path, s.shard, s.n_frames,
               e.name AS emotion, a.name AS age_bin, g.name AS gender,
               (SELECT string_agg('AU' || au, ' ' ORDER BY au) FROM au_labels l
                WHERE l.sample_id = s.sample_id AND l.present) AS aus, {optional}
        FROM samples s
        LEFT JOIN emotion_names e ON e.id = s.emotion
        LEFT JOIN age_bin_names a ON a.id = s.age_bin
        LEFT JOIN gender_names g ON g.id = s.gender
        WHERE s.sample_id IN (SELECT unnest(?::VARCHAR[]))""", [ids])
    order = {sid: i for i, sid in enumerate(ids)}
    rows = rows.sort_values("sample_id", key=lambda s: s.map(order)).reset_index(drop=True)
    return rows[rows.shard.notna()].reset_index(drop=True)  # a sample without a shard has no crop to show


def has_audit(catalog_path: Path) -> bool:
    return bool(catalog.query(catalog_path, "SELECT count(*) AS n FROM phashes").n[0])


def duplicate_groups(catalog_path: Path, ids: list[str]) -> pd.DataFrame:
    """Members of the audit's near-duplicate groups that hold a selected sample; groups crossing datasets or
    splits (the `leakage` view) first, then by size."""
    return catalog.query(catalog_path, f"""
        WITH chosen AS (SELECT DISTINCT group_id FROM duplicates WHERE sample_id IN (SELECT unnest(?::VARCHAR[]))
                        LIMIT {MAX_GROUPS}),
             sized AS (SELECT group_id, count(*) AS n, count(DISTINCT dataset) > 1 OR count(DISTINCT split) > 1 AS leaks
                       FROM duplicates WHERE group_id IN (SELECT group_id FROM chosen) GROUP BY group_id)
        SELECT d.group_id, d.sample_id, d.dataset, d.split, s.shard, z.n, z.leaks
        FROM duplicates d JOIN sized z USING (group_id) JOIN samples s USING (sample_id)
        QUALIFY row_number() OVER (PARTITION BY d.group_id ORDER BY d.dataset, d.split, d.sample_id) <= {MAX_MEMBERS}
        ORDER BY z.leaks DESC, z.n DESC, d.group_id, d.dataset, d.split, d.sample_id""", [ids])


def _group_records(groups: pd.DataFrame, thumbs: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for group_id, members in groups.groupby("group_id", sort=False):
        out.append({"group_id": int(group_id), "n": int(members.n.iloc[0]), "leaks": bool(members.leaks.iloc[0]),
                    "members": [{"sample_id": m.sample_id, "where": f"{m.dataset}/{m.split}",
                                 "thumb": thumbs.get(m.sample_id)} for m in members.itertuples()]})
    return out


def reject_rows(catalog_path: Path, datasets: list[str]) -> pd.DataFrame:
    """The rejects of the selection's datasets, with their source's absolute path (where it can be shown)."""
    rejects = catalog.query(catalog_path, """
        SELECT r.dataset, r.source_path, r.stage, r.reason, r.detail, i.raw_root
        FROM rejects r LEFT JOIN ingests i USING (dataset)
        WHERE r.dataset IN (SELECT unnest(?::VARCHAR[])) ORDER BY r.dataset, r.reason, r.source_path""", [datasets])
    rejects["source"] = [p if os.path.isabs(p) or not root else os.path.join(root, p)
                         for p, root in zip(rejects.source_path, rejects.raw_root)]
    rejects["thumb"] = [f"thumbs/rejects/{_digest(p)}.jpg" if p.lower().endswith(IMAGE_SUFFIXES) else ""
                        for p in rejects.source]
    return rejects


def class_balance(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per dataset and class task: the selection's count of each class (all classes, zeros too)."""
    charts = []
    for dataset, part in rows.groupby("dataset"):
        for task, names in (("emotion", EMOTIONS), ("age_bin", AGE_BINS), ("gender", GENDERS)):
            counts = part[task].value_counts()
            if counts.sum():
                charts.append(_bars(f"{dataset}: {task}", [(n, int(counts.get(n, 0))) for n in names], "count"))
    return charts


def au_occurrence(catalog_path: Path, ids: list[str]) -> list[dict[str, Any]]:
    """Per dataset: each AU's occurrence rate among the selection's samples labelled for it."""
    rates = catalog.query(catalog_path, """
        SELECT s.dataset, a.au, count(*) FILTER (a.present) / count(a.present) AS rate, count(a.present) AS n
        FROM au_labels a JOIN samples s USING (sample_id)
        WHERE a.present IS NOT NULL AND a.sample_id IN (SELECT unnest(?::VARCHAR[]))
        GROUP BY ALL ORDER BY s.dataset, a.au""", [ids])
    return [_bars(f"{dataset}: AU occurrence", [(f"AU{au}", float(r)) for au, r in zip(part.au, part.rate)], "rate",
                  scale=1.0)
            for dataset, part in rates.groupby("dataset")]


def _bars(title: str, values: list[tuple[str, float]], unit: str, scale: float | None = None) -> dict[str, Any]:
    """A horizontal bar chart's geometry for the SVG template: label, value, bar width in pixels."""
    top = scale or max((v for _, v in values), default=0) or 1
    return {"title": title, "unit": unit, "height": 18 * len(values) + 8,
            "bars": [{"label": label, "value": f"{v:.2f}" if isinstance(v, float) else str(v),
                      "y": 4 + 18 * i, "width": round(260 * v / top, 1)} for i, (label, v) in enumerate(values)]}


# --- files -----------------------------------------------------------------------------------------

def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def thumb_name(shard: str, sample_id: str) -> str:
    """A crop's thumbnail path under `out`: named by shard and sample, so another ingest's crop gets its own."""
    name = _digest(f"{shard}\0{sample_id}")
    return f"thumbs/{name[:2]}/{name}.jpg"


def write_text(path: Path, text: str) -> None:
    """Readers (a browser reloading) never see half a page: staged, then renamed."""
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _save_jpeg(image: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    image.convert("RGB").save(staging, "JPEG", quality=85)
    os.replace(staging, path)


def _small(data: bytes, side: int) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (side, side))  # JPEG decodes at a reduced scale: most of the speed
    image.thumbnail((side, side))
    return image


def _strip(frames: list[bytes]) -> Any:
    """A clip's thumbnail: up to STRIP_FRAMES frames side by side, half a thumbnail high."""
    from PIL import Image

    pick = [frames[round(i * (len(frames) - 1) / max(1, STRIP_FRAMES - 1))] for i in range(min(STRIP_FRAMES, len(frames)))]
    tiles = [_small(f, THUMB // 2) for f in pick]
    strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width
    return strip


def _shard_thumbnails(shard: Path, wanted: dict[str, Path]) -> int:
    """Thumbnails of the `wanted` samples (key -> file) of one shard, read in one pass over the tar. A shard
    that is gone or broken, or a crop that does not decode, gets none: its tile shows as broken, the rest render."""
    try:
        members = read_members(shard, lambda key, ext: key in wanted and ext.endswith("jpg"))
    except (OSError, tarfile.TarError):
        return 0
    written = 0
    for key, files in members.items():
        frames = [files[k] for k in sorted(files)]
        try:
            _save_jpeg(_small(files["jpg"], THUMB) if "jpg" in files else _strip(frames), wanted[key])
        except (OSError, ValueError, SyntaxError):  # what PIL raises for a corrupt JPEG
            continue
        written += 1
    return written


def write_thumbnails(base: Path, out: Path, wanted: pd.DataFrame, thumbs: dict[str, str], workers: int | None) -> int:
    """Every selected crop's thumbnail that is not there yet, one task per shard on a thread pool."""
    from fer_data.shards import sample_key

    existing = {f"thumbs/{d.name}/{f.name}" for d in _entries(out / "thumbs") if d.is_dir() for f in _entries(d)}
    todo: dict[str, dict[str, Path]] = defaultdict(dict)
    for sample_id, shard in zip(wanted.sample_id, wanted.shard):
        if thumbs[sample_id] not in existing:
            todo[shard][sample_key(sample_id)] = out / thumbs[sample_id]
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return sum(pool.map(lambda item: _shard_thumbnails(base / item[0], item[1]), sorted(todo.items())))


def _entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries (none if it is not there): one listing, not a stat per thumbnail."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _reject_thumbnail(source: str, path: Path) -> int:
    """The source image of a reject, if it opens (many rejects are files that do not): 1 if written."""
    try:
        _save_jpeg(_small(Path(source).read_bytes(), THUMB), path)
    except (OSError, ValueError, SyntaxError):  # unreadable, truncated, not an image: the reason says why
        return 0
    return 1


def write_reject_thumbnails(out: Path, rejects: pd.DataFrame, workers: int | None) -> int:
    shown = rejects.head(MAX_REJECTS)
    todo = [(s, out / t) for s, t in zip(shown.source, shown.thumb) if t and not (out / t).exists()]
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return sum(pool.map(lambda item: _reject_thumbnail(*item), todo))


def _script_json(value: Any) -> str:
    """JSON that cannot end the script element it sits in."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def write_rows(out: Path, rows: pd.DataFrame) -> int:
    """The grid's rows as data scripts of CHUNK rows (`FER.add(columns, rows)`); returns how many."""
    folder = out / "rows"
    folder.mkdir(exist_ok=True)
    grid = rows[list(GRID_COLUMNS)].copy()
    for name in OPTIONAL:  # one decimal is what a tile shows
        grid[name] = pd.to_numeric(grid[name]).astype("float64").round(1)
    n = max(1, math.ceil(len(grid) / CHUNK))
    for i in range(n):
        records = grid.iloc[i * CHUNK:(i + 1) * CHUNK].to_json(orient="values").replace("</", "<\\/")  # NaN: null
        write_text(folder / f"{i:04d}.js", f"FER.add({_script_json(GRID_COLUMNS)},{records});\n")
    for stale in folder.glob("*.js"):  # a previous, larger selection's scripts
        if int(stale.stem) >= n:
            stale.unlink()
    return n


# --- pages -----------------------------------------------------------------------------------------

def _templates() -> dict[str, Any]:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             loader=jinja2.DictLoader({"base": BASE, **PAGES}))
    return {name: env.get_template(name) for name in PAGES}


# No network: the policy forbids every fetch but this folder's files (scripts, styles, images).
BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'self' 'unsafe-inline' file:; style-src 'self' 'unsafe-inline' file:; img-src 'self' file: data:">
<title>fer view: {% block title %}{% endblock %}</title><link rel="stylesheet" href="style.css"></head>
<body><nav><b>fer view</b> <a href="index.html">samples ({{ n }})</a> <a href="rejects.html">rejects ({{ n_rejects }})</a>
<a href="duplicates.html">near-duplicates ({{ n_groups }} groups)</a> <a href="charts.html">class balance &amp; AUs</a>
<code title="the selection">{{ sql }}</code></nav>
{% block body %}{% endblock %}</body></html>
"""

PAGES = {
    "index": """{% extends "base" %}{% block title %}samples{% endblock %}{% block body %}
<form id="filters">emotion <select name="emotion"></select> dataset <select name="dataset"></select>
split <select name="split"></select> <input name="text" placeholder="search labels, ids" size="24">
<button type="button" id="prev">&larr;</button> <span id="pager"></span> <button type="button" id="next">&rarr;</button></form>
<div id="grid" data-page-size="{{ page_size }}"></div>
<script>const FER = {columns: [], rows: [], add(columns, rows) { this.columns = columns; this.rows.push(...rows); }};</script>
{% for i in chunks %}<script src="rows/{{ '%04d' % i }}.js"></script>
{% endfor %}<script src="browser.js"></script>{% endblock %}""",
    "rejects": """{% extends "base" %}{% block title %}rejects{% endblock %}{% block body %}
<h2>{{ n_rejects }} rejects of the selection's datasets{% if n_rejects > rejects|length %} (first {{ rejects|length }}){% endif %}</h2>
<table><tr><th>source</th><th>dataset</th><th>stage</th><th>reason</th><th>detail</th><th>path</th></tr>
{% for r in rejects %}<tr><td>{% if r.thumb %}<img class="thumb" src="{{ r.thumb }}" alt="no preview: the file does not open">{% else %}<span class="none">no preview</span>{% endif %}</td>
<td>{{ r.dataset }}</td><td>{{ r.stage }}</td><td><b>{{ r.reason }}</b></td><td>{{ r.detail or '' }}</td><td class="path">{{ r.source_path }}</td></tr>
{% endfor %}</table>{% endblock %}""",
    "duplicates": """{% extends "base" %}{% block title %}near-duplicates{% endblock %}{% block body %}
{% if not audited %}<p>The catalog has no perceptual hashes yet: run <code>fer audit</code> to find near-duplicates.</p>{% endif %}
<h2>{{ groups|length }} near-duplicate groups holding a selected sample (crossing datasets or splits first)</h2>
{% for g in groups %}<section class="group{% if g.leaks %} leaks{% endif %}"><h3>group {{ g.group_id }}: {{ g.n }} crops{% if g.leaks %}, crosses datasets/splits{% endif %}{% if g.n > g.members|length %} (first {{ g.members|length }}){% endif %}</h3>
<div class="row">{% for m in g.members %}<figure class="tile"><img src="{{ m.thumb }}" alt=""><figcaption>{{ m.where }}<br><span class="id">{{ m.sample_id }}</span></figcaption></figure>{% endfor %}</div></section>
{% endfor %}{% endblock %}""",
    "charts": """{% extends "base" %}{% block title %}class balance and AUs{% endblock %}{% block body %}
<h2>Class balance and AU occurrence of the selection, per dataset</h2><div class="charts">
{% for c in charts %}<figure class="chart"><figcaption>{{ c.title }} ({{ c.unit }})</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" width="420" height="{{ c.height }}" role="img">
{% for b in c.bars %}<text x="84" y="{{ b.y + 12 }}" text-anchor="end">{{ b.label }}</text><rect x="90" y="{{ b.y }}" width="{{ b.width }}" height="14"></rect><text x="{{ 94 + b.width }}" y="{{ b.y + 12 }}">{{ b.value }}</text>
{% endfor %}</svg></figure>
{% endfor %}</div>{% endblock %}""",
}

STYLE = """body{font:13px system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
nav{position:sticky;top:0;background:#223;color:#eee;padding:6px 10px;z-index:1}nav a{color:#9cf;margin-left:12px}
nav code{margin-left:16px;color:#ccc;font-size:11px}form{padding:8px 10px;background:#eee}
h2{font-size:15px;margin:10px}#grid,.row{display:flex;flex-wrap:wrap;gap:6px;padding:8px}
.tile{margin:0;width:112px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px;font-size:11px}
.tile.clip{width:392px}.tile img{display:block;height:96px;max-width:100%;background:#ccc}.tile.clip img{height:48px}
.tile.broken img{outline:2px solid #c00}.tile .id{color:#777;font-size:10px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.path{color:#777;word-break:break-all;font-size:10px}.tile .q{color:#555}
table{border-collapse:collapse;margin:8px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
.thumb{height:64px}.none{color:#999}.group{margin:8px;border:1px solid #ccc;background:#fff}.group.leaks{border-color:#c00}
.group h3{font-size:13px;margin:6px}.charts{display:flex;flex-wrap:wrap}.chart{margin:8px;background:#fff;border:1px solid #ddd;padding:6px}
.chart rect{fill:#4a7fc1}.chart text{font-size:11px}
"""

# The grid: filters over every row, one page of tiles in the DOM, the page in the URL's hash. Text from
# the catalog is only ever set as textContent, never parsed as HTML.
SCRIPT = """(() => {
  const grid = document.getElementById("grid"), form = document.getElementById("filters");
  const pageSize = +grid.dataset.pageSize, col = Object.fromEntries(FER.columns.map((c, i) => [c, i]));
  const value = (row, name) => row[col[name]];
  for (const name of ["emotion", "dataset", "split"]) {
    const select = form.elements[name], seen = new Set(FER.rows.map(r => value(r, name) ?? "(none)"));
    for (const v of ["(all)", ...[...seen].sort()]) select.add(new Option(v, v));
  }
  let shown = FER.rows;
  function filter() {
    const want = Object.fromEntries(["emotion", "dataset", "split"].map(n => [n, form.elements[n].value]));
    const text = form.elements.text.value.toLowerCase();
    shown = FER.rows.filter(r => ["emotion", "dataset", "split"].every(n => want[n] === "(all)" || (value(r, n) ?? "(none)") === want[n])
      && (!text || r.some(v => typeof v === "string" && v.toLowerCase().includes(text))));
  }
  const pages = () => Math.max(1, Math.ceil(shown.length / pageSize));
  const current = () => Math.min(pages(), Math.max(1, parseInt(location.hash.slice(1)) || 1));
  function line(parent, cls, text) { const d = document.createElement("div"); d.className = cls; d.textContent = text; parent.append(d); }
  function render() {
    const page = current();
    document.getElementById("pager").textContent = `page ${page} of ${pages()} (${shown.length} samples)`;
    const tiles = shown.slice((page - 1) * pageSize, page * pageSize).map(r => {
      const tile = document.createElement("figure"), img = document.createElement("img");
      tile.className = "tile " + value(r, "kind");
      img.onload = () => tile.classList.add("loaded");
      img.onerror = () => tile.classList.add("broken");
      img.src = value(r, "thumb"); img.alt = value(r, "sample_id");
      tile.append(img);
      const labels = ["emotion", "age_bin", "gender", "aus"].map(n => value(r, n)).filter(v => v != null);
      line(tile, "labels", labels.join(" · ") || "(no labels)");
      line(tile, "where", `${value(r, "dataset")}/${value(r, "split")}` + (value(r, "n_frames") ? ` · ${value(r, "n_frames")} frames` : ""));
      const q = [["yaw", "°"], ["pitch", "°"], ["roll", "°"], ["face_size", "px"], ["sharpness", ""], ["face_coverage", ""], ["n_tracks", ""]]
        .filter(([n]) => value(r, n) != null).map(([n, u]) => `${n} ${value(r, n)}${u}`);
      if (q.length) line(tile, "q", q.join(" "));
      line(tile, "id", value(r, "sample_id"));
      tile.title = value(r, "sample_id");
      return tile;
    });
    grid.replaceChildren(...tiles);
  }
  form.addEventListener("input", () => { filter(); location.hash = "1"; render(); });
  document.getElementById("prev").onclick = () => { location.hash = String(Math.max(1, current() - 1)); };
  document.getElementById("next").onclick = () => { location.hash = String(Math.min(pages(), current() + 1)); };
  window.addEventListener("hashchange", render);
  render();
})();
"""

