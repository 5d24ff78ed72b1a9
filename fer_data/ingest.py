"""One dataset from its raw layout: adapter records -> decoded images -> aligned faces -> shards -> catalog.

Every row the adapter reads ends as exactly one sample or one reject, so a user can always
account for a dataset: rows read = samples + rejects.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Protocol

import cv2
import numpy as np

from fer_data import catalog, shards
from fer_data.datasets import BadRow, get_adapter
from fer_data.decode import MAX_CLIP_PIXELS, MAX_PIXELS, read_image
from fer_data.faces.detectors import DETECTORS
from fer_data.faces.stage import AlignedFace, FaceAligner, FaceConfig, backend_for
from fer_data.labels import LABEL_SPACES
from fer_data.record_store import RecordStore
from fer_data.records import Record, Reject, printable
from fer_data.settings import Settings
from fer_data.video import Clip, tsn_indices

LOCK_FILE = ".ingest.lock"
_local = threading.local()  # per-thread Workers and open video readers
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """What decoding a record's source told us."""

    sha256: str
    bytes: int
    width: int
    height: int
    n_frames: int | None = None
    fps: float | None = None


@dataclass
class Loaded:
    """Decoded frames of one record: [1, H, W, 3] for an image, [T, H, W, 3] for a clip."""

    frames: np.ndarray
    source: Source
    extra: dict[str, Any]
    data: bytes | None = None  # the encoded file, for an image read from disk


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    rows_read: int
    n_samples: int
    n_rejects: int
    catalog: Path


def load(rec: Record, segments: int) -> Loaded:
    """Read and decode a record's source to RGB frames within the pixel budget (`fer_data.decode`):
    an image in `MAX_PIXELS`, a clip in `MAX_CLIP_PIXELS` over its frames. BadRow says what is wrong
    with it, an OSError's included (a 300-character name, a file it may not read). Frames decoded
    smaller than the source carry their size in `extra["decoded_size"]`, and the release's
    landmarks or face box in `rec` are scaled to them, so a given face aligns where it is."""
    try:
        got = _load(rec, segments)
    except OSError as err:
        raise BadRow.from_os_error(err.filename or rec.source_path, err) from None
    height, width = got.frames.shape[1:3]
    if (width, height) != (got.source.width, got.source.height):
        sx, sy = width / got.source.width, height / got.source.height
        if rec.landmarks is not None:
            rec.landmarks = tuple((x * sx, y * sy) for x, y in rec.landmarks)
        if rec.face_box is not None:
            x0, y0, x1, y1 = rec.face_box
            rec.face_box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        got.extra["decoded_size"] = [width, height]
    return got


