"""Video frames: decord (PyAV fallback) for video files, numerically sorted folders for frame releases
(which frames a sample takes: `fer_data.sampling`).

A video's header is checked against its stream before decord reads it (`probe`), and frames come
decoded within a pixel budget (`Clip.max_pixels`), so a lying header or a 4K clip cannot take
the process's memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_data.decode import MAX_PIXELS, fit, read_image
from fer_data.records import BadRow

FRAME_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# A header claiming more frames than this, or than a frame per 8 bytes of its file, is checked against
# the packets of its stream: decord sizes a table by the claim (24 bytes a frame) before reading any.
MAX_HEADER_FRAMES = 2**20


def _number(path: Path) -> tuple[int, str]:
    """Sort key of a frame file: the last integer in its name (img2 < img10), then the name."""
    nums = re.findall(r"\d+", path.stem)
    return (int(nums[-1]) if nums else -1, path.name)


def frame_files(folder: Path) -> list[Path]:
    """The frames of a frame-folder release, numerically sorted (00001.jpg, img46.jpg, ...)."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_number)


def read_frame(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB pixels of one frame file within `max_pixels`, and its full (width, height); ValueError
    naming the frame when it does not decode: one bad frame makes its clip a `corrupt_video`."""
    try:
        rgb, _, size = read_image(path, max_pixels)
    except BadRow as err:
        raise ValueError(f"frame {err.detail}") from None
    return rgb, size


def _message(err: Exception) -> str:
    """A decoder's error without the clock time decord stamps on it, so the same file gives the same reject."""
    return re.sub(r"\[\d\d:\d\d:\d\d\] ", "", str(err)).strip()


def probe(path: Path) -> tuple[int, int]:
    """(width, height) of a video's stream, once its header's frame count has been found true enough.

    decord takes the count from the header (its frame number, else average rate x duration) and
    allocates by it: a 3 KB file claiming a 1e12 ms duration threw std::bad_alloc and aborted the
    process. A claim past `MAX_HEADER_FRAMES` or one frame per 8 bytes is counted against the
    stream's packets (demuxed, not decoded); over twice the real count (plus 16) is a ValueError.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            claimed = stream.frames or float(stream.average_rate or 0) * (container.duration or 0) / 1e6
            if claimed > min(MAX_HEADER_FRAMES, path.stat().st_size // 8):
                real = sum(1 for packet in container.demux(stream) if packet.size)
                if claimed > 2 * real + 16:
                    raise ValueError(f"{path}: its header claims {claimed:.0f} frames (frame count "
                                     f"{stream.frames}, {float(container.duration or 0) / 1e6:.0f} s at "
                                     f"{stream.average_rate} fps) but its stream holds {real}")
    except (av.error.FFmpegError, IndexError) as err:
        raise ValueError(f"{path}: expected a readable video ({_message(err)})") from err
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: expected a frame size in the video stream, found {width} x {height}")
    return width, height


@dataclass
class Clip:
    """A readable frame source: a video file or a frame folder, each frame decoded within
    `max_pixels` (downscaled, aspect kept). `size` is the full (width, height): the video's, or
    that of a folder's frames read last."""

    path: Path
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._files = frame_files(self.path) if self.path.is_dir() else None
        self._reader = None
        self.size: tuple[int, int] | None = None
        if self._files is None:
            self.n_frames, self.fps = self._open_video()
        else:
            self.n_frames, self.fps = len(self._files), None

    def _open_video(self) -> tuple[int, float | None]:
        self.size = probe(self.path)
        # Always the size asked for: the output is bounded even when the codec's frames differ from
        # the header's (at the header's size decord's frames are byte-identical to its default).
        self._out = fit(*self.size, self.max_pixels)
        try:
            from decord import VideoReader, cpu

            self._reader = VideoReader(str(self.path), ctx=cpu(0), num_threads=1,
                                       width=self._out[0], height=self._out[1])
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
            decoded = [read_frame(self._files[i], self.max_pixels) for i in absolute]
            self.size = decoded[0][1]
            return np.stack([rgb for rgb, _ in decoded])
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
                        got[i] = frame.reformat(width=self._out[0], height=self._out[1], format="rgb24").to_ndarray()
                    if i >= max(absolute):
                        break
        except av.error.FFmpegError as err:
            raise ValueError(f"{self.path}: expected frames {list(absolute)} to decode ({_message(err)})") from err
        missing = sorted(wanted - set(got))
        if missing:
            raise ValueError(f"{self.path}: expected frames {missing}, but the video ends before them")
        return np.stack([got[i] for i in absolute])
