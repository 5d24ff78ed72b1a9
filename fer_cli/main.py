"""`fer`: the command line over datasets, ingest, the catalog and training (`fer --help`).

A user's mistake (an unknown dataset, a wrong path, a mistyped setting, bad SQL, a used run folder)
ends in one line, `error: ...` on stderr, and exit code 2; `fer --debug ...` shows the traceback.
Lower layers say what is wrong by raising one of `USER_ERRORS` with a message that names it."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from fer_cli import data, env, predict, report, repro, train, view

# What a command's mistake raises: a bad value or name (ValueError, KeyError; fer_data's QueryError,
# BadRow and fer_models' RunFolderError are ValueErrors), a path that is not there or not usable
# (LayoutError is a FileNotFoundError), and DuckDB's refusals (`user_errors`). Anything else is a bug: a traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError)


def user_errors() -> tuple[type[BaseException], ...]:
    """`USER_ERRORS`, and duckdb.Error once a command has imported DuckDB: only then can one be raised, and
    importing it for every command (`fer --help`, `fer train`, `fer fold-summary`) would cost each ~0.3 s."""
    duckdb = sys.modules.get("duckdb")
    return (*USER_ERRORS, duckdb.Error) if duckdb else USER_ERRORS


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's without the quotes str() adds)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    return " ".join(text.split()) or type(err).__name__


class Fer(TyperGroup):
    """The `fer` group: runs the command, and turns a user's mistake into one line and exit code 2."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as err:
            if not isinstance(err, user_errors()) or ctx.params.get("debug"):
                raise
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(code=2) from None


app = typer.Typer(cls=Fer, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show an error's traceback, not one line")) -> None:
    """fer-pipeline: raw FER/AU/age-gender datasets -> catalog, shards, trained methods."""
    # `debug` is read by `Fer.invoke`, which sees the parsed options of this group


app.add_typer(data.app)  # without a name: their commands sit at the top level, data ones listed first
app.add_typer(train.app)
app.add_typer(report.app)
app.add_typer(env.app)
app.add_typer(repro.app)
app.command()(predict.export)
app.command()(predict.predict)
app.command()(view.view)

if __name__ == "__main__":
    app()
