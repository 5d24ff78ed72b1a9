"""`fer view`: a catalog selection as a static, offline HTML browser (fer_data.browser)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fer_cli.data import DEFAULT_CATALOG


def view(
    sql: Annotated[str, typer.Argument(help="read-only query returning sample_id, e.g. \"SELECT sample_id FROM samples WHERE dataset = 'rafdb'\"")],
    out: Annotated[Path, typer.Option(help="folder for the pages and thumbnails (open OUT/index.html)")],
    catalog: Annotated[Path, typer.Option(help="catalog file")] = DEFAULT_CATALOG,
    limit: Annotated[int | None, typer.Option(min=1, help="show at most this many samples")] = None,
    root: Annotated[str | None, typer.Option(help="folder the catalog's shard paths are relative to (default: its own)")]
    = None,
) -> None:
    """Browse a selection offline: crops with labels, pose and quality; rejects; near-duplicates; class balance."""
    from fer_data.browser import build

    result = build(catalog, sql, out, limit=limit, root=root)
    typer.echo(json.dumps({"index": str(result.out / "index.html"), "samples": result.n_samples,
                           "pages": result.n_pages, "thumbnails_written": result.n_thumbnails,
                           "rejects": result.n_rejects, "duplicate_groups": result.n_groups,
                           "seconds": round(result.seconds, 2)}))
