"""One trainer for every method: shards selected by SQL, the recipe's optimizer over the method's named
parameter groups, warm-up then its LR schedule, augmentation and mixing of training batches on the
device (fer_models.augment), gradient accumulation, bf16 autocast on GPU (fp32 on CPU),
checkpoint/resume, dvclive, early stopping.

Every epoch reseeds from (seed, epoch), and its loader shuffles with the same pair, so a run
resumed from an epoch checkpoint continues exactly as the uninterrupted run would have, with the same
or another number of processes (`devices`, `nnodes`: fer_models.distributed; `batch_size` is the
global batch, and each epoch reads every training sample once over all ranks).

A run folder holds one configuration (`claim_run`): the same configuration resumes from its
checkpoint, another one is refused unless the folder is overwritten. What DVC hashes of a run
(best.pt, checkpoint.pt, metrics.json, plots, dvclive plots) is the same bytes for the same
configuration and data; the one timing, images per second, goes to the console and `speed.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
import random
import re
import reprlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_data.catalog import QueryError
from fer_data.loaders import IndexedSamples, au_rates, make_loader, make_rank_loader, sample_shards
from fer_models import distributed
from fer_models.augment import augment, mix, permuted, take_frames
from fer_models.config import AUGMENT_OPS, EXECUTION_ONLY, TrainConfig, config_digest
from fer_models.evaluate import evaluate, write_report
from fer_models.methods import Method, build_method

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.json"
# Decoded training samples kept between epochs when the trainer's own process reads them (IndexedSamples):
# the demo's sets fit whole; a larger set is decoded as before past this much pixel memory.
DECODE_CACHE_BYTES = 1 << 30
SPEED = "speed.json"  # images/s of each epoch: a timing, never the same twice, so nothing DVC tracks
SEEN = "seen.json"  # with log_seen: samples read per epoch over all ranks, and how many distinct
# What a training run writes in its folder: `overwrite` removes these and never another file. `eval`
# is `fer evaluate`'s default output, made from the run's best.pt.
RUN_FILES = (CONFIG, CHECKPOINT, BEST, "metrics.json", "plots", "dvclive", SPEED, SEEN, "eval")
FIGURE_SAMPLES = 8  # test images the method's figures show


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` (0: left as they are) for a block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here (device=auto uses one when there is)")
    return device


def saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters and buffers outside the frozen backbone."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k in trainable or not k.startswith("backbone.") or "lora_" in k}


def load_checkpoint(path: Path) -> Any:
    """A file this trainer saved: tensors, numbers, strings and containers of them. Anything else (a
    pickled object, whose loading could run code) is refused, never unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        raise ValueError(f"{path} holds more than tensors and plain data ({found[1] if found else 'an object'}), "
                         "refused to load it: delete it or train with --overwrite") from None


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
    if not (run / CONFIG).is_file():
        raise FileNotFoundError(f"{run} is not a training run folder: it has no {CONFIG}")
    cfg = TrainConfig(**json.loads((run / CONFIG).read_text()))
    model = build_seeded(cfg).to(device or pick_device(cfg.device))
    load_state(model, load_checkpoint(run / BEST))
    return cfg, model


def optimizer_groups(model: Method, cfg: TrainConfig) -> list[dict]:
    """The method's named parameter groups as the optimizer gets them: empty groups dropped, weight decay
    filled in from cfg, every LR scaled by batch / lr_reference_batch when that is set. A parameter in two
    groups, or a trainable one in none (the adversary's aside), is an error: it would train twice or never."""
    scale = cfg.batch_size * cfg.grad_accum / cfg.lr_reference_batch if cfg.lr_reference_batch else 1.0
    groups = [g for g in model.param_groups(cfg) if g["params"]]
    owner: dict[int, str] = {}
    for i, group in enumerate(groups):
        group.setdefault("name", f"group{i}")
        for p in group["params"]:
            if id(p) in owner:
                raise ValueError(f"{cfg.method}: a parameter is in groups {owner[id(p)]!r} and {group['name']!r}")
            owner[id(p)] = group["name"]
    adversary = {id(p) for g in model.adversary_param_groups(cfg) for p in g["params"]}
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner and id(p) not in adversary]
    if left:
        raise ValueError(f"{cfg.method}: trainable parameters in no optimizer group: {left[:5]}")
    return [{**g, "params": list(g["params"]), "lr": g["lr"] * scale,
             "weight_decay": g.get("weight_decay", cfg.weight_decay)} for g in groups]


