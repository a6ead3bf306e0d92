#!/usr/bin/env bash
# Create .venv (once) and install the pinned requirements into it.
#   bash scripts/setup.sh              # the app's requirements
#   bash scripts/setup.sh dev          # plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
req=requirements.txt
[ "${1:-}" = dev ] && req=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements.txt "$req" pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first, by itself: the pin resolves to the CPU build on a CPU machine, CUDA on a GPU Space.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$(grep '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  # The package itself, editable: `python -m finetune` and `finetune` work from any directory.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
