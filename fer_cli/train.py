"""The training commands of `fer`: train, evaluate, cross-eval, model-info, fold-summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from fer_cli import env

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a setting: key=value (repeatable)")]
ParamsOption = Annotated[Path, typer.Option(help="params file whose `train:` section holds the defaults")]
SectionOption = Annotated[list[str] | None, typer.Option(
    help="params sections applied after `train:`, e.g. the method's own (repeatable)")]
RecipeOption = Annotated[str, typer.Option(
    help="params: the params sections over the method's paper recipe (the demo); paper: the paper recipe "
         "whole, only data and execution keys (catalog, *_where, fold, out, device, ...) from the params file")]

app = typer.Typer()  # merged into fer_cli.main's app


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="multitask | cafe | auformer | pe_clip | mae | pf_vit | mae_vit")],
    params: ParamsOption = Path("params.yaml"),
    section: SectionOption = None,
    set_: SetOption = None,
    recipe: RecipeOption = "params",
    resume: Annotated[bool, typer.Option(
        help="insist on continuing the run in OUT (an error if it holds no checkpoint of this configuration)")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="replace the run in OUT, whatever its configuration (removes its run files first)")] = False,
    prefect: Annotated[bool, typer.Option(help="run as a Prefect flow (artifacts in the UI)")] = True,
) -> None:
    """Train a method on shards selected from the catalog; writes OUT/metrics.json, plots, checkpoints.

    OUT (--set out=...) defaults to runs/METHOD-DIGEST, or runs/multitask-PEFT-DIGEST, DIGEST naming the settings.

    A folder holds one configuration's run: the same one continues where it stopped, another is refused."""
    from fer_models.config import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fer_models").setLevel(logging.INFO)  # epoch lines; not every HTTP call of Prefect
    cfg = TrainConfig.load(params, ["train", *(section or [])], overrides=[f"method={method}", *(set_ or [])],
                           recipe=recipe)
    from fer_models.train import prepare  # torch and the methods: after the settings are checked

    prepare(cfg, resume=resume, overwrite=overwrite)  # mistakes and a used folder stop here, before any flow
    if prefect:
        env.prefect_api()
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
    # the run's own test selection, fold included (a fold-k run is scored on fold k); --where as written
    urls, ids = select(cfg.catalog, where, fold=None) if where else select(cfg.catalog, cfg.test_where, fold=cfg.fold)
    result = run_evaluate(model, urls, ids, cfg, device)
    write_report(result, out or run / "eval")
    typer.echo(json.dumps(result.metrics, indent=2))


@app.command("cross-eval")
def cross_eval(
    runs: Annotated[list[Path], typer.Argument(help="trained run folders")],
    datasets: Annotated[str, typer.Option(
        help="comma-separated test sets: DATASET (its test split; val when it has no labelled test split, as "
             "SFEW) or DATASET:SPLIT (test, val, train or all)")],
    out: Annotated[Path, typer.Option(help="folder of CSV/PNG tables; OUT.json gets the numbers")]
    = Path("metrics/cross_dataset"),
    tasks: Annotated[str, typer.Option(help="comma-separated tasks to score (those a run has)")] = "emotion",
) -> None:
    """Every run on every test set: the train x test tables per task, UAR and WAR (a Prefect flow)."""
    from flows.evaluate import test_set

    sets = [d.strip() for d in datasets.split(",") if d.strip()]
    for spec in sets:
        test_set(spec)  # a mistyped split stops here, before the flow
    env.prefect_api()
    from flows.evaluate import evaluate_flow

    summary = evaluate_flow([str(r) for r in runs], sets, str(out), tuple(t.strip() for t in tasks.split(",")))
    typer.echo(json.dumps(summary, indent=2))


