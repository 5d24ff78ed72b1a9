"""`fer export`: a small trained run's evaluation graph through onnxruntime agrees with PyTorch on real
face crops, its batch axis is dynamic, and an ONNX file from other weights is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from fer_cli.main import app
from fer_data.loaders import make_loader, select
from fer_models.export import PARITY_ATOL, OnnxGraph, check_current, load_graph
from fer_models.train import BEST


@pytest.fixture
def run(tiny_run: Path) -> Path:
    return tiny_run


def test_export_matches_pytorch_on_real_crops(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["onnx"] == str(out) and report["max_abs_diff"] < PARITY_ATOL
    assert not list(tmp_path.glob(".*partial"))  # nothing staged left behind

    graph, spec = load_graph(run, torch.device("cpu"))
    assert spec.tasks == ("emotion", "age_bin", "gender") and spec.size == 32
    assert spec.classes["emotion"][0] == "neutral" and len(spec.classes["age_bin"]) == 9
    cfg = json.loads((run / "config.json").read_text())
    urls, ids = select(cfg["catalog"], "true")
    crops, _ = next(iter(make_loader(urls, (), batch_size=5, train=False, sample_ids=ids)))  # 112 px faces
    crops = torch.nn.functional.interpolate(crops.float(), size=32, mode="bilinear", antialias=True).round().to(torch.uint8)
    with torch.no_grad():
        ours = [p.numpy() for p in graph(crops)]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(spec.tasks)
    theirs = session.run(None, {"pixels": crops.numpy()})  # batch 5: the export used 2, the axis is dynamic
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.shape[0] == 5
        assert np.abs(a - b).max() < PARITY_ATOL
        assert np.allclose(b.sum(axis=1), 1.0, atol=1e-5)
    assert OnnxGraph(out).spec == spec  # the file carries what a reader needs


def test_onnx_from_other_weights_is_refused(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", BEST):
        (copy / name).write_bytes((run / name).read_bytes())
    assert CliRunner().invoke(app, ["export", str(copy)]).exit_code == 0  # default: RUN/model.onnx
    onnx_graph = OnnxGraph(copy / "model.onnx")
    check_current(onnx_graph, copy)
    state = torch.load(copy / BEST, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, copy / BEST)  # retrained
    with pytest.raises(ValueError, match="export it again"):
        check_current(onnx_graph, copy)


def test_export_mistakes_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "not a training run folder" in result.output
