"""PNG figures the pipeline writes and DVC hashes: one way to make and save them, byte for byte the
same on every run (matplotlib's Agg backend, no version stamp in the file)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DPI = 100
# Agg writes "Software: matplotlib version ..." into every PNG: a matplotlib upgrade would change the
# bytes of plots whose pixels did not change, so DVC would see new results. Nothing else is stamped.
PNG_METADATA = {"Software": None}


@contextmanager
def plot_to(path: Path, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1) -> Iterator[Any]:
    """Axes of a new figure (as matplotlib's `subplots` gives them: an array for several panels), saved
    as a PNG at `path` on exit.
    Agg is file-only (no display here); matplotlib is imported on first use, so runs that plot
    nothing never load it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    finally:
        plt.close(fig)