@app.command("model-info")
def model_info(
    method: Annotated[str, typer.Argument(help="multitask | cafe | auformer | pe_clip | mae | pf_vit | mae_vit")],
    params: Annotated[Path | None, typer.Option(help="params file (default: the method's paper settings)")]
    = None,
    set_: SetOption = None,
) -> None:
    """One JSON object: method, backbone, trainable_params, total_params, trainable_fraction, heads
    ({task: outputs}) and param_groups (name, n_params, lr, weight_decay) as the optimizer gets them."""
    from fer_models.config import TrainConfig
    from fer_models.train import recipe as resolve

    cfg = TrainConfig.load(params, overrides=[f"method={method}", *(set_ or [])])
    info = resolve(cfg)
    keys = ("backbone", "trainable_params", "total_params", "trainable_fraction", "heads", "param_groups")
    typer.echo(json.dumps({"method": method, **{k: info[k] for k in keys}, "peft": cfg.peft, "rank": cfg.rank}))


@app.command()
def recipe(
    method: Annotated[str, typer.Argument(help="multitask | cafe | auformer | pe_clip | mae | pf_vit | mae_vit")],
    format_: Annotated[str, typer.Option("--format", help="json | table")] = "table",
    recipe: RecipeOption = "paper",
    params: ParamsOption = Path("params.yaml"),
    section: SectionOption = None,
    set_: SetOption = None,
) -> None:
    """The resolved recipe `fer train METHOD --recipe RECIPE` (same options) trains with: optimizer, LR,
    weight decay, schedule, warm-up, epochs, batch, image size, frames, augmentation, backbone, the
    optimizer's named parameter groups (from the built model), the paper's protocol."""
    from fer_models.config import TrainConfig
    from fer_models.train import recipe as resolve

    if format_ not in ("json", "table"):
        raise ValueError(f"--format {format_!r}: expected json or table")
    paramsfile = params if params.is_file() or params != Path("params.yaml") else None  # none here: the paper's alone
    cfg = TrainConfig.load(paramsfile, ["train", *(section or [])] if paramsfile else (),
                           overrides=[f"method={method}", *(set_ or [])], recipe=recipe)
    resolved = resolve(cfg)
    if format_ == "json":
        typer.echo(json.dumps(resolved, indent=2))
        return
    from tabulate import tabulate

    rows = [(k, json.dumps(v) if isinstance(v, (dict, list)) and k != "param_groups" else v)
            for k, v in resolved.items() if k != "param_groups"]
    typer.echo(tabulate(rows, ["setting", "value"], tablefmt="github", disable_numparse=True))
    typer.echo("")
    typer.echo(tabulate(resolved["param_groups"], "keys", tablefmt="github"))


@app.command("fold-summary")
def fold_summary(
    protocol: Annotated[Path, typer.Argument(help="the protocol's folder: one run folder fold<K> per fold")],
    fold: Annotated[list[int], typer.Option(help="a fold to take (repeat it); dvc.yaml passes params.yaml's list")],
    out: Annotated[Path, typer.Option(help="JSON file: mean and std of every metric over the folds")],
) -> None:
    """k-fold protocols (BP4D/DISFA 3 folds, DFEW 5) report the mean over folds: one JSON for DVC.
    The folds are named, not globbed: a folder left by an earlier, longer fold list is not counted."""
    runs = [protocol / f"fold{k}" for k in fold]
    missing = [str(run) for run in runs if not (run / "metrics.json").is_file()]
    if missing:
        raise typer.BadParameter(f"no metrics.json in {', '.join(missing)} (run those folds first)", param_hint="--fold")
    per_run = {str(run): json.loads((run / "metrics.json").read_text()) for run in runs}
    keys = sorted({k for m in per_run.values() for k, v in m.items() if isinstance(v, (int, float))})
    summary: dict[str, object] = {"n_runs": len(per_run)}
    for key in keys:
        values = [m[key] for m in per_run.values() if isinstance(m.get(key), (int, float))]
        mean = sum(values) / len(values)
        summary[f"{key}/mean"] = mean
        summary[f"{key}/std"] = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, sort_keys=True))
    typer.echo(json.dumps(summary, indent=2))
