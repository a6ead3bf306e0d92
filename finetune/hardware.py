"""What this machine is and what it runs fastest: device, precision (measured), threads, memory.

    python -m finetune bench hardware

Precision is decided by a probe, never by the device's name: on an AVX2-only CPU bf16 matmuls
run ~70x slower than fp32, on an AVX-512-BF16 CPU ~3x faster (see DESIGN.md).
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field

from finetune import paths


@dataclass
class Hardware:
    device: str  # cuda | mps | cpu
    name: str  # GPU name or CPU model
    memory_gb: float  # GPU memory, or RAM for the CPU
    threads: int
    cpu_flags: list[str] = field(default_factory=list)
    bf16_native: bool = False  # what the platform says; the probe decides
    gflops: dict[str, float] = field(default_factory=dict)  # measured matmul speed per dtype

    def describe(self) -> str:
        speed = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in self.gflops.items())
        extra = f" ({speed})" if speed else ""
        bf16 = "avx512_bf16" if "avx512_bf16" in self.cpu_flags else "no avx512_bf16"
        if self.device == "cpu":
            return (f"CPU {self.name}, {self.threads} threads, {self.memory_gb:.0f} GB RAM, "
                    f"{bf16}{extra}")
        return f"{self.device.upper()} {self.name}, {self.memory_gb:.0f} GB{extra}"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
                return [f for f in line.split(":", 1)[1].split() if f in wanted]
    except OSError:
        pass
    return []


def _ram_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware("cuda", props.name, props.total_memory / 2**30, threads(),
                        bf16_native=torch.cuda.is_bf16_supported())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Hardware("mps", "Apple GPU", _ram_gb(), threads(), bf16_native=False)
    flags = cpu_flags()
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) if hasattr(torch.ops, "mkldnn") \
        else False
    return Hardware("cpu", cpu_model(), _ram_gb(), threads(), flags, bf16_native=native)


def gpu_count() -> int:
    """CUDA GPUs this process may use (CUDA_VISIBLE_DEVICES respected); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _matmul_gflops(dtype, device: str, budget_s: float = 0.05) -> float:
    import torch

    # The shape of one SmolLM2-135M MLP projection over a batch of 256 tokens.
    m, k, n = 256, 576, 1536
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed > budget_s or reps >= 2000:
            return 2 * m * k * n * reps / elapsed / 1e9


def probe() -> dict[str, float]:
    """Matmul speed in GFLOP/s for each usable precision, cached per machine and torch version."""
    import torch

    hw = detect()
    key = f"{hw.device}|{hw.name}|{torch.__version__}"
    cache = paths.models_dir() / "hardware-probe.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["gflops"]
    except (OSError, ValueError, KeyError):
        pass
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if hw.device != "cpu":  # fp16 crawls on CPUs (~2 GFLOP/s); only worth probing on GPUs
        dtypes["fp16"] = torch.float16
    gflops = {}
    for name, dtype in dtypes.items():
        if name == "bf16" and hw.device == "cuda" and not hw.bf16_native:
            continue
        try:
            gflops[name] = round(_matmul_gflops(dtype, "cuda" if hw.device == "cuda" else "cpu"), 1)
        except RuntimeError:
            continue
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "gflops": gflops}))
    except OSError:
        pass
    return gflops


def choose_precision(hw: Hardware, gflops: dict[str, float]) -> tuple[str, str]:
    """(precision, reason) from measured speed: bf16 where it is native and faster, else fp32/fp16."""
    fp32 = gflops.get("fp32", 0.0)
    bf16 = gflops.get("bf16", 0.0)
    if hw.device == "cuda":
        if hw.bf16_native:
            return "bf16", f"this GPU ({hw.name}) supports bf16"
        return "fp16", f"this GPU ({hw.name}) has no bf16; fp16 with loss scaling"
    if hw.device == "mps":
        return "fp32", "Apple GPUs train most reliably in fp32"
    probe_txt = f"probe bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"
    if bf16 > 1.2 * fp32:
        return "bf16", f"this CPU runs bf16 natively ({probe_txt})"
    return "fp32", f"this CPU has no fast bf16 ({probe_txt})"


def inference_settings() -> tuple[str, str]:
    """(device, dtype) for generation on this machine."""
    hw = detect()
    if hw.device == "cuda":
        return "cuda", "bf16" if hw.bf16_native else "fp16"
    if hw.device == "mps":
        return "mps", "fp32"
    return "cpu", choose_precision(hw, probe())[0]


def inference_threads(training_active: bool) -> int:
    """CPU threads for chat and evaluation; the caller says whether a training runs now
    (`finetune.jobs.active_run()`), since this module knows nothing of runs.

    All of them, except while a training runs on a machine of 2 cores or fewer: there torch's
    OpenMP threads wait on a core the training holds, and chat ran 4-8x slower at 2 threads than
    at 1 (measured on a 2-core AMD EPYC, no avx512_bf16: first token 4.2 s vs 0.25 s).
    """
    n = threads()
    return 1 if training_active and n <= 2 else n


def use_inference_threads(training_active: bool) -> None:
    import torch

    if detect().device == "cpu":
        torch.set_num_threads(inference_threads(training_active))


def summary() -> dict:
    hw = detect()
    out = asdict(hw)
    out["gflops"] = probe()
    out["precision"], out["precision_reason"] = choose_precision(hw, out["gflops"])
    return out


# --- memory ------------------------------------------------------------------------------------

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def estimate_memory_gb(n_params: int, hidden: int, layers: int, vocab: int, method: str,
                       precision: str, batch: int, seq_len: int, checkpointing: bool,
                       lora_params: int = 0, processes: int = 1,
                       strategy: str = "ddp") -> dict[str, float]:
    """A rough peak-memory estimate (GB) of one process, split into parts, for the fit check
    before a run.

    Weights in the compute precision (4-bit for QLoRA), gradients and AdamW state (two fp32
    moments plus an fp32 master copy in mixed precision) for trained parameters, activations
    (~34 values per hidden unit per token per layer without checkpointing, ~2 with it), and the
    logits over the vocabulary, which dominate for small models with big vocabularies. With
    several processes, fsdp and zero3 split the weights among them, and fsdp, zero2 and zero3
    the gradients and optimizer state; ddp keeps a whole copy in each.
    """
    b = BYTES[precision]
    weights = n_params * (0.55 if method == "qlora" else b)
    trained = n_params if method == "full" else lora_params
    optimizer = trained * (4 + 8 + (4 if b == 2 else 0))
    if processes > 1 and strategy in ("fsdp", "zero3"):
        weights /= processes
    if processes > 1 and strategy in ("fsdp", "zero2", "zero3"):
        optimizer /= processes
    tokens = batch * seq_len
    per_layer = (2 if checkpointing else 34) * hidden * b
    activations = tokens * layers * per_layer
    logits = tokens * vocab * 4 * 3  # fp32 logits, their softmax and its gradient
    parts = {"weights": weights, "gradients+optimizer": optimizer,
             "activations": activations, "logits": logits}
    gb = {k: v / 2**30 for k, v in parts.items()}
    gb["total"] = sum(gb.values()) * 1.15 + 0.4  # allocator slack and the framework itself
    return gb
