"""Training speed of one method on in-memory batches (model cost only, no input pipeline); one JSON line.

Samples are clips [B, T, 3, H, W] with `--frames T`, else images. bf16 autocast on CUDA, fp32 on CPU,
as in the trainer. The issues' GPU figures:
  PE-CLIP clips/s:  python benchmarks/method_throughput.py --method pe_clip --frames 16 --device cuda
  MAE img/s (B/16): python benchmarks/method_throughput.py --method mae --device cuda
Any `--set key=value` of TrainConfig applies on top of the method's paper defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from fer_models.backbones import count_parameters
from fer_models.config import TrainConfig
from fer_data.labels import NUM_CLASSES
from fer_models.methods import build_method
from train_throughput import steps_per_s


def synthetic_batch(model, cfg: TrainConfig, batch_size: int, frames: int, size: int) -> tuple[torch.Tensor, dict]:
    """Random uint8 pixels (the loaders' contract) and targets for every task the method has."""
    g = torch.Generator().manual_seed(0)
    shape = (batch_size, frames, 3, size, size) if frames else (batch_size, 3, size, size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    targets: dict[str, torch.Tensor] = {}
    for task in model.tasks:
        if task == "au":
            targets["au"] = torch.randint(0, 2, (batch_size, len(cfg.aus)), generator=g).float()
            targets["au_mask"] = torch.ones(batch_size, len(cfg.aus))
        else:
            targets[task] = torch.randint(0, NUM_CLASSES[task], (batch_size,), generator=g)
    return images, targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True)
    p.add_argument("--frames", type=int, default=0, help="T frames per clip; 0 = images")
    p.add_argument("--input-size", type=int, default=112, help="side of the stored aligned faces (shards)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig key=value")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cfg = TrainConfig.load(None, overrides=[f"method={args.method}", *args.overrides])
    torch.manual_seed(0)
    model = build_method(cfg).to(device).train()
    batch = synthetic_batch(model, cfg, args.batch_size, args.frames, args.input_size)
    rate = steps_per_s(model, iter(lambda: batch, None), device, args.steps)
    trainable, total = count_parameters(model)
    print(json.dumps({
        "benchmark": "method_throughput", "method": args.method, "backbone": cfg.backbone,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else
        f"cpu {platform.machine()} {os.cpu_count()} cores",
        "precision": "bf16" if device.type == "cuda" else "fp32", "batch_size": args.batch_size,
        "frames": args.frames, "trainable_params": trainable, "total_params": total,
        "samples_per_s": round(rate * args.batch_size, 2), "unit": "clips/s" if args.frames else "img/s",
    }))


if __name__ == "__main__":
    main()
