#!/usr/bin/env bash
# Every check that needs a CUDA GPU, one after the other, each result as JSON in $1 (default
# gpu-checks/): the GPU path end to end (train LoRA/QLoRA/full, evaluate, chat), our training
# against plain TRL on the bundled model, on a Llama-3.2-1B-shaped model (sequence 2048, LoRA)
# and on a Mistral-7B-shaped one (QLoRA); on the first two ours also runs with Liger's kernels
# (the last such measurement is what `liger_kernels: auto` follows); with 2+ GPUs the
# multi-process tests.
#   bash scripts/gpu-checks.sh            # ~30-40 minutes on one H100
#   FINETUNE_PYTHON=python3 bash scripts/gpu-checks.sh   # a Python that has the requirements
#                                         # already (a machine without PyPI): no setup
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FINETUNE_PYTHON:-}" ]; then
  py="$FINETUNE_PYTHON"
else
  bash scripts/setup.sh
  py=.venv/bin/python
fi
out="${1:-gpu-checks}"
mkdir -p "$out"
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA GPU is visible (torch.cuda.is_available() is False)" >&2
  exit 1
fi
failed=()
run() {  # name, then the bench arguments; a check that fails does not stop the ones after it
  local name="$1"; shift
  echo "== $name: python -m finetune bench $*" >&2
  if ! "$py" -m finetune bench "$@" --json > "$out/$name.json"; then
    echo "== $name FAILED (its error is above)" >&2
    failed+=("$name")
  fi
}
run gpu gpu
# ours with and without Liger's kernels where they are installed (setup installs them on GPUs)
liger=$("$py" -c "import liger_kernel" 2>/dev/null && echo --liger || true)
run train-bundled train $liger
run train-llama-1b train --shape llama-1b --seq-len 2048 $liger
run train-mistral-7b-qlora train --shape mistral-7b --seq-len 2048 --method qlora
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  echo "== $gpus GPUs: tests/test_launch.py (ddp, then fsdp)" >&2
  HF_HUB_OFFLINE=1 "$py" -m pytest -x -q -p no:cacheprovider tests/test_launch.py
  HF_HUB_OFFLINE=1 FINETUNE_TEST_STRATEGY=fsdp "$py" -m pytest -x -q -p no:cacheprovider \
    tests/test_launch.py -k curve
fi
echo "Results in $out/" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
