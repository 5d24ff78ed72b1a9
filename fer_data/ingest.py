"""One dataset from its raw layout: adapter records -> decoded images -> aligned faces -> shards -> catalog.

Every row the adapter reads ends as samples or as one reject, so a user can always account for a
dataset: rows read = rows giving samples + rejects. A row gives one sample, or with `faces="all"`
one per face of its image (`<id>#<k>`, kept together in one shard), so samples >= rows giving samples.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Protocol

import cv2
import numpy as np

from fer_data import catalog, shards
from fer_data.datasets import BadRow, get_adapter
from fer_data.decode import MAX_CLIP_PIXELS, MAX_PIXELS, fit, read_image, text_pixels
from fer_data.faces.detectors import DETECTORS
from fer_data.faces import align, quality
from fer_data.faces.stage import AlignedFace, FaceAligner, FaceConfig, backend_for, face_geometry, uses_detector
from fer_data.faces.track import (DETECT_CHUNK, MAX_DETECTIONS, Detect, TrackedFace, Tracking, scan_frames,
                                  track_frames)
from fer_data.labels import LABEL_SPACES
from fer_data.record_store import Done, RecordStore, Stored, unpack
from fer_data.records import Record, Reject, TextSpan, printable, read_spans
from fer_data.settings import Settings
from fer_data.sampling import Sampling
from fer_data.video import Clip

LOCK_FILE = ".ingest.lock"
# Frames from which a job with more than one worker runs them as processes: a spawned worker's ~2 s
# of imports pay off past about 5000 frames at the 0.4 ms a frame they save (FER2013, 2 cores).
PROCESS_MIN_FRAMES = 5000
HASH_BLOCK = 2**20  # bytes an input file is hashed in at a time
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
    tracking: Tracking | None = None  # a clip the detector ran on: its face tracks
    faces: list[TrackedFace] | None = None  # ... and the main face at each of `frames`, in their pixels


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    rows_read: int
    n_samples: int
    n_rejects: int
    catalog: Path


def accounting(rows_read: int, n_samples: int, n_rejects: int) -> str:
    """rows read = samples + rejects, said as the ingest checked it: with `faces="all"` a row may give
    several samples, so then rows read = rows giving samples (and how many samples) + rejects."""
    kept = rows_read - n_rejects
    given = f"{n_samples} samples" if kept == n_samples else f"{kept} rows giving {n_samples} samples"
    return f"{rows_read} rows read = {given} + {n_rejects} rejects"


def load(rec: Record, segments: int, sampling: Sampling = Sampling("tsn"), detect: Detect | None = None,
         max_detections: int = MAX_DETECTIONS) -> Loaded:
    """Read and decode a record's source to RGB frames within the pixel budget (`fer_data.decode`):
    an image in `MAX_PIXELS`, a clip in `MAX_CLIP_PIXELS` over its frames. BadRow says what is wrong
    with it, an OSError's included (a 300-character name, a file it may not read). Frames decoded
    smaller than the source carry their size in `extra["decoded_size"]`, and the release's
    landmarks or face box in `rec` are scaled to them, so a given face aligns where it is.

    A clip's frames are picked by `sampling` (`segments` for `tsn`). With `detect`, the clip is
    tracked first (`fer_data.faces.track`: at most `max_detections` frames detected) and the
    frames are sampled inside its main face track's span, `faces` giving that face at each."""
    try:
        got = _load(rec, segments, sampling, detect, max_detections)
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


