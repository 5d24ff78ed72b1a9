"""Parameter-efficient fine-tuning of a `Backbone`: LoRA, DoRA, LoRA+ (the `peft` library) and MTLoRA.

Thesis setup: rank-64 adapters on every linear layer of the ViT (blocks, attention pooling,
projection); DoRA with LoRA+ (B matrices at 6x the learning rate: `dora_plus`, 8.47 % of PE-Core-L-14-336
trainable with the heads); MTLoRA = task-agnostic DoRA everywhere plus task-specific rank-64 LoRA in the
last block and the attention pooling, its B matrices at the same 6x.
Adapters are injected in place (`peft.inject_adapter_in_model`), so the returned model keeps the
`Backbone` interface; peft freezes every base weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from fer_models.backbones import Backbone, count_parameters

METHODS = ("lora", "dora", "lora_plus", "dora_plus", "mtlora")
DORA = ("dora", "dora_plus")  # LoRA+ is an optimizer setting (`lora_plus_param_groups`): *_plus differ in groups only


def default_target_modules(backbone: Backbone) -> list[str]:
    """Every `nn.Linear` of the backbone: PE-Core (Eva) `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`, the
    attention pool's `q`, `kv`, `proj`, `mlp.*` and the `head` projection; classic ViT `attn.in_proj`,
    `attn.out_proj`, `mlp.c_fc`, `mlp.c_proj` (Linear only after `linearize_attention`). Patch embedding
    (a conv) and the classic ViT's `proj` (a bare parameter) are not linear layers and stay frozen."""
    return [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]


