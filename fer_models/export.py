"""A trained run's evaluation graph, as PyTorch and as ONNX: uint8 face crops in, per-task probabilities out.

One graph serves `fer predict --engine torch` and, exported, `--engine onnx`, so both engines differ only
by the runtime's rounding (`fer export` checks the two agree within `PARITY_ATOL` before it writes).
The ONNX file records what a reader needs to use it without PyTorch (metadata: tasks, input size, class
names, AUs, frames per clip) and the digest of the weights it came from, so a file that no longer matches
its run's best.pt is refused, not silently used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from fer_data.labels import LABEL_SPACES
from fer_models.backbones import Backbone
from fer_models.config import TrainConfig
from fer_models.methods import Method
from fer_models.train import BEST, load_run

ONNX_FILE = "model.onnx"  # `fer export`'s default output, in the run folder: where `--engine onnx` looks
OPSET = 18
PARITY_ATOL = 1e-3  # max |probability difference| between onnxruntime and PyTorch that export accepts
_CLIP_SELECTION = re.compile(r"kind\s*=\s*'clip'", re.IGNORECASE)


@dataclass(frozen=True)
class GraphSpec:
    """What the graph takes and gives: input [B, 3, S, S] (or [B, T, 3, S, S] for clip models) uint8,
    outputs named by task, each class task's probabilities in `classes[task]` order."""

    tasks: tuple[str, ...]
    size: int
    frames: int | None  # frames per clip for clip models, None for image models
    classes: dict[str, list[str]]  # class names of each class task, `au_<n>` for AU outputs
    weights: str  # sha256 of the run's best.pt
    batch: int | None = None  # an ONNX file's fixed batch size (its trace fixed it); None: any

    def to_metadata(self) -> dict[str, str]:
        return {"fer_spec": json.dumps({"tasks": list(self.tasks), "size": self.size, "frames": self.frames,
                                        "classes": self.classes, "weights": self.weights, "batch": self.batch})}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> GraphSpec:
        if "fer_spec" not in props:
            raise ValueError("the ONNX file was not written by `fer export` (no fer_spec metadata)")
        spec = json.loads(props["fer_spec"])
        return cls(tuple(spec["tasks"]), int(spec["size"]), spec["frames"], spec["classes"], spec["weights"],
                   spec.get("batch"))


def output_tasks(model: Method) -> tuple[str, ...]:
    """Tasks the graph predicts: class tasks and AUs (regression heads stay out: no probabilities)."""
    return tuple(t for t in model.tasks if t in LABEL_SPACES or t == "au")


def class_names(cfg: TrainConfig, task: str, width: int) -> list[str]:
    """Names of a head's `width` outputs: the label space's first classes (8 emotions keep contempt), AU numbers."""
    return [f"au_{au}" for au in cfg.aus] if task == "au" else list(LABEL_SPACES[task][:width])


def input_size(model: nn.Module) -> int:
    """The resolution the run's backbone was trained at (the first vision tower in the model)."""
    for module in model.modules():
        if isinstance(module, Backbone):
            return module.image_size
    raise ValueError(f"{type(model).__name__} has no vision tower to take its input size from")


