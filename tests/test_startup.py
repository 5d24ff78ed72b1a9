"""Start-up cost of the `fer` command: `make demo` starts it ~50 times (17 ingests, ~30 DVC stages), so
the command line imports only what the invoked command needs."""

from __future__ import annotations

import json
import subprocess
import sys

# each costs a `fer` process 0.3-2 CPU s to import; none is needed to parse a command line
HEAVY = ("pandas", "duckdb", "torch", "prefect", "numpy", "pyarrow", "dvc", "open_clip")


def imported_by(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_command_line_imports_no_heavy_library() -> None:
    assert imported_by("import fer_cli.main") == []


def test_fold_summary_runs_without_torch_pandas_or_duckdb(tmp_path) -> None:
    for fold, f1 in ((1, 0.5), (2, 0.25), (3, 0.0)):  # fold 3: left by an earlier, longer fold list
        (tmp_path / f"fold{fold}").mkdir()
        (tmp_path / f"fold{fold}" / "metrics.json").write_text(f'{{"au/f1_mean": {f1}}}')
    out = tmp_path / "folds.json"
    code = ("from typer.testing import CliRunner\nfrom fer_cli.main import app\n"
            f"r = CliRunner().invoke(app, ['fold-summary', {str(tmp_path)!r}, '--fold', '1', '--fold', '2', "
            f"'--out', {str(out)!r}])\nassert r.exit_code == 0, r.output")
    assert imported_by(code) == []
    summary = json.loads(out.read_text())
    assert summary["n_runs"] == 2 and summary["au/f1_mean/mean"] == 0.375 and summary["au/f1_mean/std"] == 0.125


def test_fold_summary_names_a_missing_fold(tmp_path) -> None:
    from typer.testing import CliRunner

    from fer_cli.main import app

    (tmp_path / "fold1").mkdir()
    (tmp_path / "fold1" / "metrics.json").write_text('{"au/f1_mean": 0.5}')
    result = CliRunner().invoke(app, ["fold-summary", str(tmp_path), "--fold", "1", "--fold", "2",
                                      "--out", str(tmp_path / "folds.json")])
    assert result.exit_code == 2 and "fold2" in result.output and not (tmp_path / "folds.json").exists()
