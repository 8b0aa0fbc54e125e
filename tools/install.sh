#!/usr/bin/env bash
# Creates (or refreshes) minivox's virtual environment: torch as a CPU build where one is at
# hand, then `pip install -e .[dev]`. Called by the Makefile; safe to run again.
#   usage: tools/install.sh [VENV_DIR] [PYTHON]
#   MINIVOX_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" picks another build.
set -euo pipefail
venv=${1:-.venv}
python=${2:-python3}
torch_version=2.13.0

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "minivox needs Python >= 3.10; $python is $("$python" --version 2>&1)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  if [ -n "${MINIVOX_TORCH:-}" ]; then
    # shellcheck disable=SC2086  # the variable holds a requirement plus pip options
    "${pip[@]}" install $MINIVOX_TORCH
  elif curl -fsI -m 5 https://download.pytorch.org/whl/cpu/ >/dev/null 2>&1; then
    # PyPI's Linux wheels carry CUDA (several GB); PyTorch's CPU index has the small build.
    "${pip[@]}" install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
  else
    # No PyTorch index reachable: use the configured package index (here it holds the CPU wheel).
    "${pip[@]}" install "torch==$torch_version"
  fi
fi
"${pip[@]}" install -q -e ".[dev]"
echo "minivox installed in $venv (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
