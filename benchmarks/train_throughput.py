"""Training throughput from the real shard loader vs in-memory tensors, same model and batch; one JSON line.

Goal: loader >= 0.9 of in-memory (the input pipeline must not starve the model). On a GPU pass
e.g. `--backbone PE-Core-L-14-336 --peft lora --image-size 336 --device cuda` (bf16 autocast).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fer_data.ingest import ingest
from fer_data.loaders import make_loader
from fer_models.config import TrainConfig
from fer_models.methods import build_method


def make_shards(root: Path, n: int, size: int) -> list[str]:
    """n face-like 'pre-aligned' images with emotion/age/gender labels (FairFace + folder layouts are not needed)."""
    raw = root / "raw"
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = raw / "train" / ["happy", "sad", "angry", "neutral"][i % 4]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    ingest("imagefolder", raw, root / "out", detector="none", size=size, shard_samples=256)
    return sorted(str(p) for p in (root / "out" / "shards").rglob("*.tar"))


def steps_per_s(model, batches, device, steps: int, warmup: int = 2) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    it = iter(batches)
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        images, targets = next(it)
        images = images.to(device, non_blocking=True)
        targets = {k: v.to(device) for k, v in targets.items() if torch.is_tensor(v)}
        with autocast:
            loss, _ = model.loss(model(images), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="PE-Core-T-16-384")
    p.add_argument("--peft", default="lora")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--shard-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cfg = TrainConfig(backbone=args.backbone, peft=args.peft, image_size=args.image_size, rank=64,
                      tasks=["emotion"], batch_size=args.batch_size)
    torch.manual_seed(0)
    model = build_method(cfg).to(device).train()
    n = args.batch_size * (args.steps + 2)
    with tempfile.TemporaryDirectory() as tmp:
        urls = make_shards(Path(tmp), n, args.shard_size)
        loader = make_loader(urls, ["emotion"], args.batch_size, train=True, num_workers=args.workers,
                             epoch_samples=10**9)
        first = next(iter(make_loader(urls, ["emotion"], args.batch_size, train=False)))
        loader_rate = steps_per_s(model, loader, device, args.steps)
        memory_rate = steps_per_s(model, iter(lambda: first, None), device, args.steps)
    print(json.dumps({
        "benchmark": "train_throughput", "device": torch.cuda.get_device_name() if device.type == "cuda" else
        f"cpu {platform.machine()} {os.cpu_count()} cores", "backbone": args.backbone, "peft": args.peft,
        "image_size": args.image_size, "batch_size": args.batch_size, "precision": "bf16" if device.type == "cuda"
        else "fp32", "workers": args.workers,
        "loader_img_per_s": round(loader_rate * args.batch_size, 1),
        "in_memory_img_per_s": round(memory_rate * args.batch_size, 1),
        "ratio": round(loader_rate / memory_rate, 3), "goal": 0.9,
    }))


if __name__ == "__main__":
    main()
