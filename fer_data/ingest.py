"""One dataset from its raw layout: adapter records -> decoded images -> aligned faces -> shards -> catalog.

Every row the adapter reads ends as exactly one sample or one reject, so a user can always
account for a dataset: rows read = samples + rejects.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from fer_data import catalog, shards
from fer_data.datasets import get_adapter
from fer_data.faces.stage import FaceAligner, FaceConfig
from fer_data.labels import LABEL_SPACES
from fer_data.records import Record, Reject

SHARD_FORMAT = 1  # bump when the bytes written for the same inputs change


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


def load_image(rec: Record) -> tuple[np.ndarray, Source] | Reject:
    """Read and fully decode the image behind a record to RGB; a Reject says what is wrong with it."""
    def reject(reason: str, detail: str) -> Reject:
        return Reject(rec.dataset, rec.source_path, "decode", reason, detail)

    if rec.pixels is not None:
        data = np.ascontiguousarray(rec.pixels).tobytes()
        rgb = np.stack([rec.pixels] * 3, axis=-1) if rec.pixels.ndim == 2 else rec.pixels
        return rgb, Source(hashlib.sha256(data).hexdigest(), len(data), rec.pixels.shape[1], rec.pixels.shape[0])
    path = Path(rec.source_path)
    if not path.is_file():
        return reject("missing_file", f"{path} does not exist")
    data = path.read_bytes()
    if not data:
        return reject("empty_file", f"{path} has 0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return reject("corrupt_image", f"{path}: {err}")
    return rgb, Source(hashlib.sha256(data).hexdigest(), len(data), rgb.shape[1], rgb.shape[0])


def shard_labels(rec: Record) -> dict[str, Any]:
    """The JSON stored beside each crop: harmonized labels, None where missing."""
    return {
        "sample_id": rec.sample_id, "dataset": rec.dataset, "split": rec.split, "subject": rec.subject,
        "emotion": rec.emotion, "valence": rec.valence, "arousal": rec.arousal, "age": rec.age,
        "age_bin": rec.age_bin, "gender": rec.gender,
        "aus": {str(au): present for au, (present, _) in sorted(rec.aus.items())},
    }


def sample_row(rec: Record, src: Source, geometry: dict[str, Any]) -> dict[str, Any]:
    """The catalog row of one record (shard filled in once its shard is complete)."""
    row = {k: v for k, v in asdict(rec).items() if k in catalog.SAMPLE_COLUMNS}
    row.update(sha256=src.sha256, bytes=src.bytes, width=src.width, height=src.height, **geometry,
               extra={**rec.extra, "aligned_source": True} if rec.aligned else rec.extra or None)
    return row


def au_rows(rec: Record) -> list[dict[str, Any]]:
    return [{"sample_id": rec.sample_id, "au": au, "present": present, "intensity": intensity}
            for au, (present, intensity) in sorted(rec.aus.items())]


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class Worker:
    """Decode -> align -> encode for a batch of records; one per thread, with its own detector sessions."""

    def __init__(self, faces: FaceConfig, quality: int) -> None:
        self.aligner = FaceAligner(faces)
        self.quality = quality

    def __call__(self, batch: list[Record]) -> list[tuple[Record, dict[str, Any] | Reject]]:
        loaded = [(rec, load_image(rec)) for rec in batch]
        good = [(rec, got[0]) for rec, got in loaded if not isinstance(got, Reject)]
        faces = iter(self.aligner(good))
        out: list[tuple[Record, dict[str, Any] | Reject]] = []
        for rec, got in loaded:
            if isinstance(got, Reject):
                out.append((rec, got))
                continue
            face = next(faces)
            if isinstance(face, Reject):
                out.append((rec, face))
                continue
            out.append((rec, {
                "sample_id": rec.sample_id,
                "files": {"jpg": encode_jpeg(face.crop, self.quality),
                          "json": json.dumps(shard_labels(rec), sort_keys=True).encode()},
                "row": sample_row(rec, got[1], face.geometry),
                "aus": au_rows(rec),
            }))
        return out


def _ordered(pool: ThreadPoolExecutor, fn: Callable, batches: list, window: int) -> Iterator:
    """pool.map that keeps at most `window` batches in flight, results in input order."""
    pending: deque = deque()
    for batch in batches:
        pending.append(pool.submit(fn, batch))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _input_fingerprint(records: list[Record]) -> list[Any]:
    """Cheap identity of the inputs: ids, labels, paths and file size/mtime (content is hashed later)."""
    def stat(path: str) -> list[int] | None:
        p = Path(path.split("#", 1)[0])
        return [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None

    return [[r.sample_id, shard_labels(r), r.source_path, stat(r.source_path), r.landmarks, r.face_box]
            for r in records]


def ingest(dataset: str, raw_root: str | Path, out: str | Path, detector: str = "auto", workers: int = 2,
           size: int = 224, quality: int = 95, shard_samples: int = 1000, shard_bytes: int = 256 * 2**20,
           batch_size: int = 16, detector_model: str | None = None,
           on_progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """Raw layout -> aligned crops in WebDataset shards -> this dataset's rows in OUT/catalog.duckdb.

    Resumable: shards completed by an earlier, interrupted run with the same fingerprint are kept.
    """
    faces = FaceConfig(detector=detector, size=size, model_path=detector_model)
    adapter = get_adapter(dataset)
    out = Path(out)
    items = list(adapter.records(raw_root))
    records, rejects = _dedupe(items)
    params = {"detector": detector, "size": size, "quality": quality, "shard_samples": shard_samples,
              "shard_bytes": shard_bytes, "detector_model": detector_model, "version": SHARD_FORMAT}
    shard_dir = out / "shards" / adapter.name
    by_split: dict[str, list[Record]] = {}
    for rec in sorted(records, key=lambda r: r.sample_id):
        by_split.setdefault(rec.split, []).append(rec)
    done_count = 0
    writers = {}
    local = threading.local()

    def work(batch: list[Record]) -> list:
        if not hasattr(local, "worker"):
            local.worker = Worker(faces, quality)
        return local.worker(batch)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for split, recs in sorted(by_split.items()):
            fp = shards.fingerprint(params, _input_fingerprint(recs))
            writer = writers[split] = shards.ShardWriter(shard_dir, split, fp, shard_samples, shard_bytes)
            done = writer.processed_ids
            todo = [r for r in recs if r.sample_id not in done]
            done_count += len(recs) - len(todo)
            batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
            for results in _ordered(pool, work, batches, window=2 * max(1, workers)):
                for rec, res in results:
                    if isinstance(res, Reject):
                        writer.carry({"sample_id": rec.sample_id, "reject": asdict(res)})
                    else:
                        writer.add(shards.sample_key(rec.sample_id), res.pop("files"), res)
                done_count += len(results)
                if on_progress:
                    on_progress(done_count, len(records))
            writer.close()

    samples, aus, shard_rows, info_splits = [], [], [], {}
    for split, writer in sorted(writers.items()):
        info_splits[split] = {"n_samples": 0, "shards": []}
        for stats in writer.done:
            rel = None if stats["shard"] is None else f"shards/{adapter.name}/{stats['shard']}"
            for item in stats["samples"]:
                samples.append({**item["row"], "shard": rel})
                aus.extend(item["aus"])
            rejects.extend(Reject(**c["reject"]) for c in stats["carried"])
            if rel:
                shard_rows.append({"path": rel, "dataset": adapter.name, "split": split, "n_samples": stats["n_samples"],
                                   "bytes": stats["bytes"], "sha256": stats["sha256"], "fingerprint": stats["fingerprint"]})
                info_splits[split]["n_samples"] += stats["n_samples"]
                info_splits[split]["shards"].append(stats["shard"])
    if len(samples) + len(rejects) != len(items):
        raise AssertionError(f"{dataset}: {len(items)} rows read but {len(samples)} samples + {len(rejects)} rejects")
    shards.write_info(shard_dir, {
        "dataset": adapter.name, "splits": info_splits, "params": params,
        "fingerprint": shards.fingerprint(params, [s["fingerprint"] for s in shard_rows]),
        "label_spaces": LABEL_SPACES, "kind": adapter.kind,
    })
    path = out / "catalog.duckdb"
    catalog.replace_dataset(path, catalog.DatasetRows(
        dataset=adapter.name, raw_root=str(Path(raw_root).resolve()), samples=samples, au_labels=aus,
        rejects=[asdict(r) for r in rejects], shards=shard_rows, rows_read=len(items), params=params,
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
