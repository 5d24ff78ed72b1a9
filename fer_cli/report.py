"""`fer report`: the results table of every finished run, printed and, with --readme, written into
the README between its results markers (so `make demo` keeps the README's numbers current)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()  # merged into fer_cli.main's app


@app.command()
def report(
    runs: Annotated[Path, typer.Option(help="folder of training runs (each with metrics.json and config.json)")]
    = Path("runs"),
    cross_dataset: Annotated[Path, typer.Option(help="the evaluate stage's JSON (skipped when absent)")]
    = Path("metrics/cross_dataset.json"),
    readme: Annotated[Path | None, typer.Option(
        help="markdown file whose '<!-- results:begin -->' .. '<!-- results:end -->' block gets the table")] = None,
) -> None:
    """One markdown table: each run (k-fold runs as mean and std) on its test data and on each test set
    of the cross-dataset evaluation; the same metrics always give the same text."""
    from fer_models.report import replace_block, results_table

    table = results_table(runs, cross_dataset)
    if readme is not None:
        replace_block(readme, table)
    typer.echo(table)
