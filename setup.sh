#!/usr/bin/env bash
# Installs anyorder and its dependencies. torch 2.13.0 (CPU build, from local disk on our
# machines) is installed first only when no torch is importable, so a CUDA torch you brought
# yourself is kept and pip never pulls a multi-GB build through the unpinned requirement.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"
