"""A user's mistake ends in one line naming it, `error: ...`, and exit code 2, never a traceback;
`fer --debug` shows the traceback. Each case as a user typed it, through the `fer` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fer_cli.main import app

FER = Path(sys.executable).with_name("fer")  # the installed entry point


def fer(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result, *names: str) -> None:
    """Exit code 2 and one line `error: ...` that names each of `names`."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """A params file as a user writes one, with a tiny backbone and a catalog that does not exist."""
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  backbone: pe-core-tiny-test\n  image_size: 32\n  catalog: {tmp_path / 'none.duckdb'}\n")
    return path


def test_ingest_mistakes(rafdb_root: Path, tmp_path: Path) -> None:
    """Without Prefect here (its log handlers would keep this runner's closed stream); the flow path is
    the last test's, through the installed command."""
    assert_one_line(fer("ingest", "raf-db", rafdb_root, "--out", tmp_path / "out", "--runner", "none"),
                    "unknown dataset 'raf-db'", "rafdb")
    assert_one_line(fer("ingest", "rafdb", tmp_path / "no" / "such", "--out", tmp_path / "out", "--runner", "none"),
                    "is not a directory")
    assert_one_line(fer("ingest", "rafdb", tmp_path, "--out", tmp_path / "out", "--runner", "none"),
                    "list_patition_label.txt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, names", [
    (["--set", "epocs=1"], ["'epocs'", "did you mean epochs"]),
    (["--set", "peft=lorra"], ["peft 'lorra'", "lora"]),
    (["--set", "backbone=PE-Core-T-16"], ["unknown backbone 'PE-Core-T-16'"]),
    (["--set", "device=gpu"], ["device 'gpu'"]),
    (["--set", "epochs=two"], ["epochs='two'", "integer"]),
    (["--set", "lr=-0.1"], ["lr=-0.1"]),
    (["--set", "epochs"], ["--set 'epochs'", "key=value"]),
    (["--section", "autoformer"], ["no `autoformer:` section"]),
    ([], ["no catalog at", "none.duckdb"]),  # the params file names a catalog that is not there
])
def test_training_setting_mistakes(params: Path, args: list[str], names: list[str]) -> None:
    assert_one_line(fer("train", "multitask", "--params", params, *args), *names)


def test_params_file_mistakes(tmp_path: Path) -> None:
    assert_one_line(fer("train", "multitask", "--params", tmp_path / "nope.yaml"), "nope.yaml", "not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [0.1\n")
    assert_one_line(fer("train", "multitask", "--params", broken), "broken.yaml is not YAML")
    listed = tmp_path / "list.yaml"
    listed.write_text("- lr: 0.1\n")
    assert_one_line(fer("train", "multitask", "--params", listed), "list.yaml", "mapping")


def test_catalog_and_run_mistakes(rafdb_root: Path, tmp_path: Path) -> None:
    assert fer("ingest", "rafdb", rafdb_root, "--out", tmp_path, "--runner", "none").exit_code == 0
    catalog = tmp_path / "catalog.duckdb"
    assert_one_line(fer("sql", "SELEC 1", "--catalog", catalog), "syntax error", "SELEC")
    assert_one_line(fer("sql", "SELECT nope FROM samples", "--catalog", catalog), "nope")
    assert_one_line(fer("sql", "SELECT 1", "--catalog", tmp_path / "elsewhere.duckdb"), "no catalog at")
    assert_one_line(fer("stats", "--catalog", tmp_path / "elsewhere.duckdb"), "no catalog at")
    assert_one_line(fer("evaluate", tmp_path / "runs" / "none"), "is not a training run folder")
    assert_one_line(fer("model-info", "multitask", "--set", "peft=lorra"), "peft 'lorra'")
    assert_one_line(fer("model-info", "autoformer"), "unknown method 'autoformer'")


def test_the_fer_command_prints_one_line_and_debug_the_traceback(params: Path, rafdb_root: Path) -> None:
    """The installed `fer` itself, whose stderr also gets what loggers print (Prefect's included): the
    one line; `--debug` adds the traceback."""
    unknown = subprocess.run([FER, "ingest", "raf-db", rafdb_root, "--out", params.parent / "out"],
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert unknown.stderr.startswith("error: unknown dataset 'raf-db'") and not unknown.stdout
    plain = subprocess.run([FER, "train", "multitask", "--params", params, "--set", "epocs=1"],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip().splitlines() == ["error: unknown training setting 'epocs': did you mean epochs?"]
    debug = subprocess.run([FER, "--debug", "train", "multitask", "--params", params, "--set", "epocs=1"],
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.strip().endswith("ValueError: unknown training setting 'epocs': did you mean epochs?")


@pytest.mark.parametrize("override", ["peft=lorra", "device=gpu", "lr=-0.1", "epochs=two", "epocs=1"])
def test_typed_settings_are_checked_before_the_method_files_load(override: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The method files import torch and open_clip (~10 s): what the user typed is checked first."""
    import fer_models.config

    def too_late(name: str) -> None:
        raise AssertionError(f"{override} was not caught before loading the method files")

    monkeypatch.setattr(fer_models.config, "method_defaults", too_late)
    with pytest.raises(ValueError):
        fer_models.config.TrainConfig.load(None, overrides=["method=multitask", override])
