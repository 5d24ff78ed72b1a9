"""`fer predict`: a small trained run on a photo with six faces, folders with an unreadable file, both engines,
and (slow) the generated sample data's photos and videos."""

from __future__ import annotations

import json
from pathlib import Path

import insightface
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_image
from fer_cli.main import app
from fer_data.decode import read_image
from fer_data.faces import align
from fer_data.ingest import ingest
from fer_data.samples.images import write_sample_data
from fer_data.samples.video import write_video_samples
from fer_data.settings import Settings
from fer_models.config import TrainConfig
from fer_models.export import OnnxGraph, load_graph
from fer_models.predict import input_files
from fer_models.train import train

SIX_FACES = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
EMOTION_COLUMNS = ["p_neutral", "p_happiness", "p_sadness", "p_surprise", "p_fear", "p_disgust", "p_anger"]


@pytest.fixture
def run(tiny_run: Path) -> Path:
    return tiny_run


def predict(*args: str | Path) -> tuple[pd.DataFrame | None, str]:
    result = CliRunner().invoke(app, ["predict", *map(str, args)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    out = Path(summary["out"])
    rows = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".json": pd.read_json}[out.suffix](out)
    return rows, result.output


def test_every_face_of_a_photo_largest_first(run: Path, tmp_path: Path) -> None:
    rows, _ = predict(run, SIX_FACES, "--out", tmp_path / "faces.parquet")
    assert len(rows) == 6 and list(rows.face) == list(range(6)) and rows.frame.isna().all()
    assert (rows.file == str(SIX_FACES)).all()
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in rows.face_box]
    assert areas == sorted(areas, reverse=True) and len({tuple(b) for b in rows.face_box}) == 6
    for task, columns in {"emotion": EMOTION_COLUMNS, "gender": ["p_male", "p_female"],
                          "age_bin": [c for c in rows.columns if c.startswith("p_age_")]}.items():
        probs = rows[columns].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert list(rows[task]) == [columns[i].removeprefix("p_age_").removeprefix("p_") for i in probs.argmax(axis=1)]
    assert "p_contempt" not in rows  # a 7-class head

    # each row is the run's model on the face aligned as ingest aligns it, at the run's training size
    graph, spec = load_graph(run, torch.device("cpu"))
    rgb, _, _ = read_image(SIX_FACES)
    crops = np.stack([align.align(rgb, np.reshape(lm, (5, 2)), Settings().size)[0] for lm in rows.landmarks])
    pixels = torch.nn.functional.interpolate(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), size=spec.size,
                                             mode="bilinear", antialias=True).round().to(torch.uint8)
    with torch.no_grad():
        expected = graph(pixels)[0].numpy()
    assert np.abs(rows[EMOTION_COLUMNS].to_numpy() - expected).max() < 1e-5


