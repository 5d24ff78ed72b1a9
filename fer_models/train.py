"""One trainer for every method: shards selected by SQL, AdamW with warm-up + cosine, gradient
accumulation, bf16 autocast on GPU (fp32 on CPU), checkpoint/resume, dvclive, early stopping.

Every epoch reseeds from (seed, epoch), and its loader shuffles with the same pair, so a run
resumed from an epoch checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_data.loaders import au_rates, make_loader, select
from fer_models.config import TrainConfig
from fer_models.evaluate import evaluate, write_report
from fer_models.methods import Method, build_method

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
FIGURE_SAMPLES = 8  # test images the method's figures show


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters and buffers outside the frozen backbone."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k in trainable or not k.startswith("backbone.") or "lora_" in k}


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint has keys this model lacks: {unexpected[:5]}")


def build_seeded(cfg: TrainConfig) -> Method:
    """The method as training built it: checkpoints keep only what training changes, so a frozen,
    randomly initialised backbone must come out of the same seed to match them."""
    seed_everything(cfg.seed)
    return build_method(cfg)


def load_run(run: str | Path, device: torch.device | None = None) -> tuple[TrainConfig, Method]:
    """Config and best weights of a finished training run folder."""
    run = Path(run)
    cfg = TrainConfig(**json.loads((run / "config.json").read_text()))
    model = build_seeded(cfg).to(device or pick_device(cfg.device))
    load_state(model, torch.load(run / BEST, map_location="cpu", weights_only=True))
    return cfg, model


def cosine_with_warmup(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class Split:
    urls: list[str]
    ids: set[str]


def _split(cfg: TrainConfig, where: str) -> Split | None:
    try:
        urls, ids = select(cfg.catalog, where, fold=cfg.fold)
    except ValueError:
        return None
    return Split(urls, ids)


def resolve_data(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Split | None]]:
    """The train/val/test selections, and `cfg` completed from the catalog: the AUs labelled in the
    training selection (when `aus` is empty) and their occurrence rates, which AU losses weight by.
    A k-fold run has no val split: the held-out fold is the test set, never used to pick epochs."""
    wheres = {"train": cfg.train_where, "val": None if cfg.fold else cfg.val_where, "test": cfg.test_where}
    data = {name: _split(cfg, where) if where else None for name, where in wheres.items()}
    if data["train"] is None:
        raise ValueError(f"no training samples in {cfg.catalog} match: {cfg.train_where}"
                         + (f" (fold {cfg.fold})" if cfg.fold else ""))
    if not cfg.au_rates:
        rates = au_rates(cfg.catalog, cfg.train_where, cfg.aus, fold=cfg.fold)
        aus = cfg.aus or sorted(rates)
        if rates:
            cfg = dataclasses.replace(cfg, aus=aus, au_rates=[rates.get(au, 0.0) for au in aus])
    return cfg, data


def save_figures(model: Method, images: torch.Tensor, folder: Path) -> None:
    """The method's figures (reconstruction grids, ...) of one fixed test batch, as PNGs."""
    from PIL import Image

    model.eval()
    with torch.no_grad():
        figures = model.figures(images)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in figures.items():
        Image.fromarray(array).save(folder / f"{name}.png")


def primary_metric(metrics: dict[str, Any]) -> float:
    """The number early stopping and best-checkpoint selection watch: mean of each task's headline,
    or minus the loss for a method without labelled tasks (MAE)."""
    heads = [v for k, v in metrics.items() if k.split("/")[-1] in ("uar", "accuracy", "f1_mean") and v is not None]
    if heads:
        return float(np.mean(heads))
    return -metrics["loss"] if metrics.get("loss") is not None else -math.inf


