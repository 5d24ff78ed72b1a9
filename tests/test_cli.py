"""The `fer` command line on real-format fixtures (its mistakes: test_cli_errors.py)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fer_cli.main import app
from fer_models.train import train
from test_train import catalog_path, config  # noqa: F401 - the tiny FairFace catalog and its run settings

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_datasets_lists_every_adapter_with_tasks() -> None:
    result = invoke("datasets")
    assert result.exit_code == 0
    for name in ("rafdb", "affectnet", "fer2013", "ferplus", "sfew", "mma", "fairface", "utkface", "lagenda",
                 "celeba", "vggface2", "imagefolder"):
        assert name in result.output
    assert "valence_arousal" in result.output


def test_ingest_sql_stats(rafdb_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("ingest", "rafdb", rafdb_root, "--out", out, "--runner", "none")
    assert result.exit_code == 0, result.output
    assert "4 rows read = 4 samples + 0 rejects" in result.output
    db = out / "catalog.duckdb"

    csv = invoke("sql", "SELECT split, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1", "--catalog", db,
                 "--format", "csv")
    assert csv.output.splitlines() == ["split,n", "test,2", "train,2"]
    js = invoke("sql", "SELECT sample_id, emotion FROM samples WHERE emotion = 6", "--catalog", db, "--format", "json")
    assert json.loads(js.output) == {"sample_id": "rafdb:test_0002", "emotion": 6}

    stats = invoke("stats", "--catalog", db, "--format", "json", "--metrics", tmp_path / "m.json")
    body = json.loads(stats.output)
    assert body["ingests"] == [{"dataset": "rafdb", "rows_read": 4, "n_samples": 4, "n_rejects": 0, "accounted": True}]
    assert json.loads((tmp_path / "m.json").read_text()) == {"rafdb": {"rows_read": 4, "n_samples": 4, "n_rejects": 0}}


def test_evaluate_writes_into_folders_it_makes(catalog_path: Path, tmp_path: Path) -> None:
    """The README's `fer evaluate RUN --where ...` (into RUN/eval) and `--out NEWDIR`: both folders are new."""
    run = tmp_path / "run"
    train(config(catalog_path, run, epochs=1))
    on_train = invoke("evaluate", run, "--where", "split = 'train'")
    assert on_train.exit_code == 0, on_train.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n_samples"] == 16 and json.loads(on_train.stdout) == metrics
    new = tmp_path / "tables" / "val"
    on_val = invoke("evaluate", run, "--out", new)
    assert on_val.exit_code == 0, on_val.output
    assert json.loads((new / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    assert (new / "plots" / "png" / "confusion_gender.png").stat().st_size > 0