class MTLoRALinear(nn.Module):
    """A task-agnostic adapted linear layer plus one task-specific low-rank update per task.

    `base` is the frozen Linear already carrying the shared (task-agnostic) LoRA/DoRA adapter from
    peft. With `active_task` None the layer is `base` (the shared path); with `active_task = t` it
    returns `base(x) + (alpha / rank) * B_t A_t x`. A_t is Kaiming-initialised and B_t zero, so every
    task path starts equal to the shared path. B matrices are named `lora_B_tasks.*` so LoRA+ finds them.
    """

    def __init__(self, base: nn.Module, tasks: Sequence[str], rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        weight = base.get_base_layer().weight if isinstance(base, LoraLayer) else base.weight
        out_features, in_features = weight.shape
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A_tasks = nn.ParameterDict({t: nn.Parameter(torch.empty(rank, in_features, **kw)) for t in tasks})
        self.lora_B_tasks = nn.ParameterDict({t: nn.Parameter(torch.zeros(out_features, rank, **kw)) for t in tasks})
        for a in self.lora_A_tasks.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.active_task: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.active_task is None:
            return out
        a, b = self.lora_A_tasks[self.active_task], self.lora_B_tasks[self.active_task]
        return out + F.linear(F.linear(self.dropout(x), a), b) * self.scaling


class MTLoRAModel(nn.Module):
    """MTLoRA (Agiza et al., CVPR 2024) on a Backbone, in the thesis' configuration. Simplifications:

    - Task-specific branches sit only in the last `task_blocks` blocks and the pooling layers after
      them (attention pool + projection for PE-Core; the classic ViT's pooling has no linear layer),
      not at the end of every stage (a plain ViT has no stages, and the heads read one pooled vector).
    - `forward_tasks` runs the shared trunk (embedding + first blocks, shared adapters only) once,
      then, per task t, the last `task_blocks` blocks and the pooling with task t's branches switched
      on: each task gets its own token stream there and its own pooled embedding, which feeds that
      task's head. Within that stream a layer computes the shared-adapted output plus task t's
      update (the `matrixv2` mode of the MTLoRA code): the heads read only task features, so under
      the paper's default mode, where the task stream bypasses the shared adapter, the shared
      adapters of those last layers would receive no gradient at all.
    - Task streams are run one after another (extra compute: tasks x task_blocks blocks), and
      task-specific matrices cannot be merged into the weights (as the thesis notes).
    `forward` is the shared (task-agnostic) path alone.
    """

    def __init__(self, backbone: Backbone, tasks: Sequence[str], rank: int, alpha: float, dropout: float,
                 task_blocks: int) -> None:
        super().__init__()
        if not tasks or not 1 <= task_blocks <= len(backbone.blocks):
            raise ValueError("mtlora needs task names and 1 <= task_blocks <= number of blocks")
        self.backbone = backbone
        self.tasks = tuple(tasks)
        self.task_blocks = task_blocks
        region = [*backbone.blocks[len(backbone.blocks) - task_blocks:], *backbone.pool_modules()]
        in_region = {id(m) for root in region for m in root.modules()}
        for name, module in list(backbone.named_modules()):
            if isinstance(module, LoraLayer) and id(module) in in_region:
                parent, _, child = name.rpartition(".")
                setattr(backbone.get_submodule(parent), child, MTLoRALinear(module, self.tasks, rank, alpha, dropout))

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @contextmanager
    def _task(self, task: str) -> Iterator[None]:
        layers = [m for m in self.backbone.modules() if isinstance(m, MTLoRALinear)]
        for layer in layers:
            layer.active_task = task
        try:
            yield
        finally:
            for layer in layers:
                layer.active_task = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward_tasks(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """task -> pooled task-specific embedding [B, embed_dim], one per task head."""
        backbone = self.backbone
        split = len(backbone.blocks) - self.task_blocks
        x, kwargs = backbone.embed(images)
        for block in backbone.blocks[:split]:
            x = block(x, **kwargs)
        out = {}
        for task in self.tasks:
            with self._task(task):
                y = x
                for block in backbone.blocks[split:]:
                    y = block(y, **kwargs)
                out[task] = backbone.pool(y)
        return out


def apply_peft(
    backbone: Backbone,
    method: str,
    rank: int = 64,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    tasks: Sequence[str] = (),
    task_blocks: int = 1,
    shared_dora: bool = True,
) -> nn.Module:
    """Freeze `backbone` and add adapters in place; returns the backbone (MTLoRA: an `MTLoRAModel` around it).

    method: `lora`; `dora` (peft `use_dora`); `lora_plus` / `dora_plus` (LoRA / DoRA adapters, train them
    with `lora_plus_param_groups`; dora_plus is the thesis' best model); `mtlora` (shared adapters as DoRA when `shared_dora`, the thesis'
    TA-DoRA, else LoRA as in the MTLoRA paper, plus per-task branches for `tasks` in the last
    `task_blocks` blocks and pooling). `alpha` defaults to `rank` (scale 1). `target_modules`
    defaults to every linear layer (`default_target_modules`); `tasks` is used by mtlora only.
    """
    if method not in METHODS:
        raise ValueError(f"unknown PEFT method {method!r}; known: {METHODS}")
    alpha = float(rank) if alpha is None else alpha
    if isinstance(target_modules, str):  # peft reads a string as a full-match regex
        targets: list[str] | str = target_modules
    else:
        targets = list(target_modules or default_target_modules(backbone))
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        use_dora=method in DORA or (method == "mtlora" and shared_dora))
    inject_adapter_in_model(config, backbone)
    if method == "mtlora":
        return MTLoRAModel(backbone, tasks, rank, alpha, dropout, task_blocks)
    return backbone


def _is_lora_b(name: str) -> bool:
    return any(part.startswith("lora_B") for part in name.split("."))


def lora_plus_param_groups(model: nn.Module, lr: float, ratio: float = 6.0, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups for LoRA+ (Hayou et al., 2024): B matrices (peft `lora_B`, MTLoRA `lora_B_tasks`)
    at `ratio` x `lr`, every other trainable parameter at `lr`. 1-D parameters (biases, norms, DoRA
    magnitudes) get no weight decay, so decay cannot shrink the DoRA magnitudes toward zero."""
    b, other, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (b if _is_lora_b(name) else other if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"name": "lora_B", "params": b, "lr": lr * ratio, "weight_decay": weight_decay},
        {"name": "other", "params": other, "lr": lr, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def trainable_summary(model: nn.Module) -> dict[str, int | float]:
    """Trainable and total parameter counts, and their ratio (the thesis' "% of parameters")."""
    trainable, total = count_parameters(model)
    return {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total}
