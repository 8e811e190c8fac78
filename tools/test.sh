#!/usr/bin/env bash
# Set up .venv with the dev extra and run the test suite (GPU tests skip without CUDA).
# Usage: tools/test.sh [--all] [pytest args...]   (--all also runs the slow end-to-end tests)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh dev
# The object-storage tests talk to a local S3 server (moto); it has ~60 dependencies of its own, so it
# lives in .venv-moto, apart from the torch/DALI environment. Without it those tests skip, saying why.
if [ ! -x .venv-moto/bin/moto_server ]; then
  echo "test: installing moto[server] into .venv-moto (local S3 server for the object-storage tests)"
  { "${PYTHON:-python3}" -m venv .venv-moto && PIP_DISABLE_PIP_VERSION_CHECK=1 .venv-moto/bin/python -m pip install -q "moto[server]>=5"; } \
    || echo "test: could not install moto[server]; the object-storage tests will be skipped" >&2
fi
[ -x .venv-moto/bin/moto_server ] && export DINO_PIPE_MOTO_SERVER="$PWD/.venv-moto/bin/moto_server"
marks="not slow"
if [ "${1:-}" = "--all" ]; then marks=""; shift; fi
args=(-q -p no:cacheprovider --timeout=600)
[ -n "$marks" ] && args+=(-m "$marks")
exec .venv/bin/python -m pytest "${args[@]}" "$@" tests
