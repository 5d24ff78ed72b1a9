"""Evaluation: run a method over a selection, compute each task's metrics, write JSON and plots
(confusion matrices as CSV for `dvc plots` and as PNG, so they are viewable offline)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_data.labels import IGNORE_INDEX, LABEL_SPACES, NUM_CLASSES
from fer_data.loaders import make_loader
from fer_models.config import TrainConfig
from fer_models.methods import Method
from fer_models.metrics import au_f1_baselines, confusion_matrix, summarize


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    y_true: dict[str, np.ndarray] = field(default_factory=dict)
    y_score: dict[str, np.ndarray] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)


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
            outputs = model(images.to(device))
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
            y_true[t] = np.where(y_true[t] >= NUM_CLASSES[t], IGNORE_INDEX, y_true[t])
        names = cfg.aus if t == "au" else None
        scored = summarize(t, y_true[t], y_score[t], threshold=0.0, au_names=names)
        if t == "au" and cfg.au_rates:  # the label-blind F1 a model has to beat
            scored.update(au_f1_baselines(y_true[t], cfg.au_rates))
        for k, v in scored.items():
            metrics[f"{t}/{k}"] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return EvalResult(metrics, y_true, y_score, sample_ids)


@contextmanager
def plot_to(path: Path, figsize: tuple[float, float]) -> Iterator[Any]:
    """Axes of a new figure, saved as a PNG at `path` on exit (matplotlib's file-only Agg backend:
    no display here; imported on first use, so runs that plot nothing never load it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    with plot_to(path, (1 + 0.6 * len(names), 1 + 0.6 * len(names))) as ax:
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    keys = sorted({k for h in history for k in h if k != "epoch" and "images_per_s" not in k})
    with plot_to(path, (6, 4)) as ax:
        for k in keys:
            ax.plot([h["epoch"] for h in history if k in h], [h[k] for h in history if k in h], marker="o", label=k)
        ax.set(xlabel="epoch", title="training curves")
        ax.legend(fontsize=6)


def _plot_au_f1(f1: dict[int, float], path: Path) -> None:
    known = [v for v in f1.values() if not math.isnan(v)]
    with plot_to(path, (1.5 + 0.45 * len(f1), 3.5)) as ax:
        ax.bar([f"AU{au}" for au in f1], [0.0 if math.isnan(v) else v for v in f1.values()], color="tab:blue")
        if known:
            ax.axhline(float(np.mean(known)), color="tab:red", linestyle="--", label=f"mean {np.mean(known):.3f}")
            ax.legend(fontsize=7)
        ax.set(ylim=(0, 1), ylabel="F1", title="per-AU F1")
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)


def write_report(result: EvalResult, out: Path, history: list[dict[str, Any]] | None = None,
                 aus: list[int] | None = None) -> None:
    """metrics.json, per class task a confusion CSV (dvc plots) and PNG, per-AU F1 as CSV and a bar PNG,
    the training curves PNG."""
    out = Path(out)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    plots = out / "plots"
    pngs = plots / "png"  # apart from the CSVs, so DVC can list them as one image-plot folder
    pngs.mkdir(parents=True, exist_ok=True)
    if "au" in result.y_true and aus:
        f1 = {au: result.metrics.get(f"au/f1_au{au}") for au in aus}
        f1 = {au: float("nan") if v is None else v for au, v in f1.items()}
        rows = ["au,f1"] + [f"AU{au},{'' if math.isnan(v) else round(v, 4)}" for au, v in f1.items()]
        (plots / "au_f1.csv").write_text("\n".join(rows) + "\n")
        _plot_au_f1(f1, pngs / "au_f1.png")
    for task, y in result.y_true.items():
        if task not in NUM_CLASSES:
            continue
        names = list(LABEL_SPACES[task][: NUM_CLASSES[task]])
        pred = result.y_score[task].argmax(axis=1)
        keep = y >= 0
        rows = ["actual,predicted"] + [f"{names[a]},{names[p]}" for a, p in zip(y[keep], pred[keep])]
        (plots / f"confusion_{task}.csv").write_text("\n".join(rows) + "\n")
        _plot_confusion(confusion_matrix(y, pred, NUM_CLASSES[task]), names, pngs / f"confusion_{task}.png", task)
    if history:
        _plot_curves(history, pngs / "training_curves.png")