def test_folders_and_an_unreadable_file(run: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        write_image(photos / "a" / f"{i}.jpg", seed=i, size=160)
    (photos / "a" / "notes.txt").write_text("not a photo")  # skipped: a folder's images and videos only
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    write_image(tmp_path / "one.png", seed=7)
    assert [p.name for p in input_files([photos, tmp_path / "one.png"])] == ["0.jpg", "1.jpg", "2.jpg", "broken.jpg", "one.png"]
    rows, output = predict(run, photos, tmp_path / "one.png", "--out", tmp_path / "out.csv")
    assert "reject: " in output and "broken.jpg" in output  # one clear line, the rest predicted
    assert sorted(Path(f).name for f in rows.file) == ["0.jpg", "1.jpg", "2.jpg", "one.png"]
    assert (rows.face == 0).all() and json.loads(rows.face_box[0]) and len(json.loads(rows.landmarks[0])) == 10


def test_onnx_engine_gives_the_same_rows(run: Path, tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["predict", str(run), str(SIX_FACES), "--engine", "onnx", "--out", str(tmp_path / "x.json")])
    assert missing.exit_code == 2 and "fer export" in missing.output
    assert CliRunner().invoke(app, ["export", str(run)]).exit_code == 0
    torch_rows, _ = predict(run, SIX_FACES, "--out", tmp_path / "torch.json")
    onnx_rows, _ = predict(run, SIX_FACES, "--engine", "onnx", "--out", tmp_path / "onnx.json")
    assert list(onnx_rows.face_box) == list(torch_rows.face_box)
    probs = [c for c in torch_rows.columns if c.startswith("p_")]
    assert np.abs(onnx_rows[probs].to_numpy() - torch_rows[probs].to_numpy()).max() < 1e-3


def test_predict_mistakes_are_one_line(run: Path, tmp_path: Path) -> None:
    for args, message in [([str(run), str(SIX_FACES), "--out", str(tmp_path / "x.xlsx")], ".parquet, .csv, .json"),
                          ([str(tmp_path), str(SIX_FACES), "--out", str(tmp_path / "x.csv")], "not a training run folder"),
                          ([str(run), str(SIX_FACES), "--engine", "tflite", "--out", str(tmp_path / "x.csv")], "engine")]:
        result = CliRunner().invoke(app, ["predict", *args])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.fixture(scope="module")
def dfew(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated DFEW sample data (movie clips with faces)."""
    return write_video_samples(tmp_path_factory.mktemp("videos"))["dfew"]


@pytest.mark.slow
def test_sample_data_photos_and_videos(run: Path, dfew: Path, tmp_path: Path) -> None:
    photos = write_sample_data(tmp_path / "images")["rafdb"] / "basic" / "Image" / "original"
    videos = sorted((dfew / "Clip" / "original").glob("*.mp4"))[:3]
    rows, output = predict(run, photos, *videos, "--out", tmp_path / "out.parquet")
    summary = json.loads(output.strip().splitlines()[-1])
    n_photos = len(list(photos.glob("*.jpg")))
    assert summary["files"] == n_photos + 3 and summary["rows"] == len(rows)
    assert summary["rejects"] == output.count("reject: ")  # every file is predicted or a reject line
    from_photos = rows[rows.frame.isna()]
    assert from_photos.file.nunique() + output.count("reject: ") >= n_photos
    per_video = rows[rows.frame.notna()].groupby("file")
    assert per_video.ngroups >= 1
    for _, frames in per_video:  # sampled frames of the main face track, in order
        assert (frames.face == 0).all() and frames.frame.is_monotonic_increasing and len(frames) <= Settings().segments
        assert np.allclose(frames[EMOTION_COLUMNS].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_clip_model_gives_one_row_per_video(dfew: Path, tmp_path: Path) -> None:
    """PE-CLIP trained on 4-frame clips: one clip-level row per video, a photo's faces as still clips, the same
    probabilities from its ONNX export (whose trace fixes the batch at one)."""
    ingest("dfew", dfew, tmp_path / "data", segments=4, size=112)
    cfg = TrainConfig.load(None, overrides=["method=pe_clip", f"catalog={tmp_path / 'data' / 'catalog.duckdb'}",
                                            "backbone=clip-tiny-test", f"out={tmp_path / 'run'}", "epochs=1",
                                            "batch_size=8", "device=cpu"])
    train(cfg)
    assert CliRunner().invoke(app, ["export", cfg.out]).exit_code == 0
    assert OnnxGraph(Path(cfg.out) / "model.onnx").spec.frames == 4
    videos = sorted((dfew / "Clip" / "original").glob("*.mp4"))[:2]
    rows = {}
    for engine in ("torch", "onnx"):
        rows[engine], _ = predict(cfg.out, *videos, SIX_FACES, "--engine", engine, "--out", tmp_path / f"{engine}.parquet")
    clips = rows["torch"][rows["torch"].file != str(SIX_FACES)]
    assert list(clips.file) == [str(v) for v in videos] and clips.frame.isna().all()
    assert (clips.track_coverage > 0).all()
    assert (rows["torch"].file == str(SIX_FACES)).sum() == 6
    assert np.abs(rows["torch"][EMOTION_COLUMNS].to_numpy() - rows["onnx"][EMOTION_COLUMNS].to_numpy()).max() < 1e-3
    assert np.allclose(rows["torch"][EMOTION_COLUMNS].sum(axis=1), 1.0, atol=1e-5)
