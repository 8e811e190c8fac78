#!/usr/bin/env bash
# Every GPU check and benchmark of dino-pipe in one run (about 6 minutes on one H100/H200 with 16 cores):
# the GPU tests, the loader and training-step benchmarks against their reference implementations, a
# training run killed and resumed (compared with an uninterrupted one) and a CUDA k-NN. Each stage has
# its own time limit and writes OUT/<stage>.json as soon as it ends; OUT/summary.md is printed at the end.
#
#   bash tools/gpu_check.sh                 # on a GPU machine (needs torch with CUDA, DALI, webdataset, timm,
#                                           #   pytest, scikit-image, scikit-learn); results under $OUT or
#                                           #   benchmarks/gpu-check-<date>/
#   bash tools/gpu_check.sh --device cpu    # the same stages at small sizes on the CPU (a rehearsal)
#
# Extra arguments go to tools/gpu_check.py (--out DIR, --work DIR, --budget SECONDS, --quick).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
exec "$py" tools/gpu_check.py "$@"
