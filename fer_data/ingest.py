"""One dataset from its raw layout into the catalog: adapter records -> checked sources -> catalog rows.

Every row the adapter reads ends as exactly one sample or one reject, so a user can always
account for a dataset: rows read = samples + rejects.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fer_data import catalog
from fer_data.datasets import get_adapter
from fer_data.records import Record, Reject

DETECTORS = ("auto", "none")


@dataclass(frozen=True)
class Source:
    """What decoding a record's source told us."""

    sha256: str
    bytes: int
    width: int
    height: int


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    rows_read: int
    n_samples: int
    n_rejects: int
    catalog: Path


def check_source(rec: Record) -> Source | Reject:
    """Read and fully decode the image behind a record; a Reject says what is wrong with it."""
    def reject(reason: str, detail: str) -> Reject:
        return Reject(rec.dataset, rec.source_path, "decode", reason, detail)

    if rec.pixels is not None:
        data = np.ascontiguousarray(rec.pixels).tobytes()
        return Source(hashlib.sha256(data).hexdigest(), len(data), rec.pixels.shape[1], rec.pixels.shape[0])
    path = Path(rec.source_path)
    if not path.is_file():
        return reject("missing_file", f"{path} does not exist")
    data = path.read_bytes()
    if not data:
        return reject("empty_file", f"{path} has 0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return reject("corrupt_image", f"{path}: {err}")
    return Source(hashlib.sha256(data).hexdigest(), len(data), width, height)


def sample_row(rec: Record, src: Source, detector: str) -> dict[str, Any]:
    """The catalog row of one record."""
    row = {k: v for k, v in asdict(rec).items() if k in catalog.SAMPLE_COLUMNS}
    row.update(
        sha256=src.sha256, bytes=src.bytes, width=src.width, height=src.height,
        face_box=list(rec.face_box) if rec.face_box else None,
        landmarks=[c for point in rec.landmarks for c in point] if rec.landmarks else None,
        detector=detector,
        extra={**rec.extra, "aligned_source": rec.aligned} if rec.aligned else rec.extra or None,
    )
    return row


def au_rows(rec: Record) -> list[dict[str, Any]]:
    return [{"sample_id": rec.sample_id, "au": au, "present": present, "intensity": intensity}
            for au, (present, intensity) in sorted(rec.aus.items())]


def ingest(dataset: str, raw_root: str | Path, out: str | Path, detector: str = "auto", workers: int = 4,
           on_progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Read `raw_root` with the dataset's adapter, check every source, replace the dataset in OUT/catalog.duckdb."""
    if detector not in DETECTORS:
        raise ValueError(f"detector {detector!r}: this build offers {DETECTORS}")
    adapter = get_adapter(dataset)
    out = Path(out)
    items = list(adapter.records(raw_root))
    records, rejects = _dedupe(items)
    samples: list[dict[str, Any]] = []
    aus: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, (rec, src) in enumerate(zip(records, pool.map(check_source, records)), start=1):
            if isinstance(src, Reject):
                rejects.append(src)
            else:
                samples.append(sample_row(rec, src, detector="none"))
                aus.extend(au_rows(rec))
            if on_progress:
                on_progress(done, len(records))
    if len(samples) + len(rejects) != len(items):
        raise AssertionError(f"{dataset}: {len(items)} rows read but {len(samples)} samples + {len(rejects)} rejects")
    path = out / "catalog.duckdb"
    catalog.replace_dataset(path, catalog.DatasetRows(
        dataset=adapter.name, raw_root=str(Path(raw_root).resolve()), samples=samples, au_labels=aus,
        rejects=[asdict(r) for r in rejects], shards=[], rows_read=len(items), params={"detector": detector},
    ))
    catalog.export_parquet(path, out / "catalog")
    return IngestResult(adapter.name, len(items), len(samples), len(rejects), path)


def _dedupe(items: Iterable[Record | Reject]) -> tuple[list[Record], list[Reject]]:
    """Split records from rejects; a sample id seen twice keeps its first row and rejects the others."""
    records: list[Record] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
        elif item.sample_id in seen:
            rejects.append(Reject(item.dataset, item.source_path, "adapter", "duplicate_sample_id", item.sample_id))
        else:
            seen.add(item.sample_id)
            records.append(item)
    return records, rejects
