"""Several processes training one model: torch.distributed's elastic launcher (what `torchrun` runs) starts
`devices` workers on each of `nnodes` machines, gloo on CPU and NCCL on CUDA; the helpers below read the
process group and are a no-op in a single process, so the trainer has one code path.

The launcher's static rendezvous is torchrun's `--nnodes N --node_rank K --master_addr A --master_port P`:
every machine runs the same `fer train ... --set devices=G --set nnodes=N --set node_rank=K`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fer_models.config import TrainConfig

DEFAULT_PORT = 29500  # torchrun's, for several machines (one machine takes a free port)
# How long a rank waits for the others at a collective: rank 0 alone evaluates the validation set each
# epoch while the others wait, which on a large set takes minutes (NCCL's default is 10).
TIMEOUT = timedelta(hours=2)


def world_size(cfg: TrainConfig) -> int:
    """Processes a configuration asks for, over all machines."""
    return cfg.devices * cfg.nnodes


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, logs and reports."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over every rank (in place, and returned)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * world()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast(value: Any) -> Any:
    """Rank 0's `value` (picklable) on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean gradient over ranks of parameters DDP does not sync (a GAN's discriminator, stepped on its own)."""
    if dist.is_initialized():
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(entry: Callable[..., Any], cfg: TrainConfig, *args: Any) -> Any:
    """`entry(cfg.to_dict(), *args)` in `devices` worker processes of this machine, started by torch's elastic
    agent and joined with the other machines' (`max_restarts=0`: a failed worker stops the run, and the
    next `fer train` resumes from its checkpoint). Returns local rank 0's result (global rank 0's on the
    first machine)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    port = cfg.master_port or (_free_port() if cfg.nnodes == 1 else DEFAULT_PORT)
    config = LaunchConfig(
        min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.devices, run_id=f"fer-{cfg.digest()[:12]}",
        rdzv_backend="static", rdzv_endpoint=f"{cfg.master_addr}:{port}",
        rdzv_configs={"rank": cfg.node_rank, "timeout": int(TIMEOUT.total_seconds())},
        max_restarts=0, start_method="spawn", monitor_interval=0.5)
    return elastic_launch(config, entry)(cfg.to_dict(), *args)[0]


def init(device: torch.device) -> torch.device:
    """Join the process group the launcher set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* in the
    environment): NCCL when the run trains on CUDA, one GPU per local rank (the device this rank uses
    comes back); gloo on CPU."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            **({"device_id": device} if device.type == "cuda" else {}))
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
