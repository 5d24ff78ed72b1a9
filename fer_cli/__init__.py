"""The `fer` command line (`fer_cli.main`): the top layer, the only code that imports `flows`.

Importing it sets the offline environment (`fer_cli.env`), so that it is in place before any
command imports Prefect, DVC or the hub."""

from fer_cli import env

env.apply()
