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
quiet_warnings() { grep -v "^WARNING: Location" >&2 || true; }
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing torch + torchvision: the default build for Linux x86-64 is the CUDA one with its NVIDIA"
  echo "       libraries (about 6.9 GB in .venv, several minutes); for the CPU-only build, see README 'Quick start'"
  .venv/bin/python -m pip install --progress-bar on "torch>=2.4" "torchvision>=0.19" 2> >(quiet_warnings) || true
  .venv/bin/python -c "import torch, torchvision" || { echo "setup: torch did not install" >&2; exit 1; }
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "setup: installing dino-pipe $spec and its dependencies (DALI, timm, webdataset, ...)"
.venv/bin/python -m pip install --progress-bar on -e "$spec" 2> >(quiet_warnings) \
  | grep -v "^Requirement already satisfied" || true
.venv/bin/python -c "import dino_pipe, nvidia.dali, webdataset, timm" || { echo "setup: dino-pipe did not install" >&2; exit 1; }
touch "$stamp"
