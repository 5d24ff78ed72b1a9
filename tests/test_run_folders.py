"""Run folders: the default folder names the method and the settings; a folder holds one
configuration's run (the same one resumes, another is refused unless --overwrite); a checkpoint
never runs code; and a run's files are the same bytes every time (what DVC hashes of it)."""

from __future__ import annotations

import json
import pathlib
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fer_cli.main import app
from fer_models.config import TrainConfig
from fer_models.train import BEST, CHECKPOINT, SPEED, cpu_threads, resolve_data, train
from test_train import catalog_path  # noqa: F401 - the tiny FairFace catalog fixture

TINY = dict(backbone="pe-core-tiny-test", image_size=32, tasks=["age_bin", "gender"], test_where="split = 'val'",
            epochs=2, batch_size=4, lr=0.01, dropout=0.0)


def params_file(catalog: Path, folder: Path, **settings: object) -> Path:
    """A params.yaml whose `train:` section trains the tiny run into `folder/run`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {**TINY, "catalog": str(catalog), "out": str(folder / "run"),
                                              **settings}}))
    return path


def fer_train(params: Path, *args: str, method: str = "multitask"):
    return CliRunner().invoke(app, ["train", method, "--params", str(params), "--no-prefect", *args])


def one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_default_folder_names_the_method_and_the_settings() -> None:
    lora = TrainConfig.load(None, overrides=["method=multitask", "peft=lora"])
    assert lora.out == f"runs/multitask-lora-{lora.digest()[:8]}"
    cafe = TrainConfig.load(None, overrides=["method=cafe"])
    assert cafe.out == f"runs/cafe-{cafe.digest()[:8]}" and cafe.digest() != lora.digest()
    where_and_how_fast = TrainConfig.load(None, overrides=["method=multitask", "peft=lora", "num_workers=4",
                                                           "device=cpu", "out=elsewhere"])
    assert where_and_how_fast.digest() == lora.digest()
    assert TrainConfig.load(None, overrides=["method=multitask", "peft=lora", "lr=0.5"]).out != lora.out


def test_another_configuration_is_refused_unless_overwrite(catalog_path: Path, tmp_path: Path) -> None:
    params = params_file(catalog_path, tmp_path)
    run = tmp_path / "run"
    first = TrainConfig.load(params, overrides=["method=multitask"])
    assert train(first, stop_after_epoch=1) == {}
    checkpoint = (run / CHECKPOINT).read_bytes()

    other = TrainConfig.load(params, overrides=["method=multitask", "lr=0.5"])
    refused = one_line_error(fer_train(params, "--set", "lr=0.5"))
    assert f"{run} holds a run of another configuration ({first.digest()[:8]}; this one is {other.digest()[:8]}: " \
           f"lr 0.01 -> 0.5)" in refused and "--overwrite" in refused
    assert "lr 0.01 -> 0.5" in one_line_error(fer_train(params, "--set", "lr=0.5", "--resume"))
    assert "method 'multitask' -> 'cafe'" in one_line_error(fer_train(params, method="cafe"))
    assert "give one" in one_line_error(fer_train(params, "--resume", "--overwrite"))
    assert (run / CHECKPOINT).read_bytes() == checkpoint  # refusals touch nothing

    replaced = fer_train(params, "--set", "lr=0.5", "--set", "epochs=1", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((run / "config.json").read_text())["lr"] == 0.5
    assert [h["epoch"] for h in torch.load(run / CHECKPOINT, weights_only=True)["state"]["history"]] == [1]


def test_the_same_configuration_resumes(catalog_path: Path, tmp_path: Path) -> None:
    params = params_file(catalog_path, tmp_path)
    run = tmp_path / "run"
    assert "has no checkpoint.pt" in one_line_error(fer_train(params, "--resume"))
    assert train(TrainConfig.load(params, overrides=["method=multitask"]), stop_after_epoch=1) == {}
    resumed = fer_train(params)  # no flag needed; --resume would insist that there is a run to continue
    assert resumed.exit_code == 0, resumed.output
    state = torch.load(run / CHECKPOINT, weights_only=True)["state"]
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert [s["epoch"] for s in json.loads((run / SPEED).read_text())] == [1, 2]
    assert json.loads(resumed.stdout) == json.loads((run / "metrics.json").read_text())


class Payload:
    """What a crafted checkpoint holds: unpickling it calls Path.touch, i.e. runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_crafted_checkpoint_is_refused_not_run(catalog_path: Path, tmp_path: Path) -> None:
    params = params_file(catalog_path, tmp_path)
    cfg, _ = resolve_data(TrainConfig.load(params, overrides=["method=multitask"]))
    run, marker = Path(cfg.out), tmp_path / "marker"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))  # the same configuration: fer train resumes
    torch.save({"model": {}, "state": Payload(marker)}, run / CHECKPOINT)
    error = one_line_error(CliRunner().invoke(app, ["train", "multitask", "--params", str(params)]))  # before a flow
    assert f"{run / CHECKPOINT} holds more than tensors and plain data (getattr), refused to load it" in error
    assert not marker.exists()


def test_training_twice_writes_the_same_bytes(catalog_path: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clones on machines with other core counts train the same configuration (relative paths, as
    DVC runs it): every file but the timing is byte for byte the same, so a fresh `make demo` leaves
    what DVC hashes unchanged."""
    files = {}
    for clone, machine_threads in (("a", 2), ("b", 1)):
        (tmp_path / clone).mkdir()
        monkeypatch.chdir(tmp_path / clone)
        with cpu_threads(machine_threads):  # torch's default: one per core
            train(TrainConfig(**TINY, catalog=str(catalog_path), out="runs/tiny"))
        run = Path("runs/tiny").resolve()
        files[clone] = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert {BEST, CHECKPOINT, "metrics.json", SPEED, "plots/png/training_curves.png",
            "dvclive/plots/metrics/train/loss.tsv"} <= set(files["a"])
    assert files["a"].keys() == files["b"].keys()
    differ = [name for name in files["a"] if name != SPEED and files["a"][name] != files["b"][name]]
    assert not differ, differ
    names = zipfile.ZipFile(tmp_path / "a" / "runs" / "tiny" / CHECKPOINT).namelist()
    assert all(name.startswith("checkpoint/") for name in names)  # torch.save names records after the file
