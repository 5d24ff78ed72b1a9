"""Video frames: decord (PyAV fallback) for video files, numerically sorted folders for frame releases,
and TSN sampling of T segment centres.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FRAME_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def _number(path: Path) -> tuple[int, str]:
    """Sort key of a frame file: the last integer in its name (img2 < img10), then the name."""
    nums = re.findall(r"\d+", path.stem)
    return (int(nums[-1]) if nums else -1, path.name)


def frame_files(folder: Path) -> list[Path]:
    """The frames of a frame-folder release, numerically sorted (00001.jpg, img46.jpg, ...)."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_number)


def read_frame(path: Path) -> np.ndarray:
    """RGB pixels of one frame file; ValueError naming it when it does not decode (PIL's messages do not)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"frame {path}: expected a decodable image ({type(err).__name__}: {err})") from None


def _message(err: Exception) -> str:
    """A decoder's error without the clock time decord stamps on it, so the same file gives the same reject."""
    return re.sub(r"\[\d\d:\d\d:\d\d\] ", "", str(err)).strip()


def tsn_indices(n_frames: int, segments: int) -> list[int]:
    """Centres of `segments` equal segments over `n_frames` (TSN test-time sampling).

    Fewer frames than segments repeat frames, in order; the caller flags such clips.
    """
    if n_frames <= 0:
        raise ValueError("no frames")
    return [min(n_frames - 1, int((i + 0.5) * n_frames / segments)) for i in range(segments)]


@dataclass
class Clip:
    """A readable frame source: a video file or a frame folder."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._files = frame_files(self.path) if self.path.is_dir() else None
        self._reader = None
        if self._files is None:
            self.n_frames, self.fps = self._open_video()
        else:
            self.n_frames, self.fps = len(self._files), None

    def _open_video(self) -> tuple[int, float | None]:
        try:
            from decord import VideoReader, cpu

            self._reader = VideoReader(str(self.path), ctx=cpu(0), num_threads=1)
            return len(self._reader), float(self._reader.get_avg_fps())
        except ImportError:
            pass
        except Exception as err:  # decord raises its own DECORDError for unreadable files
            raise ValueError(f"{self.path}: expected a readable video ({_message(err)})") from err
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                frames = sum(1 for _ in container.decode(stream))
                rate = stream.average_rate
                return frames, float(rate) if rate else None
        except (av.error.FFmpegError, IndexError) as err:
            raise ValueError(f"{self.path}: expected a readable video ({_message(err)})") from err

    def read(self, absolute: Sequence[int]) -> np.ndarray:
        """RGB frames [len(indices), H, W, 3] at these frame indices; ValueError naming the file (and frame)
        when one does not decode: a video can open fine and still hold a corrupt packet."""
        if self._files is not None:
            return np.stack([read_frame(self._files[i]) for i in absolute])
        if self._reader is not None:
            from decord import DECORDError

            try:
                return self._reader.get_batch(list(absolute)).asnumpy()
            except DECORDError as err:
                raise ValueError(f"{self.path}: expected frames {list(absolute)} to decode ({_message(err)})") from err
        return self._read_pyav(absolute)

    def _read_pyav(self, absolute: Sequence[int]) -> np.ndarray:
        import av

        wanted = set(absolute)
        got: dict[int, np.ndarray] = {}
        try:
            with av.open(str(self.path)) as container:
                for i, frame in enumerate(container.decode(container.streams.video[0])):
                    if i in wanted:
                        got[i] = frame.to_ndarray(format="rgb24")
                    if i >= max(absolute):
                        break
        except av.error.FFmpegError as err:
            raise ValueError(f"{self.path}: expected frames {list(absolute)} to decode ({_message(err)})") from err
        missing = sorted(wanted - set(got))
        if missing:
            raise ValueError(f"{self.path}: expected frames {missing}, but the video ends before them")
        return np.stack([got[i] for i in absolute])
