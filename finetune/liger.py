"""Liger's kernels on an NVIDIA GPU: RMSNorm, SwiGLU and RoPE fused into Triton kernels
(linkedin/Liger-Kernel, applied through TRL's `use_liger_kernel`), used where they were measured
faster on this GPU.

    python -m finetune bench train --json --liger   # ours with and without them, same run;
                                                    # 'auto' follows what it measured here
    python -m finetune train --liger-kernels on     # use them without measuring

Only the layer kernels: the loss stays ours (`fastpath.answer_loss`, the answer positions
only), which Liger's fused linear cross-entropy would replace with a whole-model forward of its
own. 'auto' turns them on only after `bench train --liger` measured this GPU (its name, torch
and liger-kernel versions) faster with them and with the same loss curve: never measured
anywhere before, they are not assumed to help. One measurement per GPU, the latest, whatever
model it was measured on (the plan's reason names it). Installed by `scripts/setup.sh` on
machines with an NVIDIA driver (`requirements-gpu.txt`); Triton needs a GPU, so never on a CPU.
A Space installs requirements.txt alone, so there 'auto' stays off (the reason says why).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import sys

from finetune.errors import ConfigError

PACKAGE = "liger-kernel"
# What TRL passes to Liger (`liger_kernel_config`): the layer kernels, not the loss.
KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
           "fused_linear_cross_entropy": False}
# Model types for which Liger 0.8.5 has all three (liger_kernel.transformers.monkey_patch: Gemma
# gets GeGLU instead, GLM-4 no RoPE kernel).
MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "phi3",
                         "granite", "olmo2", "smollm3"})
MIN_SPEEDUP = 1.03  # measured faster by more than the noise between two bench runs
MAX_LOSS_REL_DIFF = 0.02  # the same loss curve, within bf16 rounding
MEASURED_FILE = "liger-measured.json"  # in paths.models_dir(), beside the matmul probe's cache


def installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return ""


def machine_key(gpu_name: str) -> str:
    """What a measurement holds for: this GPU, torch and liger-kernel."""
    import torch

    return f"{gpu_name}|torch {torch.__version__}|{PACKAGE} {version()}"


def _file():
    from finetune import paths

    return paths.models_dir() / MEASURED_FILE


def record(gpu_name: str, result: dict) -> dict | None:
    """Keep what `bench train --liger` measured on this GPU (speedup, memory, loss difference of
    ours with the kernels against ours without, and on what) for 'auto': one measurement per
    GPU, the latest. Returns what was kept, None when it could not be written."""
    kept = {"key": machine_key(gpu_name), **result}
    try:
        _file().parent.mkdir(parents=True, exist_ok=True)
        _file().write_text(json.dumps(kept, indent=1), encoding="utf-8")
    except OSError:
        return None
    return kept


def measured(gpu_name: str) -> dict | None:
    """What `bench train --liger` measured on this GPU with these versions, or None."""
    try:
        saved = json.loads(_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == machine_key(gpu_name) \
        else None


def choose(device: str, model_type: str, is_installed: bool,
           measurement: dict | None) -> tuple[str, str]:
    """('on' or 'off', why) for 'auto'."""
    if device != "cuda":
        return "off", "Liger's kernels are Triton kernels for NVIDIA GPUs; this machine has none"
    if model_type not in MODEL_TYPES:
        return "off", f"Liger has no kernels for {_models(model_type)}"
    if not is_installed:
        return "off", (f"{PACKAGE} is not installed (scripts/setup.sh installs it on NVIDIA "
                       f"machines; or pip install -r requirements-gpu.txt)")
    if not measurement:
        return "off", ("not measured on this GPU yet: `python -m finetune bench train --liger` "
                       "measures training with and without them, and 'auto' follows")
    speedup = float(measurement.get("speedup", 0.0))
    diff = measurement.get("loss_max_rel_diff")
    on = measurement.get("on")
    said = (f"measured {speedup:.2f}x the speed, {measurement.get('memory', 0):.2f}x the memory "
            f"({on + ', ' if on else ''}{measurement.get('date', 'earlier')})")
    if diff is None:
        return "off", f"{said}, but no loss curve to compare: kept off"
    if float(diff) > MAX_LOSS_REL_DIFF:
        return "off", f"{said}, but the loss curve differed by {float(diff):.1%}: kept off"
    if speedup < MIN_SPEEDUP:
        return "off", f"{said}: no faster on this GPU"
    return "on", f"{said} on this GPU, the same loss curve"


def check(value: str, device: str, model_type: str, asked: str = "liger_kernels 'on'",
          instead: str = "use 'auto' or 'off'") -> None:
    """Refuse 'on' where it cannot work, before a run starts (`asked`: what the user asked for,
    `instead`: what to do instead, in the words of the command that asked)."""
    if value != "on":
        return
    if device != "cuda":
        raise ConfigError(f"{asked} needs an NVIDIA GPU (Liger's kernels are Triton kernels); "
                          f"this machine has none: {instead}.")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{asked}: Liger has no kernels for {_models(model_type)} (it has "
                          f"them for {', '.join(sorted(MODEL_TYPES))}): {instead}.")
    if not installed():
        raise ConfigError(f"{asked} but {PACKAGE} is not installed: pip install -r "
                          f"requirements-gpu.txt, or {instead}.")


def quiet_deprecation() -> None:
    """TRL 1.16 warns that `use_liger_kernel` will go in TRL 2 for the Hub's kernels (which need
    the Hub: this project pins TRL and must train without one); not a run's concern."""
    import warnings

    warnings.filterwarnings("ignore", message="`use_liger_kernel=True` is deprecated",
                            category=FutureWarning)


def _models(model_type: str) -> str:
    return f"{model_type} models" if model_type else "this model (its config names no type)"


def sft_settings(value: str) -> dict:
    """SFTConfig settings for the resolved value ('on' or 'off')."""
    if value != "on":
        return {}
    return {"use_liger_kernel": True, "liger_kernel_config": dict(KERNELS)}


@contextlib.contextmanager
def restored_after(model):
    """Liger replaces functions and classes of the model's modeling module (RoPE, RMSNorm, the
    MLP) for the whole process; put them back when training ends, so that a process that goes
    on to evaluate, chat or train with 'off' (`bench gpu`, `bench defaults`) does not run them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    saved = dict(vars(module)) if module is not None else None
    try:
        yield
    finally:
        if saved is not None:
            for name in [n for n in vars(module) if n not in saved]:
                delattr(module, name)
            for name, value in saved.items():
                if vars(module).get(name) is not value:
                    setattr(module, name, value)