def _load(rec: Record, segments: int) -> Loaded:
    path = Path(rec.source_path)
    if rec.pixels is not None:
        data = np.ascontiguousarray(rec.pixels).tobytes()
        rgb = np.stack([rec.pixels] * 3, axis=-1) if rec.pixels.ndim == 2 else rec.pixels
        return Loaded(rgb[None], Source(_sha(data), len(data), rgb.shape[1], rgb.shape[0]), {})
    if not path.exists():
        raise BadRow("missing_file", f"{path} does not exist")
    if rec.kind == "image" and rec.frame_index is None:
        rgb, data, (width, height) = read_image(path)
        return Loaded(rgb[None], Source(_sha(data), len(data), width, height), {}, data)
    if path.is_file() and path.stat().st_size == 0:
        raise BadRow("empty_file", f"{path} has 0 bytes")
    start, end = rec.frame_range or (rec.frame_index or 0, rec.frame_index)
    try:
        clip = _open_clip(path, MAX_PIXELS if rec.kind == "image" else MAX_CLIP_PIXELS // segments)
        n_frames = clip.n_frames - start if end is None else min(end, clip.n_frames - 1) - start + 1
        if n_frames <= 0:
            raise BadRow("empty_video", f"{path} has no frames in range {start}..{end} ({clip.n_frames} frames)")
        indices = tsn_indices(n_frames, segments) if rec.kind == "clip" else [0]
        frames = clip.read([start + i for i in indices])
    except (ValueError, OSError, IndexError) as err:
        if isinstance(err, BadRow):
            raise
        _local.clip = None  # a reader that failed mid-file is not reused for the next record
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        raise BadRow("corrupt_video", printable(message)) from None  # a frame's name may be no UTF-8
    width, height = clip.size or (frames.shape[2], frames.shape[1])
    if rec.kind == "image":  # one frame of a video: its own pixels identify it
        data = frames[0].tobytes()
        return Loaded(frames, Source(_sha(data), len(data), width, height, 1, clip.fps), {})
    extra: dict[str, Any] = {"frame_indices": [start + i for i in indices]}
    if n_frames < segments:
        extra["short_clip"] = True
    if path.is_file():
        digest, size = _file_digest(path, path.stat().st_mtime_ns), path.stat().st_size
    else:
        digest, size = _sha(b"".join(f.tobytes() for f in frames)), int(frames.nbytes)
    return Loaded(frames, Source(digest, size, width, height, n_frames, clip.fps), extra)


@functools.lru_cache(maxsize=64)
def _file_digest(path: Path, mtime_ns: int) -> str:
    """sha256 of a video file, once per file version (many records share one video)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _open_clip(path: Path, max_pixels: int) -> Clip:
    """This thread's open reader of `path`: consecutive records (DISFA frames, sorted) reuse it."""
    cached = getattr(_local, "clip", None)
    if cached is None or (cached.path, cached.max_pixels) != (path, max_pixels):
        cached = _local.clip = Clip(path, max_pixels)
    return cached


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shard_labels(rec: Record) -> dict[str, Any]:
    """The JSON stored beside each crop: harmonized labels, None where missing."""
    return {
        "sample_id": rec.sample_id, "dataset": rec.dataset, "split": rec.split, "subject": rec.subject,
        "emotion": rec.emotion, "valence": rec.valence, "arousal": rec.arousal, "age": rec.age,
        "age_bin": rec.age_bin, "gender": rec.gender,
        "aus": {str(au): present for au, (present, _) in sorted(rec.aus.items())},
    }


_RECORD_COLUMNS = [f.name for f in fields(Record) if f.name in catalog.SAMPLE_COLUMNS]


def in_source_pixels(geometry: dict[str, Any], decoded: list[int] | None, src: Source) -> dict[str, Any]:
    """Box, landmarks and alignment matrix of frames decoded smaller than the source (the pixel budget,
    `extra.decoded_size`) mapped back to source pixels, which is what the catalog's columns mean."""
    if not decoded:
        return geometry
    sx, sy = decoded[0] / src.width, decoded[1] / src.height
    out = dict(geometry)
    for key in ("face_box", "landmarks"):
        if out.get(key) is not None:
            out[key] = [v / (sx if i % 2 == 0 else sy) for i, v in enumerate(out[key])]
    if out.get("align_matrix") is not None:  # crop = M @ decoded = M @ diag(sx, sy) @ source
        a, b, c, d, e, f = out["align_matrix"]
        out["align_matrix"] = [a * sx, b * sy, c, d * sx, e * sy, f]
    return out


def sample_row(rec: Record, src: Source, geometry: dict[str, Any]) -> dict[str, Any]:
    """The catalog row of one record (shard filled in once its shard is complete)."""
    row = {k: getattr(rec, k) for k in _RECORD_COLUMNS}  # not asdict: its deep copy was a tenth of a worker's time
    row.update(sha256=src.sha256, bytes=src.bytes, width=src.width, height=src.height, n_frames=src.n_frames,
               fps=src.fps, **geometry,
               extra={**rec.extra, "aligned_source": True} if rec.aligned else rec.extra or None)
    return row


def au_rows(rec: Record) -> list[dict[str, Any]]:
    return [{"sample_id": rec.sample_id, "au": au, "present": present, "intensity": intensity}
            for au, (present, intensity) in sorted(rec.aus.items())]


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG of an RGB crop (OpenCV wants BGR: cvtColor swaps in 20 µs where numpy's copy of the
    reversed view took 480 µs at 224 px, most of an aligned release's ingest)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def fill_missed(frames: np.ndarray, faces: list[AlignedFace | Reject], size: int) -> list[AlignedFace] | None:
    """Frames where the detector missed are warped with the mean alignment matrix of the nearest frames
    that have one (before and after: a smoothed box), so a clip keeps T aligned frames; None if none has."""
    found = [i for i, f in enumerate(faces) if isinstance(f, AlignedFace)]
    if not found:
        return None
    out: list[AlignedFace] = []
    for i, face in enumerate(faces):
        if isinstance(face, AlignedFace):
            out.append(face)
            continue
        near = [j for j in (max((k for k in found if k < i), default=None), min((k for k in found if k > i), default=None))
                if j is not None]
        matrix = np.mean([np.reshape(faces[j].geometry["align_matrix"], (2, 3)) for j in near], axis=0)
        crop = cv2.warpAffine(frames[i], matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        out.append(AlignedFace(crop, {**faces[near[0]].geometry, "align_matrix": matrix.reshape(-1).tolist(),
                                      "landmarks": None, "face_score": None}))
    return out


Results = list[tuple[Record, dict[str, Any] | Reject]]


class Worker:
    """Decode -> align -> encode for a batch of records; one per thread, with its own detector sessions."""

    def _jpeg(self, got: Loaded, face: AlignedFace) -> bytes:
        """The crop as JPEG; an aligned JPEG already at the crop size is stored as it came (no
        generation loss, and re-encoding is most of the cost of ingesting pre-aligned releases)."""
        untouched = face.geometry["detector"] == "none" and got.frames.shape[1:3] == (self.size, self.size)
        if untouched and got.data is not None and got.data[:2] == b"\xff\xd8":
            return got.data
        return encode_jpeg(face.crop, self.quality)

    def __init__(self, faces: FaceConfig, quality: int, segments: int) -> None:
        self.aligner = FaceAligner(faces)
        self.size = faces.size
        self.quality = quality
        self.segments = segments

    def __call__(self, batch: list[Record]) -> Results:
        """Each record's result in order: images and clips go their own ways (`_images`, `_clips`)."""
        loaded: list[tuple[Record, Loaded]] = []
        out: dict[int, tuple[Record, dict[str, Any] | Reject]] = {}
        for i, rec in enumerate(batch):
            try:
                loaded.append((rec, load(rec, self.segments)))
            except BadRow as err:
                out[i] = (rec, Reject(rec.dataset, rec.source_path, "decode", err.reason, err.detail))
        kept = iter(self._images([x for x in loaded if x[0].kind == "image"]))
        clips = iter(self._clips([x for x in loaded if x[0].kind == "clip"]))
        for i, rec in enumerate(batch):
            if i not in out:
                out[i] = next(kept) if rec.kind == "image" else next(clips)
        return [out[i] for i in range(len(batch))]

    def _sample(self, rec: Record, got: Loaded, kept: list[AlignedFace], faces: list[AlignedFace | Reject]
                ) -> tuple[Record, dict[str, Any]]:
        """One sample: its crops (one, or T frames of a clip) and labels as shard files, and its catalog row."""
        names = ["jpg"] if rec.kind == "image" else [f"{t:02d}.jpg" for t in range(len(kept))]
        files = {name: self._jpeg(got, face) for name, face in zip(names, kept)}
        files["json"] = json.dumps(shard_labels(rec), sort_keys=True).encode()
        sample = shards.encode_sample(shards.sample_key(rec.sample_id), files)
        centre = kept[len(kept) // 2]
        row = sample_row(rec, got.source, in_source_pixels(centre.geometry, got.extra.get("decoded_size"),
                                                           got.source))
        if got.extra or rec.kind == "clip":
            row["extra"] = {**(row["extra"] or {}), **got.extra,
                            "missed_frames": sum(isinstance(f, Reject) for f in faces)}
        return rec, {"sample_id": rec.sample_id, "sample": sample, "row": row, "aus": au_rows(rec)}

    def _images(self, items: list[tuple[Record, Loaded]]) -> Results:
        """Image records: every image of the batch through the aligner at once (one detector batch)."""
        aligned = self.aligner([(rec, got.frames[0]) for rec, got in items])
        return [(rec, face) if isinstance(face, Reject) else self._sample(rec, got, [face], [face])
                for (rec, got), face in zip(items, aligned)]

    def _clips(self, items: list[tuple[Record, Loaded]]) -> Results:
        """Clip records: every frame of the batch through the aligner at once; missed frames filled."""
        aligned = iter(self.aligner([(rec, frame) for rec, got in items for frame in got.frames]))
        out: Results = []
        for rec, got in items:
            faces = [next(aligned) for _ in got.frames]
            kept = fill_missed(got.frames, faces, self.size)
            if kept is None:
                out.append((rec, Reject(rec.dataset, rec.source_path, "detect", "no_face",
                                        "no frame of the clip has a face")))
            else:
                out.append(self._sample(rec, got, kept, faces))
        return out


class InputKeys:
    """Identity of each input as fingerprint JSON: id, labels, path relative to the raw root and the
    sha256 of its file. Content, not mtime or absolute path: a fresh clone, a copy or a `touch` gives
    the same fingerprint (so DVC sees the same shards), an edited file another. Rows inside one label
    file (`FILE#row=N`) share one hash of FILE for the whole job, and consecutive records of one video
    (DISFA's frames) one hash of the video."""

    def __init__(self, raw_root: str | Path) -> None:
        self.root = str(Path(raw_root).resolve())
        self._label_files: dict[str, str | None] = {}
        self._last: tuple[str, str | None] = ("", None)

    def __call__(self, rec: Record) -> str:
        path, inside_file, _ = rec.source_path.partition("#")
        if inside_file:
            if path not in self._label_files:
                self._label_files[path] = _content(path)
            found = self._label_files[path]
        else:
            if self._last[0] != path:
                self._last = (path, _content(path))
            found = self._last[1]
        return shards.fingerprint_json([rec.sample_id, shard_labels(rec), relative(rec.source_path, self.root),
                                        found, rec.landmarks, rec.face_box])


def _content(path: str) -> str | None:
    """sha256 of a file, or of a frame folder's (name, sha256) list; None if missing or unreadable
    (decoding then says what is wrong)."""
    try:
        if os.path.isdir(path):
            return shards.fingerprint(sorted((e.name, _content(e.path)) for e in os.scandir(path) if e.is_file()))
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def relative(source_path: str, root: str) -> str:
    """A source path as the catalog keeps it: relative to the dataset's raw root (`ingests.raw_root`),
    so a catalog, its Parquet and its fingerprints are the same wherever the data sits."""
    return os.path.relpath(source_path, root) if os.path.isabs(source_path) else source_path



class Chunk:
    """A run of consecutive batches of one split: the unit a runner schedules. A plain object, so an
    orchestrator passes it through as one value instead of walking a thousand records."""

    __slots__ = ("split", "index", "batches")

    def __init__(self, split: str, index: int, batches: list[list[Record]]) -> None:
        self.split, self.index, self.batches = split, index, batches

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)


def process_batch(settings: Settings, batch: list[Record]) -> Results:
    """Decode, align and encode a batch; wherever it runs (a thread, a Dask worker) it keeps one Worker,
    so one detector session, per thread."""
    cache = getattr(_local, "workers", None)
    if cache is None:
        cache = _local.workers = {}
    key = replace(settings, workers=None, chunk_frames=1)  # a Worker depends on neither
    if key not in cache:
        faces = FaceConfig(detector=settings.detector, size=settings.size, model_path=settings.detector_model,
                           threads=settings.threads)
        cache[key] = Worker(faces, settings.quality, settings.segments)
    return cache[key](batch)


class Processed:
    """A chunk's results in record order. One plain object, so an orchestrator tracks one result
    per chunk (Prefect links every item of a returned list to its task run); `take` moves the
    results out, so the encoded crops are freed once written even while an orchestrator's
    bookkeeping (a Prefect state in a reference cycle, kept until the next full GC) still holds this."""

    __slots__ = ("_results",)

    def __init__(self, results: Results) -> None:
        self._results: Results | None = results

    def take(self) -> Results:
        results, self._results = self._results, None
        if results is None:
            raise RuntimeError("a chunk's results were taken twice")
        return results


def process_chunk(settings: Settings, chunk: Chunk) -> Processed:
    """A chunk's batches through `process_batch`."""
    return Processed([res for batch in chunk.batches for res in process_batch(settings, batch)])


class OutputLock:
    """One ingest at a time per output folder: two would delete each other's unfinished shards and
    write the same temp files. An flock, so the kernel frees it when its holder dies (kill -9
    included); a second ingest waits for it, saying which folder and which process it waits for.
    The file is removed on release, so a finished output folder holds only the outputs.
    """

    def __init__(self, out: Path, holder: str) -> None:
        self.path = out / LOCK_FILE
        out.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                other = f.read().strip() or "an ingest"
                log.warning("%s is locked by %s: waiting until it finishes", self.path, other)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()  # the holder removed the file as it let go: lock the one at the path now
        f.truncate(0)
        f.write(f"{holder} (pid {os.getpid()})\n")
        f.flush()
        self._file: IO[str] | None = f

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiter then sees a new inode
            self._file.close()
            self._file = None


class IngestJob:
    """One ingest of one dataset, in steps a driver runs (`drive`): `chunks(split)` to process
    anywhere, `write(split, results)` in order, `close(split)`, then `finish()` for the catalog.

    The adapter's rows are read once into a `RecordStore` on disk and walked split by split, so
    memory stays flat at any dataset size. Resumable: shards completed by an earlier, interrupted
    run with the same fingerprint are kept, and their records are not handed out again. Holds
    `OutputLock` on `out` from the end of reading the records until `finish` (or leaving a `with`).
    """

    def __init__(self, dataset: str, raw_root: str | Path, out: str | Path, settings: Settings = Settings()) -> None:
        self.adapter = get_adapter(dataset)
        self.raw_root = Path(raw_root)
        self.out = Path(out)
        self.settings = settings
        self.needs_detector = False

        def seen(rec: Record) -> None:
            self.needs_detector = self.needs_detector or backend_for(rec, settings.detector) in DETECTORS

        keys = InputKeys(raw_root)
        self.root = keys.root
        self.store = RecordStore(self.adapter.records(raw_root), keys, seen)
        self.shard_dir = self.out / "shards" / self.adapter.name
        self.writers: dict[str, shards.ShardWriter] = {}
        self.n_records = self.store.n_records
        self.n_done = 0
        try:
            self.lock = OutputLock(self.out, f"ingest of {self.adapter.name}")
        except BaseException:
            self.store.close()
            raise

    def __enter__(self) -> IngestJob:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self.writers.values():
            writer.abandon()  # after an error: the unfinished shard's temp file, which a resumed run deletes
        self.lock.release()
        self.store.close()

    @property
    def splits(self) -> list[str]:
        return self.store.splits

    def chunks(self, split: str) -> Iterator[Chunk]:
        """The records of `split` not yet in complete shards, read lazily in shard order, as batches
        of `batch_size` grouped into chunks of about `chunk_frames` frames and at most a shard."""
        fingerprint = shards.fingerprint_streamed(self.settings.params(), self.store.keys(split))
        writer = self.writers[split] = shards.ShardWriter(self.shard_dir / shards.version_dir(split, fingerprint),
                                                          split, fingerprint,
                                                          self.settings.shard_samples, self.settings.shard_bytes)
        skip = writer.n_processed  # complete shards hold exactly the first records in shard order
        self.n_done += skip
        size = self.settings.batch_size
        frames = self.settings.segments if self.adapter.kind == "clip" else 1
        # batches per chunk: about `chunk_frames` frames, at most a shard's worth of records
        per_chunk = max(1, min(self.settings.chunk_frames // frames, self.settings.shard_samples) // size)
        batch: list[Record] = []
        batches: list[list[Record]] = []
        index = 0
        for rec in self.store.records(split, skip):
            batch.append(rec)
            if len(batch) == size:
                batches.append(batch)
                batch = []
                if len(batches) == per_chunk:
                    yield Chunk(split, index, batches)
                    batches, index = [], index + 1
        if batch:
            batches.append(batch)
        if batches:
            yield Chunk(split, index, batches)

    def write(self, split: str, results: Results) -> None:
        writer = self.writers[split]
        for rec, res in results:
            if isinstance(res, Reject):
                writer.carry({"sample_id": rec.sample_id, "reject": self._reject_row(res)})
            else:
                res["row"]["source_path"] = relative(res["row"]["source_path"], self.root)
                writer.add(res["sample"], {k: v for k, v in res.items() if k != "sample"})
        self.n_done += len(results)

    def close(self, split: str) -> None:
        self.writers[split].close()

    def _reject_row(self, reject: Reject) -> dict[str, Any]:
        """A reject as the catalog keeps it: paths in it, the detail's too, relative to the raw root."""
        detail = reject.detail and reject.detail.replace(self.root + os.sep, "")
        return {**asdict(reject), "source_path": relative(reject.source_path, self.root), "detail": detail}

    def finish(self) -> IngestResult:
        """Catalog rows from the complete shards' stats, `_info.json`, and the atomic catalog swap."""
        try:
            return self._finish()
        finally:
            self.lock.release()

    def _parts(self) -> Iterator[dict[str, list[dict[str, Any]]]]:
        """The catalog rows, one shard's stats at a time: the adapter's rejects, then each shard's
        samples, AU labels, carried rejects and its `shards` row."""
        name = self.adapter.name
        yield {"rejects": [self._reject_row(r) for r in self.store.rejects()]}
        for split, writer in sorted(self.writers.items()):
            for summary in writer.done:
                stats = writer.read_stats(summary)
                rel = None if stats["shard"] is None else f"shards/{name}/{writer.directory.name}/{stats['shard']}"
                yield {
                    "samples": [{**item["row"], "shard": rel} for item in stats["samples"]],
                    "au_labels": [au for item in stats["samples"] for au in item["aus"]],
                    "rejects": [c["reject"] for c in stats["carried"]],
                    "shards": [] if rel is None else [{
                        "path": rel, "dataset": name, "split": split, "n_samples": stats["n_samples"],
                        "bytes": stats["bytes"], "sha256": stats["sha256"], "fingerprint": stats["fingerprint"]}],
                }

    def _finish(self) -> IngestResult:
        name = self.adapter.name
        done = [(split, s) for split, writer in sorted(self.writers.items()) for s in writer.done]
        n_samples = sum(s["n_samples"] for _, s in done)
        n_rejects = self.store.n_rejects + sum(s["n_carried"] for _, s in done)
        if n_samples + n_rejects != self.store.n_rows:
            raise AssertionError(f"{name}: {self.store.n_rows} rows read but {n_samples} samples + "
                                 f"{n_rejects} rejects")
        info_splits: dict[str, dict[str, Any]] = {}
        versions = {split: writer.directory.name for split, writer in self.writers.items()}
        for split, s in done:
            entry = info_splits.setdefault(split, {"n_samples": 0, "shards": []})
            if s["shard"] is not None:
                entry["n_samples"] += s["n_samples"]
                entry["shards"].append(f"{versions[split]}/{s['shard']}")
        params = self.settings.params()
        path = self.out / "catalog.duckdb"
        # Readers follow the catalog: it moves to the new shards in one commit, and only then do the
        # shards it pointed at before go. An interrupted or failed run leaves both as they were.
        catalog.replace_dataset(path, catalog.DatasetRows(
            dataset=name, raw_root=str(self.raw_root), rows_read=self.store.n_rows, params=params,
            parts=self._parts()), parquet_dir=self.out / "catalog")
        self.shard_dir.mkdir(parents=True, exist_ok=True)  # no writer made it when the adapter rejected every row
        shards.write_info(self.shard_dir, {
            "dataset": name, "splits": info_splits, "params": params,
            "fingerprint": shards.fingerprint(params, [s["fingerprint"] for _, s in done if s["shard"] is not None]),
            "label_spaces": LABEL_SPACES, "kind": self.adapter.kind,
        })
        shards.prune(self.shard_dir, [versions[split] for split, entry in info_splits.items() if entry["shards"]])
        return IngestResult(name, self.store.n_rows, n_samples, n_rejects, path)


def share_cores(workers: int | None, needs_detector: bool) -> tuple[int, int]:
    """(worker threads, onnxruntime threads per detector session), sharing out the cores.

    A detector wants the cores in one session (2 cores: 1 worker x 2 ORT threads 67 img/s against
    2 x 1 at 52); decoding and encoding alone want a thread per core (aligned: 1919 against 1517 img/s).
    """
    cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if needs_detector else cores
    return max(1, workers), max(1, cores // max(1, workers))


class Runner(Protocol):
    """What `drive` needs of an executor: start `process_chunk(settings, chunk)` somewhere, and a
    handle whose result it waits for in order (a thread pool's future, a Prefect or Dask future)."""

    def submit(self, settings: Settings, chunk: Chunk) -> Any: ...

    def result(self, handle: Any) -> Processed: ...


class ThreadRunner:
    """`process_chunk` on a thread pool: the library's own runner (`fer ingest --runner none`)."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(workers)

    def submit(self, settings: Settings, chunk: Chunk) -> Future:
        return self.pool.submit(process_chunk, settings, chunk)

    def result(self, handle: Future) -> Processed:
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def drive(job: IngestJob, runner: Runner, window: int,
          on_progress: Callable[[int, int], None] | None = None) -> IngestResult:
    """The one drive loop of every runner: at most `window` chunks in flight, results written to
    shards in record order and dropped as soon as they are written, then the catalog swap."""
    def write_oldest() -> None:
        job.write(split, runner.result(pending.popleft()).take())
        if on_progress:
            on_progress(job.n_done, job.n_records)

    for split in job.splits:
        pending: deque = deque()
        for chunk in job.chunks(split):
            pending.append(runner.submit(job.settings, chunk))
            if len(pending) >= window:
                write_oldest()
        while pending:
            write_oldest()
        job.close(split)
    return job.finish()


def start(job: IngestJob) -> int:
    """Share the cores for this job (`share_cores`, now that the records say whether a detector
    runs) and return the worker count; `job.settings` gets the detector threads."""
    workers, threads = share_cores(job.settings.workers, job.needs_detector)
    job.settings = replace(job.settings, workers=workers, threads=threads)
    return workers


def ingest(dataset: str, raw_root: str | Path, out: str | Path,
           on_progress: Callable[[int, int], None] | None = None, **settings: Any) -> IngestResult:
    """Raw layout -> aligned crops in WebDataset shards -> this dataset's rows in OUT/catalog.duckdb,
    on a thread pool; `settings` are `Settings` fields (flows.ingest drives the same job from
    Prefect tasks, Dask included)."""
    with IngestJob(dataset, raw_root, out, Settings(**settings)) as job:
        runner = ThreadRunner(start(job))
        try:
            return drive(job, runner, window=2 * job.settings.workers, on_progress=on_progress)
        finally:
            runner.close()