def build_optimizer(model: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    """cfg.optimizer over `optimizer_groups`: what training steps and what `fer recipe` reports."""
    groups = optimizer_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def describe_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """name, n_params, lr (before any schedule) and weight_decay of each optimizer group."""
    return [{"name": g.get("name", f"group{i}"), "n_params": sum(p.numel() for p in g["params"]),
             "lr": g.get("initial_lr", g["lr"]), "weight_decay": g["weight_decay"]}
            for i, g in enumerate(optimizer.param_groups)]


def recipe(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved recipe of `cfg` as training uses it: settings, and the optimizer groups and heads of the
    method built from it (random weights, seeded as training builds it)."""
    from fer_models.backbones import count_parameters
    from fer_models.registry import protocol

    model = build_seeded(cfg)
    trainable, total = count_parameters(model)
    optimizer = {"name": cfg.optimizer, **({"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {"betas": cfg.betas})}
    knobs = {"exponential": {"lr_gamma": cfg.lr_gamma},
             "plateau": {"plateau_factor": cfg.plateau_factor, "plateau_patience": cfg.plateau_patience}}
    warmup = {"epochs": cfg.warmup_epochs} if cfg.warmup_epochs is not None else {"fraction": cfg.warmup_fraction}
    op_knobs = {"crop": ["crop_scale"], "scale": ["scale_range"], "rotate": ["rotate_degrees"], "flip": ["flip_p"],
                "erase": ["erase_p", "erase_scale"], "noise": ["noise_std", "noise_p"]}
    augment = {"ops": [op for op in AUGMENT_OPS if op in cfg.augment],
               **{k: getattr(cfg, k) for op in cfg.augment for k in op_knobs[op]},
               "mixup": cfg.mixup, "fmix": cfg.fmix,
               **({"fmix_decay": cfg.fmix_decay} if cfg.fmix else {}), **({"mix_prob": cfg.mix_prob} if cfg.mixup or cfg.fmix else {})}
    adversary = model.adversary_param_groups(cfg)
    return {
        "method": cfg.method, "backbone": cfg.backbone, "pretrained": cfg.pretrained, "image_size": cfg.image_size,
        "frames": cfg.frames, "tasks": model.tasks, "heads": model.head_outputs(cfg), "emotion_classes": cfg.emotion_classes,
        "optimizer": optimizer, "lr": cfg.lr, "lr_reference_batch": cfg.lr_reference_batch,
        "weight_decay": cfg.weight_decay, "schedule": {"name": cfg.schedule, **knobs.get(cfg.schedule, {})},
        "warmup": warmup, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "grad_clip": cfg.grad_clip, "augment": augment,
        "param_groups": describe_groups(build_optimizer(model, cfg)),
        **({"adversary_groups": [{"name": g.get("name", f"group{i}"), "n_params": sum(p.numel() for p in g["params"]),
                                  "lr": g["lr"]} for i, g in enumerate(adversary)]} if adversary else {}),
        "trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total,
        "protocol": protocol(cfg.method),
    }


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    if cfg.warmup_epochs is not None:
        return round(cfg.warmup_epochs * steps_per_epoch)
    return max(1, int(steps_per_epoch * cfg.epochs * cfg.warmup_fraction))


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, plateau: dict[str, float]):
    """step -> LR multiplier: linear warm-up, then cfg.schedule (per step; exponential per epoch;
    plateau reads plateau["scale"], which the trainer lowers after each epoch without improvement)."""
    total, warmup = steps_per_epoch * cfg.epochs, warmup_steps(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        warm = (step + 1) / warmup if step < warmup else 1.0
        if cfg.schedule == "cosine":
            progress = max(0, step - warmup) / max(1, total - warmup)
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "exponential":
            return warm * cfg.lr_gamma ** (step // steps_per_epoch)
        if cfg.schedule == "plateau":
            return warm * plateau["scale"]
        return warm

    return factor


@dataclass
class Split:
    shard_of: dict[str, str]  # sample id -> URL of its shard

    @property
    def urls(self) -> list[str]:
        return sorted(set(self.shard_of.values()))

    @property
    def ids(self) -> set[str]:
        return set(self.shard_of)


def _split(cfg: TrainConfig, where: str) -> Split | None:
    """The selection's samples and shards; None when no sample matches (a broken selection is an error)."""
    try:
        return Split(sample_shards(cfg.catalog, where, fold=cfg.fold))
    except QueryError:
        raise
    except ValueError:
        return None


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


class RunFolderError(ValueError):
    """A run folder that holds another run: the user chooses (overwrite or another folder), never a mix."""


def clear_run(out: Path) -> None:
    """Remove a run's files from its folder (`RUN_FILES`), nothing else."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def claim_run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> bool:
    """Whether `cfg` (completed by `resolve_data`) continues the run in `cfg.out`. A folder holds the run
    of one configuration (`TrainConfig.digest`): the same configuration continues from its checkpoint;
    another one is refused, naming what differs, unless `overwrite` (its run files are removed first).
    `resume` insists on continuing: no checkpoint of this configuration is an error."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder, --overwrite replaces it: give one")
    out = Path(cfg.out)
    if overwrite:
        clear_run(out)
    choose = "train with --overwrite to replace it, or into another folder (--set out=...)"
    mine = json.loads(json.dumps(cfg.to_dict()))
    if (out / CONFIG).exists():
        try:
            theirs = json.loads((out / CONFIG).read_text())
        except json.JSONDecodeError:
            theirs = None
        if not isinstance(theirs, dict):
            raise RunFolderError(f"{out / CONFIG} is not a JSON config, so the run there is unknown: {choose}")
        differ = sorted(k for k in mine.keys() | theirs.keys()
                        if k not in EXECUTION_ONLY and mine.get(k) != theirs.get(k))
        if differ:
            changes = ", ".join(f"{k} {reprlib.repr(theirs.get(k))} -> {reprlib.repr(mine.get(k))}" for k in differ[:5])
            more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
            raise RunFolderError(f"{out} holds a run of another configuration ({config_digest(theirs)[:8]}; this one "
                                 f"is {cfg.digest()[:8]}: {changes}{more}): {choose}")
    elif (out / CHECKPOINT).exists() or (out / BEST).exists():
        raise RunFolderError(f"{out} holds checkpoints without the {CONFIG} that says what they are: {choose}")
    if resume and not (out / CHECKPOINT).exists():
        raise ValueError(f"--resume: {out} has no {CHECKPOINT} of this configuration to continue")
    return (out / CHECKPOINT).exists()


def prepare(cfg: TrainConfig, resume: bool = False, overwrite: bool = False
            ) -> tuple[TrainConfig, dict[str, Split | None], dict[str, Any] | None]:
    """Everything a run checks before it builds a model: the device, the catalog's selections, the run
    folder (`claim_run`) and the checkpoint it continues from (None: a fresh start). `fer train` calls
    it before starting a flow, so a mistake is one line."""
    pick_device(cfg.device)
    cfg, data = resolve_data(cfg)
    resuming = claim_run(cfg, resume, overwrite)
    return cfg, data, load_checkpoint(Path(cfg.out) / CHECKPOINT) if resuming else None


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


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train `cfg.method` in `cfg.out` (see `claim_run` for `resume` / `overwrite`) on `cfg.threads` CPU
    threads; returns the test metrics. `stop_after_epoch` simulates an interruption (tests). With
    devices x nnodes > 1 this process runs torch's elastic launcher, whose workers (`_worker`) train
    together (fer_models.distributed); it returns rank 0's metrics."""
    if distributed.world_size(cfg) > 1:
        return distributed.launch(_worker, cfg, resume, overwrite, stop_after_epoch)
    with cpu_threads(cfg.threads):
        return _train(cfg, resume, overwrite, stop_after_epoch, pick_device(cfg.device))


def _worker(config: dict[str, Any], resume: bool, overwrite: bool, stop_after_epoch: int | None) -> dict[str, Any]:
    """One launched process (the launcher's entry point): join the process group, train, leave it."""
    cfg = TrainConfig(**config)
    if not logging.getLogger().handlers:  # a fresh (spawned) process: rank 0's epoch lines, everyone's warnings
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = distributed.init(pick_device(cfg.device))
    if distributed.is_main():
        logging.getLogger("fer_models").setLevel(logging.INFO)
    try:
        with cpu_threads(cfg.threads):
            return _train(cfg, resume, overwrite, stop_after_epoch, device)
    finally:
        distributed.shutdown()


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing wherever a module offers it (open_clip / timm towers' `set_grad_checkpointing`):
    blocks recompute their activations in the backward, so PE-Core-L at 336 px fits a larger batch."""
    found = [m for m in model.modules() if hasattr(m, "set_grad_checkpointing")]
    if not found:
        raise ValueError(f"activation_checkpointing: {type(model).__name__}'s backbone has no set_grad_checkpointing")
    for module in found:
        module.set_grad_checkpointing(True)


def parallel(model: Method, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """What the training step calls the model through: DDP over what the generator's optimizer trains when
    there are several ranks (frozen parameters need no sync; an adversary, stepped on its own after the
    main backward, is left out and its gradients averaged by the trainer), compiled with `compile`.
    find_unused_parameters stays off: every trainable parameter gets a gradient each step (a batch
    without a task's labels still backpropagates zeros through its head: losses.masked_cross_entropy)."""
    forward: nn.Module = model
    if distributed.world() > 1:
        from torch.nn.parallel import DistributedDataParallel

        adversary = {id(p) for g in model.adversary_param_groups(cfg) for p in g["params"]}
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [n for n, p in model.named_parameters() if id(p) in adversary])
        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(forward) if cfg.compile else forward


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, stop_after_epoch: int | None,
           device: torch.device) -> dict[str, Any]:
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world()
    cfg = dataclasses.replace(cfg, world_size=world)
    # rank 0 checks and claims the run folder; the others take its selections and checkpoint (no shared disk needed)
    cfg, data, ckpt = distributed.broadcast(prepare(cfg, resume, overwrite) if main else None)
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    model = build_seeded(cfg).to(device)
    if world > 1 and device.type == "cuda":  # BatchNorm statistics over the global batch, as one process has them
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.activation_checkpointing:
        enable_checkpointing(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    epoch_samples = cfg.epoch_samples or len(data["train"].ids)
    steps_per_epoch = math.ceil(math.ceil(epoch_samples / cfg.batch_size) / cfg.grad_accum)
    optimizer = build_optimizer(model, cfg)
    plateau = {"scale": 1.0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, plateau))
    adversary = model.adversary_param_groups(cfg)
    adversary_opt = torch.optim.AdamW(adversary, weight_decay=cfg.weight_decay) if adversary else None
    state = {"epoch": 0, "best": -math.inf, "stale": 0, "history": [], "lr_scale": 1.0, "plateau_wait": 0}
    speed, seen = [], []  # images/s per epoch (SPEED); samples read per epoch (SEEN)
    if ckpt is not None:
        load_state(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if adversary_opt:
            adversary_opt.load_state_dict(ckpt["adversary_optimizer"])
        state = {"lr_scale": 1.0, "plateau_wait": 0, **ckpt["state"]}
        plateau["scale"] = state["lr_scale"]
        speed = json.loads((out / SPEED).read_text()) if main and (out / SPEED).exists() else []
        seen = json.loads((out / SEEN).read_text()) if main and (out / SEEN).exists() else []
        log.warning("resuming %s from epoch %d of %d (same configuration, %s)", out, state["epoch"], cfg.epochs,
                    cfg.digest()[:8])
    else:
        log.info("training %s into %s (configuration %s)", cfg.method, out, cfg.digest()[:8])
    forward = parallel(model, cfg, device)
    if main:
        (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2))
    train_set = IndexedSamples(data["train"].shard_of, model.tasks, cfg.aus,
                               cache_bytes=0 if cfg.num_workers else DECODE_CACHE_BYTES)

    from dvclive import Live

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    live_log = Live(str(out / "dvclive"), resume=state["epoch"] > 0, dvcyaml=None, save_dvc_exp=False) if main else None
    with live_log or nullcontext() as live:
        for epoch in range(state["epoch"], cfg.epochs):
            seed_everything(cfg.seed * 1000 + epoch + 7919 * rank)  # each rank its own augmentation draws
            model.train()
            loader = make_rank_loader(train_set, cfg.batch_size, seed=cfg.seed * 1000 + epoch, rank=rank, world=world,
                                      epoch_samples=epoch_samples, num_workers=cfg.num_workers)
            n_steps = len(loader)
            totals: dict[str, float] = {}
            consumed: list[str] = []  # the real samples this rank trained on (log_seen)
            n_images, started = 0, time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            for i, (images, targets) in enumerate(loader):
                real = ~targets.pop("pad")
                # this rank's share of the global batch: DDP averages over ranks, so a loss weighed by
                # world x share sums to the global batch's mean; padding (an empty share) weighs 0
                share = float(real.sum()) / float(targets.pop("batch_total")[0])
                weight = world * share
                if cfg.log_seen:
                    consumed += [sid for sid, keep in zip(targets["sample_id"], real.tolist()) if keep]
                images = take_frames(images.to(device, non_blocking=True), cfg.frames)
                if images.dim() == 4:
                    images = images.contiguous(memory_format=memory_format)
                targets = {k: v.to(device) for k, v in targets.items() if torch.is_tensor(v)}
                if cfg.augment:
                    images = augment(images, cfg)
                mixed = mix(images, cfg)
                stepping = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_steps
                sync = nullcontext() if stepping or world == 1 else forward.no_sync()
                with sync:
                    with autocast:
                        outputs = forward(images if mixed is None else mixed[0])
                        loss, parts = model.loss(outputs, targets)
                        if mixed is not None:  # soft targets: lam on each sample's label, 1 - lam on its partner's
                            _, perm, lam = mixed
                            partner, partner_parts = model.loss(outputs, permuted(targets, perm))
                            loss = lam * loss + (1 - lam) * partner
                            parts = {k: lam * v + (1 - lam) * partner_parts.get(k, v) for k, v in parts.items()}
                    (loss * weight / cfg.grad_accum).backward()
                if stepping:
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if adversary_opt:  # after the generator's step, on this step's (detached) outputs
                    adversary_opt.zero_grad(set_to_none=True)
                    with autocast:
                        adversary_loss, adversary_parts = model.adversary_loss(outputs, targets)
                    (adversary_loss * weight).backward()
                    distributed.average_gradients(p for g in adversary for p in g["params"])
                    adversary_opt.step()
                    parts = {**parts, **adversary_parts}
                for k, v in {"loss": float(loss.detach()), **parts}.items():  # summed as global-batch means
                    totals[k] = totals.get(k, 0.0) + v * share
                n_images += int(real.sum())
            names = sorted(totals)
            summed = distributed.all_reduce_sum(torch.tensor([totals[k] for k in names] + [n_images], dtype=torch.float64))
            logs = {f"train/{k}": float(v) / max(1, n_steps) for k, v in zip(names, summed.tolist())}
            speed.append({"epoch": epoch + 1, "images_per_s": round(float(summed[-1]) / (time.perf_counter() - started), 2)})
            if cfg.log_seen:
                everyone = [sid for ids in distributed.all_gather(consumed) for sid in ids]
                seen.append({"epoch": epoch + 1, "seen": len(everyone), "distinct": len(set(everyone))})
            score = None
            if main:  # rank 0 alone validates; every rank takes its score, so all stop and decay alike
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
            logs, score = distributed.broadcast((logs, score))
            improved = score > state["best"]
            state.update(epoch=epoch + 1, best=max(score, state["best"]), stale=0 if improved else state["stale"] + 1)
            if cfg.schedule == "plateau":  # ReduceLROnPlateau's rule, on the number best.pt follows
                state["plateau_wait"] = 0 if improved else state["plateau_wait"] + 1
                if state["plateau_wait"] >= cfg.plateau_patience:
                    state.update(lr_scale=state["lr_scale"] * cfg.plateau_factor, plateau_wait=0)
                    plateau["scale"] = state["lr_scale"]
                    log.info("epoch %d: LR x %g after %d epochs without improvement", epoch + 1,
                             cfg.plateau_factor, cfg.plateau_patience)
            state["history"].append({"epoch": epoch + 1, **logs})
            if main:
                if improved:
                    torch.save(saved_state(model), out / BEST)
                torch.save({"model": saved_state(model), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "state": state,
                            "adversary_optimizer": adversary_opt.state_dict() if adversary_opt else None}, out / CHECKPOINT)
                (out / SPEED).write_text(json.dumps(speed, indent=2))
                if cfg.log_seen:
                    (out / SEEN).write_text(json.dumps(seen, indent=2))
                log.info("epoch %d: %s, %.1f images/s", epoch + 1, {k: round(v, 4) for k, v in logs.items()},
                         speed[-1]["images_per_s"])
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                return {}
            if cfg.early_stop_patience and state["stale"] >= cfg.early_stop_patience:
                log.warning("early stop after epoch %d (%d epochs without val improvement)", epoch + 1, state["stale"])
                break
    if not main:  # rank 0 scores the best weights on the whole test set
        return {}
    load_state(model, load_checkpoint(out / BEST))
    test = data["test"] or data["val"]
    if test is None:
        raise ValueError(f"no test or val samples in {cfg.catalog} match {cfg.test_where!r} or {cfg.val_where!r}")
    result = evaluate(model, test.urls, test.ids, cfg, device)
    write_report(result, out, history=state["history"], aus=cfg.aus)
    images, _ = next(iter(make_loader(test.urls, (), FIGURE_SAMPLES, train=False, sample_ids=test.ids)))
    save_figures(model, images.to(device), out / "plots" / "png")
    return result.metrics
