"""`fer train`, `fer evaluate`, `fer model-info`: the training commands, registered on the `fer` app."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a setting: key=value (repeatable)")]
ParamsOption = Annotated[Path, typer.Option(help="params file whose `train:` section holds the defaults")]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        method: Annotated[str, typer.Argument(help="multitask | cafe | ...")],
        params: ParamsOption = Path("params.yaml"),
        set_: SetOption = None,
        prefect: Annotated[bool, typer.Option(help="run as a Prefect flow (artifacts in the UI)")] = True,
    ) -> None:
        """Train a method on shards selected from the catalog; writes OUT/metrics.json, plots, checkpoints."""
        from fer_models.config import TrainConfig

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("fer_models").setLevel(logging.INFO)  # epoch lines; not every HTTP call of Prefect
        cfg = TrainConfig.load(params, overrides=[f"method={method}", *(set_ or [])])
        if prefect:
            from flows.train import run_train
        else:
            from fer_models.train import train as run_train
        metrics = run_train(cfg)
        typer.echo(json.dumps(metrics, indent=2))

    @app.command()
    def evaluate(
        run: Annotated[Path, typer.Argument(help="a training run folder (has config.json and best.pt)")],
        where: Annotated[str | None, typer.Option(help="SQL selection to evaluate on (default: the run's test)")] = None,
        out: Annotated[Path | None, typer.Option(help="folder for metrics.json and plots (default: RUN/eval)")] = None,
    ) -> None:
        """Evaluate a trained run on a selection (e.g. another dataset, for cross-dataset tables)."""
        from fer_data.loaders import select
        from fer_models.evaluate import evaluate as run_evaluate
        from fer_models.evaluate import write_report
        from fer_models.train import load_run

        cfg, model = load_run(run)
        device = next(model.parameters()).device
        urls, ids = select(cfg.catalog, where or cfg.test_where)
        result = run_evaluate(model, urls, ids, cfg, device)
        write_report(result, out or run / "eval")
        typer.echo(json.dumps(result.metrics, indent=2))

    @app.command("cross-eval")
    def cross_eval(
        runs: Annotated[list[Path], typer.Argument(help="trained run folders")],
        datasets: Annotated[str, typer.Option(help="comma-separated datasets whose test splits to score")],
        out: Annotated[Path, typer.Option(help="folder of CSV/PNG tables; OUT.json gets the numbers")]
        = Path("metrics/cross_dataset"),
    ) -> None:
        """Every run on every dataset's test split: the train x test table (a Prefect flow)."""
        from flows.evaluate import evaluate_flow

        summary = evaluate_flow([str(r) for r in runs], [d.strip() for d in datasets.split(",") if d.strip()], str(out))
        typer.echo(json.dumps(summary["uar"], indent=2))

    @app.command("model-info")
    def model_info(
        method: Annotated[str, typer.Argument(help="multitask | cafe | ...")],
        params: ParamsOption = Path("params.yaml"),
        set_: SetOption = None,
    ) -> None:
        """One JSON object: method, backbone, trainable_params, total_params, trainable_fraction."""
        from fer_models.config import TrainConfig
        from fer_models.methods import build_method

        cfg = TrainConfig.load(params, overrides=[f"method={method}", *(set_ or [])])
        model = build_method(cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        typer.echo(json.dumps({"method": method, "backbone": cfg.backbone, "peft": cfg.peft, "rank": cfg.rank,
                               "trainable_params": trainable, "total_params": total,
                               "trainable_fraction": trainable / total}))
