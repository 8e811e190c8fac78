#!/usr/bin/env bash
# Create .venv (if needed) and install dino-pipe into it with the given extras.
# Usage: tools/setup.sh [EXTRAS]   e.g. tools/setup.sh dev   or   tools/setup.sh sample,plots
# Needs only Python >= 3.10, pip and a C compiler. torch is left to pip (bounded in pyproject),
# so a machine with a pip constraint or an index of its own gets its matching CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
stamp=.venv/.dino-pipe-installed-${extras:-base}
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing torch + torchvision (large; this takes a few minutes the first time)"
  .venv/bin/python -m pip install -q "torch>=2.4" "torchvision>=0.19" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision" || { echo "setup: torch did not install" >&2; exit 1; }
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "setup: installing dino-pipe $spec"
.venv/bin/python -m pip install -q -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import dino_pipe, nvidia.dali, webdataset, timm" || { echo "setup: dino-pipe did not install" >&2; exit 1; }
touch "$stamp"