def clip_frames(cfg: TrainConfig) -> int | None:
    """Frames per clip of a model trained on clips (its training selection is kind = 'clip'), else None:
    the `segments` its clip datasets were ingested with, where the run's catalog is at hand, else the default."""
    if not _CLIP_SELECTION.search(cfg.train_where):
        return None
    from fer_data import catalog
    from fer_data.settings import Settings

    try:
        used = catalog.query(cfg.catalog, f"""
            SELECT DISTINCT TRY_CAST(params->>'segments' AS INTEGER) AS t FROM ingests WHERE dataset IN
            (SELECT dataset FROM samples WHERE kind = 'clip' AND {catalog.expression(cfg.train_where)})""").t
    except (FileNotFoundError, ValueError):  # no catalog here (a copied run folder): the default
        used = []
    return int(used[0]) if len(used) == 1 and used[0] > 0 else Settings().segments


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EvalGraph(nn.Module):
    """The method in eval mode, its scores turned into probabilities: softmax for class tasks, sigmoid for AUs."""

    def __init__(self, model: Method, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks
        self.eval()

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        scores = self.model.scores(self.model(pixels))
        return tuple(scores[t].float().sigmoid() if t == "au" else scores[t].float().softmax(-1) for t in self.tasks)


def load_graph(run: str | Path, device: torch.device | None = None) -> tuple[EvalGraph, GraphSpec]:
    """A run folder's evaluation graph (on `device`, default the run's) and its spec."""
    run = Path(run)
    cfg, model = load_run(run, device)
    tasks = output_tasks(model)
    if not tasks:
        raise ValueError(f"{run}: method {cfg.method} predicts no class or AU task (tasks: {model.tasks})")
    graph = EvalGraph(model, tasks)
    size, frames = input_size(model), clip_frames(cfg)
    probe = torch.zeros((1, *((frames,) if frames else ()), 3, size, size), dtype=torch.uint8,
                        device=next(model.parameters()).device)
    with torch.no_grad():
        widths = [p.shape[-1] for p in graph(probe)]
    spec = GraphSpec(tasks, size, frames, {t: class_names(cfg, t, w) for t, w in zip(tasks, widths)},
                     file_digest(run / BEST))
    return graph, spec


def example_input(spec: GraphSpec, batch: int = 2, seed: int = 0) -> Tensor:
    shape = (batch, *((spec.frames,) if spec.frames else ()), 3, spec.size, spec.size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def export_onnx(run: str | Path, out: str | Path | None = None, opset: int = OPSET) -> tuple[Path, float]:
    """Write RUN's evaluation graph to `out` (default RUN/model.onnx), after checking onnxruntime's probabilities
    against PyTorch's on random crops; returns the path and the max |diff|. The batch axis is dynamic where the
    traced graph allows it; a graph whose trace fixes it (PE-CLIP expands its prompts to the batch) is written
    for batches of one, which `OnnxGraph` feeds one at a time. The file appears only once checked (written
    under a staging name, then renamed)."""
    graph, spec = load_graph(run, torch.device("cpu"))
    out = Path(out) if out is not None else Path(run) / ONNX_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    try:
        for batch in (None, 1):
            fixed = dataclasses.replace(spec, batch=batch)
            _write_onnx(graph, fixed, staging, opset)
            diff = parity(graph, OnnxGraph(staging), fixed)
            if diff < PARITY_ATOL:
                break
        else:
            raise ValueError(f"ONNX export of {run} differs from PyTorch by {diff:.2e} (> {PARITY_ATOL}): not written")
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return out, diff


def _write_onnx(graph: EvalGraph, spec: GraphSpec, path: Path, opset: int) -> None:
    # TorchScript's exporter, not torch.export's (dynamo=True): same graph and parity on the test model,
    # 3 s against 75 s here; torch is pinned, so its deprecation notice is silenced, not a surprise.
    axes = None if spec.batch else {"pixels": {0: "batch"}, **{t: {0: "batch"} for t in spec.tasks}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=(DeprecationWarning, UserWarning, torch.jit.TracerWarning))
        torch.onnx.export(graph, (example_input(spec, spec.batch or 2),), str(path), dynamo=False,
                          opset_version=opset, input_names=["pixels"], output_names=list(spec.tasks),
                          dynamic_axes=axes)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, spec.to_metadata())
    onnx.save(model, str(path))


def parity(graph: EvalGraph, onnx_graph: OnnxGraph, spec: GraphSpec, batch: int = 3) -> float:
    """Max |probability difference| between the two engines on random crops, infinite where onnxruntime
    cannot run them (a batch size other than the export's: that checks the batch axis really is dynamic)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    pixels = example_input(spec, batch, seed=1)
    with torch.no_grad():
        ours = [t.numpy() for t in graph(pixels)]
    try:
        theirs = onnx_graph(pixels.numpy())
    except (Fail, InvalidArgument, RuntimeException):
        return math.inf
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))


class OnnxGraph:
    """An exported graph in onnxruntime: uint8 array in, per-task probability arrays out, like EvalGraph."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime

        from fer_data.faces.detectors import providers

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}: write it with `fer export RUN --format onnx`")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), opts, providers=providers())
        self.spec = GraphSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        pixels = np.ascontiguousarray(pixels, np.uint8)
        step = self.spec.batch or max(1, len(pixels))
        parts = [self.session.run(list(self.spec.tasks), {"pixels": pixels[i:i + step]})
                 for i in range(0, len(pixels), step)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]


def check_current(onnx_graph: OnnxGraph, run: str | Path) -> None:
    """Refuse an ONNX file exported from other weights than the run's best.pt (retrained since)."""
    if onnx_graph.spec.weights != file_digest(Path(run) / BEST):
        raise ValueError(f"the ONNX model was exported from other weights than {Path(run) / BEST}: "
                         f"export it again (`fer export {run} --format onnx`)")

