"""`fer`: the command line over datasets, ingest, the catalog and training (`fer --help`)."""

from __future__ import annotations

import typer

from fer_cli import data, train

app = typer.Typer(help="fer-pipeline: raw FER/AU/age-gender datasets -> catalog, shards, trained methods.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(data.app)  # without a name: their commands sit at the top level, data ones listed first
app.add_typer(train.app)

if __name__ == "__main__":
    app()
