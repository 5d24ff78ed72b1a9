"""Using a trained run outside the catalog: `fer export` (ONNX) and `fer predict` (photos, folders, videos)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

RunArgument = Annotated[Path, typer.Argument(help="a training run folder (has config.json and best.pt)")]


class ExportFormat(str, Enum):
    onnx = "onnx"


def export(
    run: RunArgument,
    format: Annotated[ExportFormat, typer.Option("--format", help="file format")] = ExportFormat.onnx,
    out: Annotated[Path | None, typer.Option(help="output file (default: RUN/model.onnx, where --engine onnx looks)")]
    = None,
) -> None:
    """Export a run's evaluation graph (uint8 face crops -> per-task probabilities), checked against PyTorch."""
    from fer_models.export import PARITY_ATOL, export_onnx

    path, diff = export_onnx(run, out)
    typer.echo(json.dumps({"onnx": str(path), "max_abs_diff": diff, "tolerance": PARITY_ATOL}))


def predict(
    run: RunArgument,
    inputs: Annotated[list[Path], typer.Argument(help="photos, videos and folders of them")],
    out: Annotated[Path, typer.Option(help="output table: .parquet, .csv or .json")],
    engine: Annotated[str, typer.Option(help="torch | onnx (RUN/model.onnx, from `fer export`)")] = "torch",
    sampling: Annotated[str | None, typer.Option(help="video frames as ingest samples them: tsn | fps:N | stride:K | all")]
    = None,
    batch_size: Annotated[int, typer.Option(min=1, help="face crops per model call")] = 32,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N] (torch engine)")] = "auto",
) -> None:
    """Predict emotions (and the run's other heads) for every face in photos and videos: one row per face per frame."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fer_models.predict import FORMATS, Model, Predictor, input_files, write

    if out.suffix.lower() not in FORMATS:  # before the model loads
        raise ValueError(f"--out {out}: expected a file ending in {', '.join(FORMATS)}")
    files = input_files(inputs)
    predictor = Predictor(Model(run, engine, device), sampling, batch_size)
    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), transient=True) as progress:
        bar = progress.add_task("", total=len(files))

        def on_file(path: Path, reject: object) -> None:
            if reject is not None:
                progress.console.print(f"reject: {reject.file}: {reject.reason}", style="yellow", highlight=False,
                                       soft_wrap=True)
            progress.update(bar, advance=1, description=path.name)

        result = predictor(files, on_file)
    path = write(result.rows, out)
    faces = len(result.rows)
    typer.echo(json.dumps({"out": str(path), "files": len(files), "rows": faces, "rejects": len(result.rejects),
                           "rows_per_s": round(faces / max(result.seconds, 1e-9), 1)}))
