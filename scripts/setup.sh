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
# Debian packages that make it faster on a CPU where present, installed with apt-get where this
# user may (root, or sudo without a password), else a note; each missing set is tried once:
# - tcmalloc: CPU training steps ~15-20% faster at the same peak memory (finetune/allocator.py);
# - g++: torch.compile's C++ code, for the chat's compiled decode (finetune/fastdecode.py).
ensure_packages() {
  [ "$(uname -s)" = Linux ] && [ ! -e /proc/driver/nvidia ] || return 0
  local want=()
  local probe="import ctypes.util as u, sys; sys.exit(not (u.find_library('tcmalloc_minimal')
    or u.find_library('tcmalloc')))"
  .venv/bin/python -c "$probe" || want+=(libtcmalloc-minimal4)
  command -v g++ >/dev/null 2>&1 || want+=(g++)
  [ ${#want[@]} -gt 0 ] || return 0
  [ "$(cat .venv/.apt-tried 2>/dev/null)" != "${want[*]}" ] || return 0
  echo "${want[*]}" > .venv/.apt-tried
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "note: CPU training and chat are faster with these: apt-get install ${want[*]}"
      return 0
    fi
  fi
  command -v apt-get >/dev/null 2>&1 || return 0
  { $sudo apt-get update -qq && \
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}"; } \
    >.venv/apt-install.log 2>&1 || \
    echo "note: could not install ${want[*]} (see .venv/apt-install.log); without tcmalloc" \
         "training uses the C library's malloc, without g++ the chat decodes uncompiled"
}
gpu=""
[ -e /proc/driver/nvidia ] && gpu=requirements-gpu.txt  # an NVIDIA driver: Liger's kernels too
stamp=".venv/.installed-$(cat requirements.txt "$req" $gpu pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first, by itself: the pin resolves to the CPU build on a CPU machine, CUDA on a GPU Space.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$(grep '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req" ${gpu:+-r "$gpu"}
  # The package itself, editable: `python -m finetune` and `finetune` work from any directory.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
ensure_packages  # every time: cheap when nothing is missing
