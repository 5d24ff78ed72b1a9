"""Evaluation: run a method over a selection, compute each task's metrics, write JSON and plots
(confusion matrices as CSV for `dvc plots` and as PNG, so they are viewable offline)."""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_data.labels import IGNORE_INDEX, LABEL_SPACES, NUM_CLASSES
from fer_data.loaders import make_loader
from fer_models.augment import take_frames
from fer_models.config import TrainConfig
from fer_models.methods import Method
from fer_models.metrics import TASK_METRICS, au_f1_baselines, confusion_matrix, summarize
from fer_models.plots import plot_to


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    y_true: dict[str, np.ndarray] = field(default_factory=dict)
    y_score: dict[str, np.ndarray] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    method: str = ""  # the method and run folder the plots' titles name
    run: str = ""

    def test_sets(self) -> str:
        """The datasets scored and their sizes ("rafdb 28, sfew 10"): a sample id starts with its dataset."""
        counts = Counter(sample_id.split(":", 1)[0] for sample_id in self.sample_ids)
        return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))

    def title(self, what: str) -> str:
        """A plot title naming what is shown, the method and run, and the test sets (wrapped)."""
        head = f"{what}: {self.method} ({self.run})" if self.method else what
        return "\n".join([head, *textwrap.wrap(f"test: {self.test_sets()}", 60)])


@torch.no_grad()
def evaluate(model: Method, urls: list[str], ids: set[str], cfg: TrainConfig, device: torch.device) -> EvalResult:
    model.eval()
    tasks = model.tasks
    loader = make_loader(urls, tasks, cfg.batch_size, train=False, num_workers=cfg.num_workers, aus=cfg.aus,
                         sample_ids=ids)
    scores: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    truth: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    sample_ids: list[str] = []
    loss_sum = 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for images, targets in loader:
        labels = {k: v.to(device) for k, v in targets.items() if torch.is_tensor(v)}
        with autocast:
            outputs = model(take_frames(images.to(device), cfg.frames))
            out = model.scores(outputs)
            loss_sum += float(model.loss(outputs, labels)[0]) * len(images)
        for t in tasks:
            scores[t].append(out[t].float().cpu().numpy())
            y = targets[t].numpy()
            if t == "au":
                y = np.where(targets["au_mask"].numpy() > 0, y, -1)
            truth[t].append(y)
        sample_ids.extend(targets["sample_id"])
    y_true = {t: np.concatenate(truth[t]) for t in tasks}
    y_score = {t: np.concatenate(scores[t]) for t in tasks}
    metrics: dict[str, Any] = {"n_samples": len(sample_ids), "loss": loss_sum / max(1, len(sample_ids))}
    for t in tasks:
        if t in NUM_CLASSES:  # labels beyond the head (contempt for a 7-way head) are not scored
            y_true[t] = np.where(y_true[t] >= y_score[t].shape[1], IGNORE_INDEX, y_true[t])
        names = cfg.aus if t == "au" else None
        scored = summarize(t, y_true[t], y_score[t], threshold=0.0, au_names=names)
        if t == "au" and cfg.au_rates:  # the label-blind F1 a model has to beat
            scored.update(au_f1_baselines(y_true[t], cfg.au_rates))
        for k, v in scored.items():
            metrics[f"{t}/{k}"] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return EvalResult(metrics, y_true, y_score, sample_ids, method=cfg.method, run=cfg.out)


def _plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 1 + 0.6 * len(names))  # wide enough for the title
    with plot_to(path, (side, side)) as ax:
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true")
        ax.set_title(title, fontsize=8)
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")


def curve_panels(history: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The training curves grouped into panels of one scale each: the total loss (train and val), the
    training loss's parts, and per task its headline validation metrics (TASK_METRICS; per-AU F1s
    and throughput are left out)."""
    keys = sorted({k for h in history for k in h if k != "epoch"})
    panels: dict[str, list[str]] = {
        "loss": [k for k in keys if k.split("/", 1)[-1] == "loss"],
        "training loss parts": [k for k in keys if k.startswith("train/loss_")],
    }
    for task, names in TASK_METRICS.items():
        panels[f"validation {task}"] = [k for k in keys if k in {f"val/{task}/{name}" for name in names}]
    return {name: series for name, series in panels.items() if series}


def _plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    panels = curve_panels(history)
    with plot_to(path, (6, 1 + 2.2 * len(panels)), nrows=len(panels)) as axes:
        axes = np.atleast_1d(axes)
        axes[0].figure.suptitle(title, fontsize=9)
        for ax, (name, series) in zip(axes, panels.items()):
            for k in series:
                ax.plot([h["epoch"] for h in history if k in h], [h[k] for h in history if k in h], marker="o", label=k)
            ax.set(xlabel="epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_title(name, fontsize=9)
            ax.legend(fontsize=6)


def _plot_au_f1(f1: dict[int, float], path: Path, title: str) -> None:
    known = [v for v in f1.values() if not math.isnan(v)]
    with plot_to(path, (1.5 + 0.45 * len(f1), 3.5)) as ax:
        ax.bar([f"AU{au}" for au in f1], [0.0 if math.isnan(v) else v for v in f1.values()], color="tab:blue")
        if known:
            ax.axhline(float(np.mean(known)), color="tab:red", linestyle="--", label=f"mean {np.mean(known):.3f}")
            ax.legend(fontsize=7)
        ax.set(ylim=(0, 1), ylabel="F1")
        ax.set_title(title, fontsize=8)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)


def write_report(result: EvalResult, out: Path, history: list[dict[str, Any]] | None = None,
                 aus: list[int] | None = None) -> None:
    """metrics.json, per class task a confusion CSV (dvc plots) and PNG, per-AU F1 as CSV and a bar PNG,
    the training curves PNG."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # `fer evaluate --out NEW` and RUN/eval start without one
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    plots = out / "plots"
    pngs = plots / "png"  # apart from the CSVs, so DVC can list them as one image-plot folder
    pngs.mkdir(parents=True, exist_ok=True)
    if "au" in result.y_true and aus:
        f1 = {au: result.metrics.get(f"au/f1_au{au}") for au in aus}
        f1 = {au: float("nan") if v is None else v for au, v in f1.items()}
        rows = ["au,f1"] + [f"AU{au},{'' if math.isnan(v) else round(v, 4)}" for au, v in f1.items()]
        (plots / "au_f1.csv").write_text("\n".join(rows) + "\n")
        _plot_au_f1(f1, pngs / "au_f1.png", result.title("per-AU F1"))
    for task, y in result.y_true.items():
        if task not in NUM_CLASSES:
            continue
        classes = result.y_score[task].shape[1]  # the head's width: 7 or 8 emotions
        names = list(LABEL_SPACES[task][:classes])
        pred = result.y_score[task].argmax(axis=1)
        keep = y >= 0
        rows = ["actual,predicted"] + [f"{names[a]},{names[p]}" for a, p in zip(y[keep], pred[keep])]
        (plots / f"confusion_{task}.csv").write_text("\n".join(rows) + "\n")
        _plot_confusion(confusion_matrix(y, pred, classes), names, pngs / f"confusion_{task}.png",
                        result.title(task))
    if history:
        _plot_curves(history, pngs / "training_curves.png", f"training curves: {result.method} ({result.run})")
