#!/usr/bin/env bash
# Every GPU-only check and benchmark of dino-pipe, in one script (< 8 minutes on one H100, 16 cores).
# Run on the GPU machine after unpacking the offline bundle (DALI + webdataset, see shared/gpu/README.md):
#   bash .gpu/unpack.sh .gpu "$HOME/site" && export PYTHONPATH="$HOME/site" && bash tools/gpu_check.sh
# Writes every figure as JSON plus a short table under $OUT (default: benchmarks/gpu-<date>/).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/gpu-$(date +%Y%m%d)}
mkdir -p "$out"
py=${PYTHON:-python3}
dp=("$py" -m dino_pipe)
cores=$(nproc)
work=${TMPDIR:-/tmp}/dp-gpu-check
mkdir -p "$work"
status=0
run() {  # run NAME CMD...: log to $out/NAME.log, remember failures, never stop the script
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" > "$out/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)"; else echo "   FAILED ($((SECONDS - t0)) s), see $name.log"; tail -5 "$out/$name.log"; status=1; fi
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u +%FT%TZ; } > "$out/machine.txt" 2>&1
"$py" -c "import torch, nvidia.dali as d; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'dali', d.__version__)" >> "$out/machine.txt" 2>&1
cat "$out/machine.txt"

# (1) the GPU-marked tests (mixed decode, GPU ops, GPU/CPU agreement, CUDA k-NN)
run gpu_tests "$py" -m pytest -q -p no:cacheprovider -m gpu tests

# (2) an ImageNet-like JPEG shard set made on the spot: ~400x350 photo crops of the shipped photos
run make_shards "$py" tools/bench_loader.py "$work/bench" --make-sample 4096 --rounds 0

# (3) loader: DALI on the GPU vs the reference PIL loader with all cores, 2x224 + 10x96
run bench_loader "$py" tools/bench_loader.py "$work/bench" --device cuda --batch-size 128 --threads "$cores" \
  --n-local 10 --steps 30 --warmup 5 --rounds 3 --json "$out/bench_loader.json"

# (4) training step: ViT-S/16, real shards vs synthetic (data wait), and the plain-PyTorch reference step
run bench_train "${dp[@]}" bench train --data "$work/bench" --batch-size 64 --steps 40 --warmup 10 --json "$out/bench_train.json"
run bench_train_reference "$py" tools/bench_train.py --batch-size 64 --steps 40 --warmup 10

# (5) a few hundred steps with --gpus 1, stopped, then resumed from the checkpoint
rm -rf "$work/run"
run train_first "${dp[@]}" train --config configs/vit_small_imagenet.yaml --data "$work/bench" --output "$work/run" --gpus 1 \
  --quiet train.max_steps=150 train.checkpoint_every_steps=50 data.batch_size=64 optim.warmup_epochs=1 train.epochs=4
run train_resume "${dp[@]}" train --config configs/vit_small_imagenet.yaml --data "$work/bench" --output "$work/run" --gpus 1 \
  --quiet train.max_steps=300 train.checkpoint_every_steps=50 data.batch_size=64 optim.warmup_epochs=1 train.epochs=4
cp "$work/run/summary.json" "$out/train_summary.json" 2>/dev/null
tail -n 3 "$work/run/metrics.jsonl" > "$out/train_metrics_tail.jsonl" 2>/dev/null

# (6) a short table of every figure
"$py" - "$out" <<'PY' | tee "$out/summary.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception as e:
        return {"missing": str(e)}
print("| check | figure |\n|---|---|")
print(f"| machine | {(out / 'machine.txt').read_text().strip().replace(chr(10), '; ')} |")
for name in ("bench_loader.json", "bench_train.json", "train_summary.json"):
    d = load(name)
    flat = {k: v for k, v in d.items() if isinstance(v, (int, float, str))}
    print(f"| {name} | {json.dumps(flat)[:600]} |")
PY
exit $status
