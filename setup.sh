#!/usr/bin/env bash
# Installs anyorder with everything its demo, apps and tests use, into .venv/ (the README's commands run
# .venv/bin/...).
#
# - Run inside an activated virtual environment (or conda env), it installs there and links .venv to it.
# - Otherwise it creates .venv (with --system-site-packages, so a CUDA torch you installed yourself is
#   kept), which also works where the system Python refuses pip installs (PEP 668: Debian/Ubuntu).
# - torch 2.13.0 (a CPU build, from local disk on our machines) is installed first only when no torch is
#   importable, so pip never pulls a multi-GB build through the unpinned `torch>=` requirement.
# - Debian's chromium (for the web app's browser test) is installed with apt-get when absent and possible.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ]; then
  ENV_DIR=${VIRTUAL_ENV:-$CONDA_PREFIX}
  if [ "$(readlink -f .venv 2>/dev/null || true)" != "$(readlink -f "$ENV_DIR")" ]; then
    rm -rf .venv && ln -s "$ENV_DIR" .venv
  fi
elif [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "torch==2.13.0"
fi
"$VPY" -m pip install -q -e ".[all]"
# Inception for FID (anyorder eval): torch-fidelity without its torchvision requirement (torchvision does not
# install beside every torch build, and anyorder only uses torch-fidelity's torch-only modules)
"$VPY" -m pip install -q --no-deps "torch-fidelity==0.4.0"

if ! command -v chromium >/dev/null 2>&1 && [ -x .ci/install_browser.sh ]; then
  bash .ci/install_browser.sh || echo "setup.sh: could not install chromium; the browser test will say so" >&2
fi
