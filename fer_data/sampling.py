"""Which frames of a clip a sample holds: `Sampling` (TSN segment centres, a rate, a stride, every
frame, the release's keyframes). Light (no numpy), so `Settings` checks a mode without loading
the decoders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def tsn_indices(n_frames: int, segments: int) -> list[int]:
    """Centres of `segments` equal segments over `n_frames` (TSN test-time sampling).

    Fewer frames than segments repeat frames, in order; the caller flags such clips.
    """
    if n_frames <= 0:
        raise ValueError("no frames")
    return [min(n_frames - 1, int((i + 0.5) * n_frames / segments)) for i in range(segments)]


SAMPLING_MODES = ("tsn", "fps:N", "stride:K", "all", "keyframes")
ASSUMED_FPS = 25.0  # `fps:N` on a frame folder (no rate in it): the rate of DFEW's and FERV39K's movie clips


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip (or of its main face track's span) become the sample's frames.

    - `tsn`: the centres of `segments` equal segments (fixed T; short spans repeat frames, flagged).
    - `fps:N`: N frames per second of video (a frame folder is taken as `ASSUMED_FPS`).
    - `stride:K`: every K-th frame.
    - `all`: every frame.
    - `keyframes`: the frames the release marks (CASME II: onset, apex, offset), in order.
    All but `tsn` give a variable number of frames per clip (the loader pads a batch, see
    `fer_data.loaders`); the clip's pixel budget is shared by all of them (`fer_data.decode`).
    """

    mode: str
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Sampling:
        """`tsn`, `fps:N` (N > 0), `stride:K` (integer K >= 1), `all` or `keyframes`; ValueError in one line."""
        mode, _, arg = str(text).strip().partition(":")
        try:
            if mode in ("tsn", "all", "keyframes") and not arg:
                return cls(mode)
            if mode == "fps" and float(arg) > 0:
                return cls(mode, float(arg))
            if mode == "stride" and int(arg) >= 1:
                return cls(mode, int(arg))
        except ValueError:
            pass
        raise ValueError(f"sampling {text!r}: expected one of {', '.join(SAMPLING_MODES)} "
                         "(N frames per second > 0, every K-th frame, K >= 1)")

    def indices(self, n_frames: int, segments: int, fps: float | None = None,
                keyframes: Sequence[int] | None = None) -> list[int]:
        """Frame positions in 0..n_frames-1 (of a range or a track's span); `keyframes` are positions
        in it (what `keyframes` mode returns, clamped to the range)."""
        if n_frames <= 0:
            raise ValueError("no frames")
        if self.mode == "tsn":
            return tsn_indices(n_frames, segments)
        if self.mode == "keyframes":
            if not keyframes:
                raise ValueError("no keyframes")
            return [min(n_frames - 1, max(0, int(k))) for k in keyframes]
        step = {"all": 1.0, "stride": self.value}.get(self.mode) or (fps or ASSUMED_FPS) / self.value
        return sorted({min(n_frames - 1, int(i * step)) for i in range(max(1, math.ceil(n_frames / step)))})