def train(cfg: TrainConfig, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train `cfg.method`; returns the test metrics. `stop_after_epoch` simulates an interruption (tests)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    cfg, data = resolve_data(cfg)
    model = build_seeded(cfg).to(device)
    epoch_samples = cfg.epoch_samples or len(data["train"].ids)
    steps_per_epoch = math.ceil(math.ceil(epoch_samples / cfg.batch_size) / cfg.grad_accum)
    optimizer = torch.optim.AdamW(model.param_groups(cfg), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(steps_per_epoch * cfg.epochs, cfg.warmup_fraction))
    adversary = model.adversary_param_groups(cfg)
    adversary_opt = torch.optim.AdamW(adversary, weight_decay=cfg.weight_decay) if adversary else None
    state = {"epoch": 0, "best": -math.inf, "stale": 0, "history": []}
    if (out / CHECKPOINT).exists():
        ckpt = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
        load_state(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if adversary_opt:
            adversary_opt.load_state_dict(ckpt["adversary_optimizer"])
        state = ckpt["state"]
        log.warning("resuming %s from epoch %d", out, state["epoch"])
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    from dvclive import Live

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with Live(str(out / "dvclive"), resume=state["epoch"] > 0, dvcyaml=None, save_dvc_exp=False) as live:
        for epoch in range(state["epoch"], cfg.epochs):
            seed_everything(cfg.seed * 1000 + epoch)
            model.train()
            loader = make_loader(data["train"].urls, model.tasks, cfg.batch_size,
                                 train=True, num_workers=cfg.num_workers, aus=cfg.aus, epoch_samples=epoch_samples,
                                 sample_ids=data["train"].ids, seed=cfg.seed * 1000 + epoch)
            totals: dict[str, float] = {}
            n_batches, n_images, started = 0, 0, time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            for i, (images, targets) in enumerate(loader):
                images = images.to(device, non_blocking=True)
                targets = {k: v.to(device) for k, v in targets.items() if torch.is_tensor(v)}
                with autocast:
                    outputs = model(images)
                    loss, parts = model.loss(outputs, targets)
                (loss / cfg.grad_accum).backward()
                if (i + 1) % cfg.grad_accum == 0:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if adversary_opt:  # after the generator's step, on this step's (detached) outputs
                    adversary_opt.zero_grad(set_to_none=True)
                    with autocast:
                        adversary_loss, adversary_parts = model.adversary_loss(outputs, targets)
                    adversary_loss.backward()
                    adversary_opt.step()
                    parts = {**parts, **adversary_parts}
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    totals[k] = totals.get(k, 0.0) + v
                n_batches += 1
                n_images += len(images)
            if n_batches % cfg.grad_accum:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            logs = {f"train/{k}": v / max(1, n_batches) for k, v in totals.items()}
            logs["train/images_per_s"] = n_images / (time.perf_counter() - started)
            if data["val"] is not None:
                val = evaluate(model, data["val"].urls, data["val"].ids, cfg, device)
                logs.update({f"val/{k}": v for k, v in val.metrics.items() if isinstance(v, float)})
                score = primary_metric(val.metrics)
            else:
                score = -logs["train/loss"]
            for k, v in logs.items():
                if v is not None and math.isfinite(v):
                    live.log_metric(k, v)
            live.next_step()
            improved = score > state["best"]
            state.update(epoch=epoch + 1, best=max(score, state["best"]), stale=0 if improved else state["stale"] + 1)
            state["history"].append({"epoch": epoch + 1, **logs})
            if improved:
                torch.save(saved_state(model), out / BEST)
            torch.save({"model": saved_state(model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "state": state,
                        "adversary_optimizer": adversary_opt.state_dict() if adversary_opt else None}, out / CHECKPOINT)
            log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in logs.items()})
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                return {}
            if cfg.early_stop_patience and state["stale"] >= cfg.early_stop_patience:
                log.warning("early stop after epoch %d (%d epochs without val improvement)", epoch + 1, state["stale"])
                break
    load_state(model, torch.load(out / BEST, map_location="cpu", weights_only=True))
    test = data["test"] or data["val"]
    if test is None:
        raise ValueError(f"no test or val samples in {cfg.catalog} match {cfg.test_where!r} or {cfg.val_where!r}")
    result = evaluate(model, test.urls, test.ids, cfg, device)
    write_report(result, out, history=state["history"], aus=cfg.aus)
    images, _ = next(iter(make_loader(test.urls, (), FIGURE_SAMPLES, train=False, sample_ids=test.ids)))
    save_figures(model, images.to(device), out / "plots" / "png")
    return result.metrics
