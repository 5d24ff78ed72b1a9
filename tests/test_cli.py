"""The `fer` command line on a real-format fixture."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fer_cli.main import app

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


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = invoke("ingest", "rafdb", tmp_path, "--out", tmp_path / "out", "--runner", "none")
    assert missing.exit_code == 2 and "list_patition_label.txt" in missing.output
    nowhere = invoke("ingest", "rafdb", tmp_path / "no" / "such", "--out", tmp_path / "out")  # through the flow
    assert nowhere.exit_code == 2 and "is not a directory" in nowhere.output
    assert not (tmp_path / "out").exists()
    unknown = invoke("ingest", "nosuch", tmp_path, "--runner", "none")
    assert unknown.exit_code == 2 and "unknown dataset 'nosuch'" in unknown.output
    bad_sql = invoke("sql", "SELECT nope FROM samples", "--catalog", tmp_path / "none.duckdb")
    assert bad_sql.exit_code == 2 and "no catalog" in bad_sql.output