def _load(rec: Record, segments: int, sampling: Sampling, detect: Detect | None, max_detections: int) -> Loaded:
    if rec.pixels is not None:
        pixels = rec.pixels.read() if isinstance(rec.pixels, TextSpan) else rec.pixels
        pixels = text_pixels(pixels) if isinstance(pixels, str | bytes) else pixels
        data = np.ascontiguousarray(pixels).tobytes()
        rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels  # np.stack's copy: 5x
        return Loaded(rgb[None], Source(_sha(data), len(data), rgb.shape[1], rgb.shape[0]), {})
    if rec.kind == "image" and rec.frame_index is None:
        try:
            rgb, data, (width, height) = read_image(rec.source_path)
        except FileNotFoundError:
            raise BadRow("missing_file", f"{rec.source_path} does not exist") from None
        return Loaded(rgb[None], Source(_sha(data), len(data), width, height), {}, data)
    path = Path(rec.source_path)
    if not path.exists():
        raise BadRow("missing_file", f"{path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise BadRow("empty_file", f"{path} has 0 bytes")
    start, end = rec.frame_range or (rec.frame_index or 0, rec.frame_index)
    budget = MAX_PIXELS if rec.kind == "image" else MAX_CLIP_PIXELS // segments  # per frame
    tracking: Tracking | None = None
    try:
        clip = _open_clip(path, budget)
        n_frames = clip.n_frames - start if end is None else min(end, clip.n_frames - 1) - start + 1
        if n_frames <= 0:
            raise BadRow("empty_video", f"{path} has no frames in range {start}..{end} ({clip.n_frames} frames)")
        if rec.kind == "image":  # one frame of a video: its own pixels identify it
            frames = clip.read([start])
            data = frames[0].tobytes()
            width, height = clip.size or (frames.shape[2], frames.shape[1])
            return Loaded(frames, Source(_sha(data), len(data), width, height, 1, clip.fps), {})
        held: dict[int, np.ndarray] = {}
        first, span = 0, n_frames
        if detect is not None:
            tracking = _track(clip, start, n_frames, detect, max_detections, held)
            if tracking.main is None:
                return _untracked(rec, clip, n_frames, tracking)
            first, last = tracking.main.span
            span = last - first + 1
        keys = rec.extra.get("keyframes")
        try:
            indices = [first + i for i in sampling.indices(
                span, segments, clip.fps, keys and [keys[k] - start - first for k in sorted(keys, key=keys.get)])]
        except ValueError:
            raise BadRow("no_keyframes", f"sampling 'keyframes' but the release marks none for {rec.sample_id}") from None
        frames, scale = _read(clip, path, [start + i for i in indices], held, len(indices), segments)
    except (ValueError, OSError, IndexError) as err:
        if isinstance(err, BadRow):
            raise
        _local.clip = None  # a reader that failed mid-file is not reused for the next record
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        raise BadRow("corrupt_video", printable(message)) from None  # a frame's name may be no UTF-8
    width, height = clip.size or (frames.shape[2], frames.shape[1])
    extra: dict[str, Any] = {"frame_indices": [start + i for i in indices]}
    if span < segments and sampling.mode == "tsn":
        extra["short_clip"] = True
    faces = None
    if tracking is not None:
        faces = tracking.at(indices)
        if scale != 1.0:
            faces = [replace(f, box=tuple(v * scale for v in f.box), landmarks=f.landmarks * scale) for f in faces]
    return Loaded(frames, _clip_source(path, frames, n_frames, width, height, clip.fps), extra, None, tracking, faces)


def _clip_source(path: Path, frames: np.ndarray, n_frames: int, width: int, height: int, fps: float | None) -> Source:
    if path.is_file():
        digest, size = _file_digest(path, path.stat().st_mtime_ns), path.stat().st_size
    else:
        digest, size = _sha(b"".join(f.tobytes() for f in frames)), int(frames.nbytes)
    return Source(digest, size, width, height, n_frames, fps)


def _untracked(rec: Record, clip: Clip, n_frames: int, tracking: Tracking) -> Loaded:
    """A clip the detector found no face in (a `no_face` reject later): its source, no frames."""
    first = clip.read([(rec.frame_range or (0, 0))[0]])
    width, height = clip.size or (first.shape[2], first.shape[1])
    return Loaded(first[:0], _clip_source(Path(rec.source_path), first, n_frames, width, height, clip.fps), {},
                  None, tracking, [])


def _track(clip: Clip, start: int, n_frames: int, detect: Detect, max_detections: int,
           held: dict[int, np.ndarray]) -> Tracking:
    """The clip's face tracks, its frames decoded `DETECT_CHUNK` at a time. The scanned frames are
    kept in `held` (for sampling without decoding again) while they fit the clip's pixel budget."""
    scanned = scan_frames(n_frames, max_detections)
    pixels = 0

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal pixels
        for i in range(0, len(scanned), DETECT_CHUNK):
            part = scanned[i:i + DETECT_CHUNK]
            decoded = clip.read([start + f for f in part])
            pixels += decoded.shape[0] * decoded.shape[1] * decoded.shape[2]
            if pixels <= MAX_CLIP_PIXELS:
                held.update((start + f, rgb) for f, rgb in zip(part, decoded))
            else:
                held.clear()
            yield from zip(part, decoded)

    return track_frames(frames(), scanned, n_frames, detect)


def _read(clip: Clip, path: Path, absolute: list[int], held: dict[int, np.ndarray], n: int,
          segments: int) -> tuple[np.ndarray, float]:
    """The frames at `absolute`, and their scale against `clip`'s frames: more than `segments`
    frames share the clip's pixel budget, so they are decoded smaller (another reader)."""
    if n <= segments:
        if all(i in held for i in absolute):
            return np.stack([held[i] for i in absolute]), 1.0
        return clip.read(absolute), 1.0
    frames = Clip(path, MAX_CLIP_PIXELS // n).read(absolute)
    return frames, frames.shape[2] / fit(*(clip.size or frames.shape[2:0:-1]), clip.max_pixels)[0]


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
_LABELS_JSON = json.JSONEncoder(sort_keys=True)  # `json.dumps(labels, sort_keys=True)`'s text, its encoder made once


def in_source_pixels(geometry: dict[str, Any], decoded: list[int] | None, src: Source) -> dict[str, Any]:
    """Box, landmarks, face size and alignment matrix of frames decoded smaller than the source (the
    pixel budget, `extra.decoded_size`) mapped back to source pixels, which is what the catalog's columns mean."""
    if not decoded:
        return geometry
    sx, sy = decoded[0] / src.width, decoded[1] / src.height
    out = dict(geometry)
    for key in ("face_box", "landmarks"):
        if out.get(key) is not None:
            out[key] = [v / (sx if i % 2 == 0 else sy) for i, v in enumerate(out[key])]
    if out.get("face_size") is not None:  # a square's side: the geometric mean of the two scales
        out["face_size"] = out["face_size"] / (sx * sy) ** 0.5
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

    def __init__(self, faces: FaceConfig, quality: int, segments: int, sampling: str = "tsn",
                 min_face_coverage: float = 0.5, max_detections: int = MAX_DETECTIONS) -> None:
        self.aligner = FaceAligner(faces)
        self.size = faces.size
        self.quality = quality
        self.segments = segments
        self.sampling = Sampling.parse(sampling)
        self.min_face_coverage = min_face_coverage
        self.max_detections = max_detections

    def _load(self, rec: Record) -> Loaded:
        """`load` with this worker's sampling; a clip whose faces need a detector is tracked with it."""
        backend = backend_for(rec, self.aligner.config.detector) if rec.kind == "clip" else None
        detect = self.aligner.detector(backend) if backend in DETECTORS else None
        return load(rec, self.segments, self.sampling, detect, self.max_detections)

    def __call__(self, batch: list[Record]) -> Results:
        """Each record's result in order: images and clips go their own ways (`_images`, `_clips`)."""
        spanned = [rec for rec in batch if isinstance(rec.pixels, TextSpan)]
        for rec, text in zip(spanned, read_spans([rec.pixels for rec in spanned])):  # one open a file a batch
            if not isinstance(text, BadRow):  # else `load` reads it again, to reject the record saying why
                rec.pixels = text
        loaded: list[tuple[Record, Loaded]] = []
        out: dict[int, tuple[Record, dict[str, Any] | Reject]] = {}
        for i, rec in enumerate(batch):
            try:
                loaded.append((rec, self._load(rec)))
            except BadRow as err:
                out[i] = (rec, Reject(rec.dataset, rec.source_path, "decode", err.reason, err.detail))
        kept = iter(self._images([x for x in loaded if x[0].kind == "image"]))
        clips = iter(self._clips([x for x in loaded if x[0].kind == "clip"]))
        for i, rec in enumerate(batch):
            if i not in out:
                out[i] = next(kept) if rec.kind == "image" else next(clips)
        return [out[i] for i in range(len(batch))]

    def _sample(self, rec: Record, got: Loaded, kept: list[AlignedFace]) -> tuple[Record, dict[str, Any]]:
        """One sample: its crops (one, or T frames of a clip) and labels as shard files, and its catalog row."""
        names = ["jpg"] if rec.kind == "image" else [f"{t:02d}.jpg" for t in range(len(kept))]
        files = {name: self._jpeg(got, face) for name, face in zip(names, kept)}
        files["json"] = _LABELS_JSON.encode(shard_labels(rec)).encode()
        sample = shards.encode_sample(shards.sample_key(rec.sample_id), files)
        centre = kept[len(kept) // 2]
        decoded = got.extra.get("decoded_size")
        geometry = {**centre.geometry, **quality.columns(kept)}  # pose and quality: a clip's, the mean over its frames
        frames: list[dict[str, Any]] = []
        if rec.kind == "clip":
            geometry.update(n_tracks=None, face_coverage=None)
            if got.tracking is not None:
                geometry.update(n_tracks=len(got.tracking.tracks), face_coverage=got.tracking.coverage)
            frames = self._clip_frames(rec, got, kept)
        row = sample_row(rec, got.source, in_source_pixels(geometry, decoded, got.source))
        if got.extra:
            row["extra"] = {**(row["extra"] or {}), **got.extra}
        return rec, {"sample_id": rec.sample_id, "sample": sample, "row": row, "aus": au_rows(rec), "frames": frames}

    @staticmethod
    def _clip_frames(rec: Record, got: Loaded, kept: list[AlignedFace]) -> list[dict[str, Any]]:
        """The `clip_frames` rows: each sampled frame's index, and box and landmarks in source pixels."""
        rows = []
        for t, (index, face) in enumerate(zip(got.extra["frame_indices"], kept)):
            geo = in_source_pixels(face.geometry, got.extra.get("decoded_size"), got.source)
            tracked = got.faces[t] if got.faces else None
            rows.append({"sample_id": rec.sample_id, "t": t, "frame": index, "face_box": geo.get("face_box"),
                         "landmarks": geo.get("landmarks"), "score": geo.get("face_score"),
                         "interpolated": None if tracked is None else tracked.interpolated})
        return rows

    def _images(self, items: list[tuple[Record, Loaded]]) -> Results:
        """Image records: every image of the batch through the aligner at once (one detector batch);
        with `faces="all"` every face of an image (`_faces`)."""
        images = [(rec, got.frames[0]) for rec, got in items]
        if self.aligner.config.faces == "all":
            return [(rec, faces) if isinstance(faces, Reject) else (rec, self._faces(rec, got, faces))
                    for (rec, got), faces in zip(items, self.aligner.every(images))]
        return [(rec, face) if isinstance(face, Reject) else self._sample(rec, got, [face])
                for (rec, got), face in zip(items, self.aligner(images))]

    def _faces(self, rec: Record, got: Loaded, faces: list[AlignedFace]) -> dict[str, Any]:
        """Each face of one image its own sample `<id>#<k>` (k = 0 the largest; `extra` keeps k and the
        count), the row's labels copied to each: a label meant for one person of a group photo is then
        on every face. One result for the row: its samples' tar members together (one shard holds
        them all, so a resumed run never splits a row) and the rest of the rows in `more`."""
        made = [self._sample(replace(rec, sample_id=f"{rec.sample_id}#{k}",
                                     extra={**rec.extra, "face_index": k, "n_faces": len(faces)}), got, [face])[1]
                for k, face in enumerate(faces)]
        first, *more = made
        blob = shards.Sample(b"".join(m["sample"].blob for m in made), sum(m["sample"].size for m in made))
        return {**first, "sample": blob, "more": [{k: v for k, v in m.items() if k != "sample"} for m in more]}

    def _clips(self, items: list[tuple[Record, Loaded]]) -> Results:
        """Clip records. Tracked clips (`load` ran the detector) are aligned on their main face track's
        smoothed landmarks, every sampled frame (never a background warp); a clip with no face, or whose
        main track covers less than `min_face_coverage` of it, is a reject. The others (aligned
        releases, given landmarks): every frame of the batch through the aligner at once."""
        plain = iter(self.aligner([(rec, frame) for rec, got in items if got.tracking is None for frame in got.frames]))
        out: Results = []
        for rec, got in items:
            if got.tracking is None:
                faces = [next(plain) for _ in got.frames]
                bad = next((f for f in faces if isinstance(f, Reject)), None)
                out.append((rec, bad) if bad else self._sample(rec, got, faces))
            elif got.tracking.main is None:
                out.append((rec, Reject(rec.dataset, rec.source_path, "detect", "no_face",
                                        f"no frame of the clip has a face ({len(got.tracking.scanned)} detected)")))
            elif got.tracking.coverage < self.min_face_coverage:
                out.append((rec, Reject(rec.dataset, rec.source_path, "detect", "low_face_coverage",
                                        f"face_coverage {got.tracking.coverage:.3f} < {self.min_face_coverage}: the "
                                        f"main face track spans frames {got.tracking.main.span} of "
                                        f"{got.tracking.n_frames} ({len(got.tracking.tracks)} tracks)")))
            else:
                backend = backend_for(rec, self.aligner.config.detector)
                out.append(self._sample(rec, got, [self._tracked(frame, face, backend)
                                                   for frame, face in zip(got.frames, got.faces or [])]))
        return out

    def _tracked(self, frame: np.ndarray, face: TrackedFace, backend: str) -> AlignedFace:
        crop, matrix = align.align(frame, face.landmarks, self.size)
        return AlignedFace(crop, face_geometry(backend, matrix, face.box, face.score, face.landmarks))


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Lists of `n` consecutive items, the last one shorter (itertools.batched is Python 3.12's)."""
    it = iter(items)
    while part := list(itertools.islice(it, n)):
        yield part


def every_kth_frame(items: Iterable[Record | Reject], step: int) -> Iterator[Record | Reject]:
    """`Settings.frame_step` on a video-frame image release (DISFA, BP4D: `extra.frame` numbers its
    records): frames 1, 1 + step, ... only; the rest are not read. Rejects and other records pass."""
    for item in items:
        frame = item.extra.get("frame") if isinstance(item, Record) and item.kind == "image" else None
        if step == 1 or not isinstance(frame, int) or (frame - 1) % step == 0:
            yield item


class InputKeys:
    """Identity of each input as fingerprint JSON: id, labels, path relative to the raw root and the
    sha256 of its file. Content, not mtime or absolute path: a fresh clone, a copy or a `touch` gives
    the same fingerprint (so DVC sees the same shards), an edited file another. Rows inside one label
    file (`FILE#row=N`) share one hash of FILE for the whole job, and consecutive records of one video
    (DISFA's frames) one hash of the video.

    A label file is hashed on a thread while its rows are read (a 1M-row FER2013 CSV is 8 GB: about
    10 s of one core before the first row, with the second core idle); until then its rows' keys hold
    a placeholder, which `resolved` replaces by the hash. Use as a context manager: leaving it waits
    for the hashing thread.
    """

    def __init__(self, raw_root: str | Path) -> None:
        self.root = str(Path(raw_root).resolve())
        self._label_files: dict[str, tuple[str, Future]] = {}  # path -> (placeholder, its hash to come)
        self._mark = secrets.token_hex(16)  # in every placeholder: no label's text holds it by chance
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="label-file-hash")
        self._last: tuple[str, str | None] = ("", None)

    def __enter__(self) -> InputKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=exc[0] is not None)

    def __call__(self, rec: Record) -> str:
        path, inside_file, _ = rec.source_path.partition("#")
        if inside_file:
            if path not in self._label_files:
                self._label_files[path] = (f"{self._mark}:{len(self._label_files)}", self._hasher.submit(_content, path))
            found = self._label_files[path][0]
        else:
            if self._last[0] != path:
                self._last = (path, _content(path))
            found = self._last[1]
        return shards.fingerprint_json([rec.sample_id, shard_labels(rec), relative(rec.source_path, self.root),
                                        found, rec.landmarks, rec.face_box])

    def resolved(self, keys: Iterable[str]) -> Iterator[str]:
        """`keys` this object made (all of them made before: the placeholders are those known when
        the first key is taken), each label file's placeholder replaced by its hash's JSON: the text
        a key made with the hash at hand has (waits for the hashes)."""
        swaps = [(shards.fingerprint_json(mark), shards.fingerprint_json(digest.result()))
                 for mark, digest in self._label_files.values()]
        for key in keys:
            if swaps and self._mark in key:
                for mark, digest in swaps:
                    key = key.replace(mark, digest)
            yield key


def _content(path: str) -> str | None:
    """sha256 of a file, or of a frame folder's (name, sha256) list; None if missing or unreadable
    (decoding then says what is wrong)."""
    try:
        try:
            # os.read on the descriptor: 16 µs a 4 KB file, where Python's file object took 30
            # (file_digest's 256 KiB buffer, 50): a fifth of reading a folder of aligned JPEGs
            fd = os.open(path, os.O_RDONLY)
            try:
                digest = hashlib.sha256()
                while block := os.read(fd, HASH_BLOCK):
                    digest.update(block)
                return digest.hexdigest()
            finally:
                os.close(fd)
        except IsADirectoryError:
            return shards.fingerprint(sorted((e.name, _content(e.path)) for e in os.scandir(path) if e.is_file()))
    except OSError:
        return None


def relative(source_path: str, root: str) -> str:
    """A source path as the catalog keeps it: relative to the dataset's raw root (`ingests.raw_root`),
    so a catalog, its Parquet and its fingerprints are the same wherever the data sits. `root` is resolved
    (no `..`, no trailing separator): a normalized path under it is then its tail, without relpath's
    two abspath calls (twice a row: the input key and the catalog row)."""
    if not os.path.isabs(source_path):
        return source_path
    if source_path.startswith(root + os.sep) and os.path.normpath(source_path) == source_path:
        return source_path[len(root) + 1:]
    return os.path.relpath(source_path, root)



class Chunk:
    """A run of consecutive batches of one split: the unit a runner schedules. A plain object, so an
    orchestrator passes it through as one value instead of walking a thousand records; the records
    in their stored form (two strings each, `record_store.unpack`), cheap to send to a process."""

    __slots__ = ("split", "index", "batches", "root")

    def __init__(self, split: str, index: int, batches: list[list[Stored]], root: str) -> None:
        self.split, self.index, self.batches, self.root = split, index, batches, root

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
        # OpenCV's own pool the size of the detector's (`share_cores`): with a worker per core each
        # running OpenCV on every core, their calls queued for its one pool, spinning. Process-wide,
        # the same value from every worker of a job; the pixels do not depend on it.
        cv2.setNumThreads(settings.threads)
        faces = FaceConfig(detector=settings.detector, faces=settings.faces, size=settings.size,
                           model_path=settings.detector_model, threads=settings.threads)
        cache[key] = Worker(faces, settings.quality, settings.segments, settings.sampling,
                            settings.min_face_coverage, settings.track_frames)
    return cache[key](batch)


def written(rec: Record, res: dict[str, Any] | Reject, root: str) -> Done:
    """A record's result from `Worker` as the writer takes it, made where the record was processed, so
    the one writer only appends: (sample_id, its tar members or None for a reject, their payload size,
    its stats entry as JSON text (`shards.meta_json`): the sample's catalog rows, or `{"sample_id",
    "reject"}`), paths relative to the raw `root`. A plain tuple: pickled in a third of the time a
    dataclass took, and unpickled in a seventh (7 of a row's µs across the two processes)."""
    if isinstance(res, Reject):
        return rec.sample_id, None, None, shards.meta_json({"sample_id": rec.sample_id,
                                                             "reject": reject_row(res, root)})
    for item in (res, *res.get("more", ())):  # `more` (the row's other faces) rides with its first sample
        item["row"]["source_path"] = relative(item["row"]["source_path"], root)
    sample = res["sample"]
    return rec.sample_id, sample.blob, sample.size, shards.meta_json({k: v for k, v in res.items() if k != "sample"})


def reject_row(reject: Reject, root: str) -> dict[str, Any]:
    """A reject as the catalog keeps it: paths in it, the detail's too, relative to the raw root."""
    detail = reject.detail and reject.detail.replace(root + os.sep, "")
    return {**asdict(reject), "source_path": relative(reject.source_path, root), "detail": detail}


class Processed:
    """A chunk's results in record order. One plain object, so an orchestrator tracks one result
    per chunk (Prefect links every item of a returned list to its task run); `take` moves the
    results out, so the encoded crops are freed once written even while an orchestrator's
    bookkeeping (a Prefect state in a reference cycle, kept until the next full GC) still holds this."""

    __slots__ = ("_results",)

    def __init__(self, results: list[Done]) -> None:
        self._results: list[Done] | None = results

    def take(self) -> list[Done]:
        results, self._results = self._results, None
        if results is None:
            raise RuntimeError("a chunk's results were taken twice")
        return results


def process_chunk(settings: Settings, chunk: Chunk) -> Processed:
    """A chunk's batches through `process_batch`, each result `written` for the shard writer."""
    return Processed([written(rec, res, chunk.root) for batch in chunk.batches
                      for rec, res in process_batch(settings, [unpack(stored) for stored in batch])])


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
    Each shard's catalog rows go into the catalog's next version (`catalog.DatasetWriter`, which
    locks the catalog from the first `chunks` on) as the shard completes, while the workers go on;
    `finish` commits them, leaving the `with` without it drops them.
    """

    def __init__(self, dataset: str, raw_root: str | Path, out: str | Path, settings: Settings = Settings(),
                 early: bool = False) -> None:
        self.adapter = get_adapter(dataset)
        self.raw_root = Path(raw_root)
        self.out = Path(out)
        self.settings = settings
        self.needs_detector = False
        self.keys = InputKeys(raw_root)
        self.root = self.keys.root
        self.store = RecordStore()
        self.early = EarlyStart(self) if early else None

        def seen(rec: Record, stored: Stored) -> None:
            self.needs_detector = self.needs_detector or uses_detector(rec, settings.detector)
            if self.early:
                self.early.offer(rec, stored)

        # What lives before the job (modules, Prefect's objects) lives through it: frozen until the job
        # lets go (`_let_go`, which every way out of here and `__exit__` run), the full collections that
        # the job's many short-lived objects set off no longer walk it (40k aligned JPEGs: the main
        # process's CPU a row 0.19-0.20 -> 0.17-0.18 ms; 40k FER2013 rows' catalog insert 2.2-2.8 ->
        # 1.8-2.3 s). Worker processes freeze their imports (`_exit_with`).
        gc.freeze()
        try:
            with self.keys:
                self.store.fill(every_kth_frame(self.adapter.records(raw_root), settings.frame_step), self.keys, seen)
            if self.early:
                self.early.drain()
            self.lock = OutputLock(self.out, f"ingest of {self.adapter.name}")
        except BaseException:
            self._let_go()
            raise
        self.shard_dir = self.out / "shards" / self.adapter.name
        self.writers: dict[str, shards.ShardWriter] = {}
        self.n_records = self.store.n_records
        self.n_done = 0
        self.catalog: catalog.DatasetWriter | None = None  # opened by the first shard writer (`_rows_of`)
        self.n_samples: dict[str, int] = {}  # per split, in the catalog so far
        self._fed: dict[str, int] = {}  # per split, the writer's complete shards whose rows are in

    def __enter__(self) -> IngestJob:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self.writers.values():
            writer.abandon()  # after an error: the unfinished shard's temp file, which a resumed run deletes
        try:
            if self.catalog is not None:
                self.catalog.__exit__(*exc)  # not committed (an error, no `finish`): the catalog as it was
        finally:
            self.lock.release()
            self._let_go()

    def _let_go(self) -> None:
        if self.early:
            self.early.close()
        self.store.close()
        gc.unfreeze()

    @property
    def frames_per_record(self) -> int:
        """Frames a record is processed as: a clip's sampled frames, else one image."""
        return self.settings.segments if self.adapter.kind == "clip" else 1

    @property
    def splits(self) -> list[str]:
        return self.store.splits

    @property
    def chunk_batches(self) -> int:
        """Batches in a chunk: about `chunk_frames` frames, at most a shard's worth of records."""
        return max(1, min(self.settings.chunk_frames // self.frames_per_record,
                          self.settings.shard_samples) // self.settings.batch_size)

    def chunks(self, split: str) -> Iterator[Chunk | Processed]:
        """The records of `split` not yet in complete shards, read lazily in shard order, as batches
        of `batch_size` grouped into chunks of `chunk_batches`; a run of records processed already
        (`EarlyStart`) comes as their results."""
        fingerprint = shards.fingerprint_streamed(self.settings.params(), self.keys.resolved(self.store.keys(split)))
        writer = self.writers[split] = shards.ShardWriter(self.shard_dir / shards.version_dir(split, fingerprint),
                                                          split, fingerprint,
                                                          self.settings.shard_samples, self.settings.shard_bytes)
        skip = writer.n_processed  # complete shards hold exactly the first records in shard order
        self.n_done += skip
        self._rows_of(split)
        size, per_chunk = self.settings.batch_size, self.chunk_batches
        index = 0
        for early, run in itertools.groupby(self.store.records(split, skip), key=lambda item: item[1] is not None):
            if early:  # processed while the records were read (`EarlyStart`): their results, a chunk's worth each
                for part in _batched((done for _, done in run), size * per_chunk):
                    yield Processed(part)
            else:
                for batches in _batched(_batched((stored for stored, _ in run), size), per_chunk):
                    yield Chunk(split, index, batches, self.root)
                    index += 1

    def write(self, split: str, results: list[Done]) -> None:
        """A chunk's results into `split`'s shards, in order: one `add` per row giving samples."""
        writer = self.writers[split]
        for _, blob, size, meta in results:
            if blob is None:
                writer.carry(meta)
            else:
                writer.add(blob, size, meta)
        self.n_done += len(results)
        self._rows_of(split)

    def close(self, split: str) -> None:
        self.writers[split].close()
        self._rows_of(split)

    def _rows_of(self, split: str) -> None:
        """The catalog rows of `split`'s shards completed since the last call (a resumed run's kept ones
        first), added while later chunks are processed."""
        rows = self._catalog()
        writer = self.writers[split]
        for summary in writer.done[self._fed.get(split, 0):]:
            rows.add(self._part(split, writer, summary))
        self._fed[split] = len(writer.done)

    def _catalog(self) -> catalog.DatasetWriter:
        """The dataset's new catalog rows, opened (and the catalog locked) when the first shard writer
        starts, beginning with the release's own rejects."""
        if self.catalog is None:
            self.catalog = catalog.DatasetWriter(self.out / "catalog.duckdb", self.adapter.name).__enter__()
            self.catalog.add({"rejects": [reject_row(r, self.root) for r in self.store.rejects()]})
        return self.catalog

    def finish(self) -> IngestResult:
        """The accounting check, the last shards' catalog rows, the atomic catalog swap, `_info.json`."""
        try:
            return self._finish()
        finally:
            self.lock.release()

    def _part(self, split: str, writer: shards.ShardWriter, summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """One complete shard's catalog rows from its stats: its samples, AU labels, clip frames, carried
        rejects and its `shards` row. The stats hold one item per row giving samples, its other faces
        in `more`: `n_samples[split]` adds up the samples."""
        stats = writer.read_stats(summary)
        rel = None if stats["shard"] is None else f"shards/{self.adapter.name}/{writer.directory.name}/{stats['shard']}"
        items = [sample for item in stats["samples"] for sample in (item, *item.get("more", ()))]
        self.n_samples[split] = self.n_samples.get(split, 0) + len(items)
        return {
            "samples": [{**item["row"], "shard": rel} for item in items],
            "au_labels": [au for item in items for au in item["aus"]],
            "clip_frames": [f for item in items for f in item.get("frames", ())],
            "rejects": [c["reject"] for c in stats["carried"]],
            "shards": [] if rel is None else [{
                "path": rel, "dataset": self.adapter.name, "split": split, "n_samples": len(items),
                "bytes": stats["bytes"], "sha256": stats["sha256"], "fingerprint": stats["fingerprint"]}],
        }

    def _finish(self) -> IngestResult:
        name = self.adapter.name
        done = [(split, s) for split, writer in sorted(self.writers.items()) for s in writer.done]
        n_rows_kept = sum(s["n_samples"] for _, s in done)  # a shard's n_samples counts rows (`_part`)
        n_rejects = self.store.n_rejects + sum(s["n_carried"] for _, s in done)
        if n_rows_kept + n_rejects != self.store.n_rows:
            raise AssertionError(f"{name}: {self.store.n_rows} rows read but {n_rows_kept} rows giving samples + "
                                 f"{n_rejects} rejects")
        info_splits: dict[str, dict[str, Any]] = {}
        versions = {split: writer.directory.name for split, writer in self.writers.items()}
        for split, s in done:
            entry = info_splits.setdefault(split, {"n_samples": 0, "shards": []})
            if s["shard"] is not None:
                entry["shards"].append(f"{versions[split]}/{s['shard']}")
        params = self.settings.params()  # every complete shard's rows are in: `write` and `close` added them
        # Readers follow the catalog: it moves to the new shards in one commit, and only then do the
        # shards it pointed at before go. An interrupted or failed run leaves both as they were.
        rows = self._catalog()  # opened here when the adapter rejected every row (no shard writer)
        rows.commit(str(self.raw_root), self.store.n_rows, params)
        for split, entry in info_splits.items():
            entry["n_samples"] = self.n_samples.get(split, 0)
        n_samples = sum(self.n_samples.values())
        self.shard_dir.mkdir(parents=True, exist_ok=True)  # no writer made it when the adapter rejected every row
        shards.write_info(self.shard_dir, {
            "dataset": name, "splits": info_splits, "params": params,
            "fingerprint": shards.fingerprint(params, [s["fingerprint"] for _, s in done if s["shard"] is not None]),
            "label_spaces": LABEL_SPACES, "kind": self.adapter.kind,
        })
        shards.prune(self.shard_dir, [versions[split] for split, entry in info_splits.items() if entry["shards"]])
        return IngestResult(name, self.store.n_rows, n_samples, n_rejects, rows.path)


def share_cores(workers: int | None, needs_detector: bool) -> tuple[int, int]:
    """(workers, threads per worker: onnxruntime's per detector session and OpenCV's pool),
    sharing out the cores.

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


class LocalRunner:
    """`process_chunk` on this machine: the library's own runner (`fer ingest --runner none`), and
    where the Prefect flow's tasks send their chunks. `workers` spawned processes if `processes`,
    else `workers` threads of this one.

    Processes because the cores are otherwise not used: with threads, the Python of decoding,
    measuring and packing a record, and the writer's, share one interpreter lock, and two threads
    gave a 2-core machine 1.3 cores' work (1000 FER2013 rows/s against the bare loop's 1650-2000
    on one core). Spawned, not forked: a fork would copy the writer's open shard, the output lock
    and the threads of an orchestrator; a spawned worker starts clean (about 2 s of imports).
    """

    def __init__(self, workers: int, processes: bool) -> None:
        self.pool: Executor = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=_exit_with, initargs=(os.getpid(),))
                               if processes else ThreadPoolExecutor(workers))

    def submit(self, settings: Settings, chunk: Chunk) -> Future:
        return self.pool.submit(process_chunk, settings, chunk)

    def result(self, handle: Future) -> Processed:
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exit_with(parent: int) -> None:
    """A worker process's start: its imports frozen out of the garbage collector's walks (`IngestJob`
    says why), and a watch on the ingest that started it: once that one is gone (a kill -9 gives
    it no time to stop its workers), the worker exits too. It would wait for work forever otherwise:
    each worker holds a copy of its queue's write end, so the queue never reads as closed."""
    gc.freeze()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-ingest", daemon=True).start()


def drive(job: IngestJob, runner: Runner, window: int, on_progress: Callable[[int, int], None] | None = None) -> None:
    """The one drive loop of every runner: at most `window` chunks in flight, results written to
    shards in record order and dropped as soon as they are written (a run processed early comes as
    its results). `job.finish()` (the catalog swap) comes after, once the caller has let its workers
    go: their memory is not needed for it."""
    def write_oldest() -> None:
        oldest = pending.popleft()
        job.write(split, (oldest if isinstance(oldest, Processed) else runner.result(oldest)).take())
        if on_progress:
            on_progress(job.n_done, job.n_records)

    for split in job.splits:
        pending: deque = deque()
        for chunk in job.chunks(split):
            pending.append(chunk if isinstance(chunk, Processed) else runner.submit(job.settings, chunk))
            if len(pending) >= window:
                write_oldest()
        while pending:
            write_oldest()
        job.close(split)


def start(job: IngestJob) -> int:
    """Share the cores for this job (`share_cores`, now that the records say whether a detector
    runs) and return the worker count; `job.settings` gets the worker and detector thread counts."""
    workers, threads = share_cores(job.settings.workers, job.needs_detector)
    job.settings = replace(job.settings, workers=workers, threads=threads)
    return workers


def local_runner(job: IngestJob) -> LocalRunner:
    """The started job's workers on this machine: processes when more than one works on at least
    `PROCESS_MIN_FRAMES` frames and the main script allows it (`spawn_safe`), unless
    `Settings.processes` says otherwise. The processes `EarlyStart` started, if they fit."""
    workers = job.settings.workers or 1
    processes = wants_processes(job.settings, job.n_records * job.frames_per_record)
    early = job.early and job.early.hand_over(workers, processes)
    return early or LocalRunner(workers, processes)


def wants_processes(settings: Settings, frames: int) -> bool:
    """Processes for `frames` frames: `Settings.processes` if set, else when more than one worker
    works on at least `PROCESS_MIN_FRAMES` frames and the main script allows it (`spawn_safe`)."""
    if settings.processes is not None:
        return settings.processes
    return (settings.workers or 1) > 1 and frames >= PROCESS_MIN_FRAMES and spawn_safe()


class EarlyStart:
    """Records processed while the release is still being read into the store, so the second core
    does not wait for the whole read (a tenth of a row's time for FER2013's CSV, a fifth for a folder
    of JPEGs, where hashing each file is part of reading; 100k CSV rows: 64-68 s against 72-74 s).
    One chunk at a time, in read order, on one worker process of the pool `local_runner` then keeps
    (a pool spawns its processes as work comes): with both workers busy the read took 1.9x as long
    and nothing was gained. A chunk goes only when the last is back (the read never waits), and the
    results go into the store, which hands them back in shard order (`IngestJob.chunks`); the other
    records are processed as before. Same bytes: a record's result does not depend on which chunk
    it rode in, for the records taken: images that need no detector (a detector batches its images
    and changes how the cores are shared). It starts where `local_runner` would choose processes:
    once `PROCESS_MIN_FRAMES` records are read, or at once with `Settings.processes`; never with
    threads, which would share the reading's interpreter.
    """

    def __init__(self, job: IngestJob) -> None:
        self.job = job
        workers, threads = share_cores(job.settings.workers, False)
        self.settings = replace(job.settings, workers=workers, threads=threads)
        self.on = workers > 1 and job.settings.processes is not False and job.adapter.kind == "image"
        self.size = job.chunk_batches * job.settings.batch_size
        self.batch: list[Stored] = []
        self.pending: deque[Future] = deque()
        self.runner: LocalRunner | None = None
        self.n_read = self.n_early = self.n_records = 0  # records read; chunks and records processed early

    def offer(self, rec: Record, stored: Stored) -> None:
        """One record as it is stored: into the next chunk, which goes to the worker if it is free."""
        if not self.on:
            return
        if self.job.needs_detector or rec.kind != "image":
            self.on = False
            return
        self.n_read += 1
        self.batch.append(stored)
        if len(self.batch) < self.size:
            return
        batch, self.batch = self.batch, []
        self._collect(wait=False)
        if self.runner is None:
            if self.settings.processes is None and self.n_read < PROCESS_MIN_FRAMES:
                return  # not yet: a job this small stays on threads
            if not wants_processes(self.settings, self.n_read):
                self.on = False
                return
            self.runner = LocalRunner(self.settings.workers, True)
        if not self.pending:
            self.pending.append(self.runner.submit(self.settings, Chunk(
                "early", self.n_early, list(_batched(batch, self.settings.batch_size)), self.job.root)))
            self.n_early += 1

    def _collect(self, wait: bool) -> None:
        """Results of the chunks done (all of them if `wait`) into the store. A chunk that failed is left
        to the ordinary path, where its error meets the runner's retries; a broken pool ends early work."""
        while self.pending and (wait or self.pending[0].done()):
            try:
                results = self.runner.result(self.pending.popleft()).take()
            except BrokenExecutor:
                self.on = False
                self.pending.clear()
                self.close()
                return
            except Exception:
                continue
            self.job.store.put_done(results)
            self.n_records += len(results)

    def drain(self) -> None:
        """The read has ended: the chunks in flight into the store."""
        self._collect(wait=True)

    def hand_over(self, workers: int, processes: bool) -> LocalRunner | None:
        """The running worker processes, if the job wants the same (it then closes them)."""
        runner, self.runner = self.runner, None
        if runner is not None and (workers, processes) != (self.settings.workers, True):
            runner.close()
            return None
        return runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


@functools.cache  # one answer, one warning, per process (`EarlyStart` asks, then `local_runner`)
def spawn_safe() -> bool:
    """Whether worker processes can be spawned here. Each one runs the main script again (as
    `__mp_main__`, Python's rule for spawned processes), so a script calling `ingest` must keep the
    call under `if __name__ == "__main__":`; one with no such guard would start an ingest in every
    worker, so it gets threads instead, and a warning saying how to get processes."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:  # the interactive interpreter, a notebook: nothing runs again
        return True
    try:
        guarded = "__main__" in Path(path).read_text(errors="replace")
    except OSError:
        guarded = False
    if not guarded:
        log.warning("%s has no `if __name__ == \"__main__\":` guard: the ingest's workers run as threads of "
                    "this process (slower); put the call under the guard for worker processes", path)
    return guarded


def ingest(dataset: str, raw_root: str | Path, out: str | Path,
           on_progress: Callable[[int, int], None] | None = None, **settings: Any) -> IngestResult:
    """Raw layout -> aligned crops in WebDataset shards -> this dataset's rows in OUT/catalog.duckdb,
    on this machine's workers (`local_runner`: processes for a large job, so a script calls this
    under `if __name__ == "__main__":`); `settings` are `Settings` fields (flows.ingest drives the
    same job from Prefect tasks, Dask included)."""
    with IngestJob(dataset, raw_root, out, Settings(**settings), early=True) as job:
        start(job)
        with local_runner(job) as runner:
            drive(job, runner, window=2 * job.settings.workers, on_progress=on_progress)
        return job.finish()
