#!/usr/bin/env bash
# Set up .venv with the dev extra and run the test suite (GPU tests skip without CUDA).
# Usage: tools/test.sh [--all] [pytest args...]   (--all also runs the slow end-to-end tests)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh dev
marks="not slow"
if [ "${1:-}" = "--all" ]; then marks=""; shift; fi
args=(-q -p no:cacheprovider --timeout=600)
[ -n "$marks" ] && args+=(-m "$marks")
exec .venv/bin/python -m pytest "${args[@]}" "$@" tests
