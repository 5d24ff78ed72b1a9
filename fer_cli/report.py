"""`fer report`: the results table of every finished run, printed and, with --readme, written into
the README between its results markers (so `make demo` keeps the README's numbers current)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()  # merged into fer_cli.main's app
CROSS_DATASET = [Path("metrics/cross_dataset.json"), Path("metrics/cafe_cross_dataset.json"), Path("metrics/thesis.json")]


@app.command()
def report(
    runs: Annotated[Path, typer.Option(help="folder of training runs (each with metrics.json and config.json)")]
    = Path("runs"),
    cross_dataset: Annotated[list[Path] | None, typer.Option(
        help="cross-dataset JSONs (repeatable; those absent are skipped); default: the evaluate, cafe_cross and "
             "thesis stages'")] = None,
    readme: Annotated[Path | None, typer.Option(
        help="markdown file whose '<!-- results:begin -->' .. '<!-- results:end -->' block gets the table")] = None,
) -> None:
    """One markdown table: each run (k-fold runs as mean and std) on its test data and on each test set
    of the cross-dataset evaluation; the same metrics always give the same text."""
    from fer_models.report import replace_block, results_table

    table = results_table(runs, cross_dataset or CROSS_DATASET)
    if readme is not None:
        replace_block(readme, table)
    typer.echo(table)
