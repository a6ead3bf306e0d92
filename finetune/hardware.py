"""What this machine is and what it runs fastest: device, precision (measured), threads, memory.

    python -m finetune bench hardware

Precision is decided by what the device really does, never by its name: on an AVX2-only CPU bf16
matmuls run ~70x slower than fp32, on an AVX-512-BF16 CPU ~3x faster (a probe tells, see
DESIGN.md); a GPU has bf16 tensor cores from compute capability 8.0 (A10G, L4, A100, H100), while a
T4 (7.5) only emulates bf16 (`torch.cuda.is_bf16_supported()` counts emulation unless told not
to), so it trains in fp16 with loss scaling.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from finetune import isolate, paths
from finetune.errors import DeviceMemoryError


@dataclass
class Hardware:
    device: str  # cuda | mps | cpu
    name: str  # GPU name or CPU model
    memory_gb: float  # GPU memory, or RAM for the CPU
    threads: int
    cpu_flags: list[str] = field(default_factory=list)
    bf16_native: bool = False  # bf16 in hardware (CPU: mkldnn says; GPU: capability >= 8.0)
    gflops: dict[str, float] = field(default_factory=dict)  # measured matmul speed per dtype
    capability: tuple[int, int] | None = None  # a CUDA GPU's compute capability, e.g. (7, 5)

    def describe(self) -> str:
        speed = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in self.gflops.items())
        extra = f" ({speed})" if speed else ""
        bf16 = "avx512_bf16" if "avx512_bf16" in self.cpu_flags else "no avx512_bf16"
        if self.device == "cpu":
            return (f"CPU {self.name}, {self.threads} threads, {self.memory_gb:.0f} GB RAM, "
                    f"{bf16}{extra}")
        cc = f", compute capability {self.capability[0]}.{self.capability[1]}" \
            if self.capability else ""
        return f"{self.device.upper()} {self.name}, {self.memory_gb:.0f} GB{cc}{extra}"


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
        # including_emulation=False: a T4 "supports" bf16 by emulation (slow); only sm80+ is native
        return Hardware("cuda", props.name, props.total_memory / 2**30, threads(),
                        bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
                        capability=tuple(torch.cuda.get_device_capability(0)))
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
            gflops[name] = round(isolate.run(
                _matmul_gflops, dtype, "cuda" if hw.device == "cuda" else "cpu"), 1)
        except RuntimeError:
            continue
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "gflops": gflops}))
    except OSError:
        pass
    return gflops


FP16_TENSOR_CORES = (7, 0)  # Volta and later: fp16 matmuls on tensor cores
BF16_TENSOR_CORES = (8, 0)  # Ampere and later: bf16 too


def choose_precision(hw: Hardware, gflops: dict[str, float]) -> tuple[str, str]:
    """(precision, reason): bf16 where the device runs it natively (and, on a CPU, faster),
    fp16 with loss scaling on GPUs with fp16 but no bf16 tensor cores (T4), else fp32."""
    fp32 = gflops.get("fp32", 0.0)
    bf16 = gflops.get("bf16", 0.0)
    if hw.device == "cuda":
        cc = hw.capability
        where = f"this GPU ({hw.name}" + (f", compute capability {cc[0]}.{cc[1]})" if cc else ")")
        if hw.bf16_native and (cc is None or cc >= BF16_TENSOR_CORES):
            return "bf16", f"{where} has bf16 tensor cores"
        fp16 = gflops.get("fp16", 0.0)
        if (cc is not None and cc >= FP16_TENSOR_CORES) or (fp16 and fp16 > 1.5 * fp32):
            return "fp16", (f"{where} has no native bf16 (it would be emulated, slowly): fp16 "
                            "mixed precision with loss scaling; full fine-tuning keeps fp32 "
                            "master weights")
        return "fp32", (f"{where} has neither bf16 nor fast fp16 (probe fp16 {fp16:.0f} vs fp32 "
                        f"{fp32:.0f} GFLOP/s)")
    if hw.device == "mps":
        return "fp32", "Apple GPUs train most reliably in fp32"
    probe_txt = f"probe bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s"
    if bf16 > 1.2 * fp32:
        return "bf16", f"this CPU runs bf16 natively ({probe_txt})"
    return "fp32", f"this CPU has no fast bf16 ({probe_txt})"


def inference_settings() -> tuple[str, str]:
    """(device, dtype) for generation on this machine."""
    hw = detect()
    if hw.device == "mps":
        return "mps", "fp32"
    return hw.device, choose_precision(hw, probe())[0]


def weights_dtype(method: str, precision: str) -> str:
    """The dtype training loads the weights in, for a run of `method` in `precision`.

    Full fine-tuning keeps fp32 master weights under 16-bit mixed precision: the Trainer's
    autocast runs the matmuls in fp16/bf16, while the optimizer updates fp32 weights (in bf16 a
    full-FT learning rate's small updates round away; fp16 gradients are refused by the loss
    scaler: "Attempting to unscale FP16 gradients"). LoRA and QLoRA keep the frozen base in 16
    bits (QLoRA: its compute dtype); PEFT upcasts the trained adapters to fp32
    (`autocast_adapter_dtype=True`), and TRL 1.16 keeps QLoRA adapters in bf16."""
    if method == "full" and precision in ("fp16", "bf16"):
        return "fp32"
    return precision


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


# TRL 1.16's fused LM head (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE, trl/trainer/utils.py
# _CHUNKED_LOGPROB_CHUNK_SIZE): the loss projects at most this many tokens x words at a time.
LOSS_TILE_TOKENS, LOSS_TILE_WORDS = 4096, 32768


def estimate_memory_gb(n_params: int, hidden: int, layers: int, vocab: int, method: str,
                       precision: str, batch: int, seq_len: int, checkpointing: bool,
                       lora_params: int = 0, device: str = "cpu", processes: int = 1,
                       strategy: str = "ddp") -> dict[str, float]:
    """A rough peak-memory estimate (GB) of one process, split into parts, for the fit check
    before a run.

    Weights: full fine-tuning keeps fp32 master weights (`weights_dtype`) and, under 16-bit
    autocast, a 16-bit copy of each for the step; LoRA keeps the frozen base in the compute
    precision (QLoRA ~0.55 byte a parameter) and fp32 adapters. Gradients (fp32) and AdamW's
    two fp32 moments for what is trained. Activations: ~34 x hidden bytes per token per layer
    in 16 bits (twice in fp32), counted once; attention scores are not kept (SDPA); with
    checkpointing each layer keeps only its input and one layer is recomputed at a time. The
    loss: TRL 1.16's fused LM head never builds the (tokens x vocabulary) logits, only tiles of
    at most 4,096 x 32,768 (forward and backward; the CPU's torch path keeps ~3 fp32
    temporaries of a tile), and fp32 gradients of the hidden states. With several processes,
    fsdp and zero3 split the weights among them, and fsdp, zero2 and zero3 the gradients and
    optimizer state; ddp keeps a whole copy in each.
    """
    b = BYTES[precision]
    if method == "full":
        weights = n_params * (4 + (2 if b == 2 else 0))
        trained = n_params
    else:
        weights = n_params * (0.55 if method == "qlora" else b) + lora_params * 4
        trained = lora_params
    optimizer = trained * (4 + 8)
    if processes > 1 and strategy in ("fsdp", "zero3"):
        weights /= processes
    if processes > 1 and strategy in ("fsdp", "zero2", "zero3"):
        optimizer /= processes
    tokens = batch * seq_len
    layer = 34 * hidden * b / 2  # bytes a token keeps for one layer's backward
    activations = tokens * (layers * hidden * b + layer if checkpointing else layers * layer)
    tile = min(tokens, LOSS_TILE_TOKENS) * min(vocab, LOSS_TILE_WORDS)
    loss = tile * (2 * b if device == "cuda" else b + 3 * 4) + tokens * (4 * hidden + 32)
    parts = {"weights": weights, "gradients+optimizer": optimizer,
             "activations": activations, "loss": loss}
    gb = {k: v / 2**30 for k, v in parts.items()}
    gb["total"] = sum(gb.values()) * 1.15 + 0.4  # allocator slack and the framework itself
    return gb


def logging_steps(device: str, max_steps: int) -> int:
    """Steps between training log lines (and metrics.jsonl records): every step on a CPU, where
    a step takes seconds; on a GPU, where steps take a fraction of a second, about 100 lines a
    run (at most one every 10 steps), so logging does not slow the run down."""
    if device != "cuda":
        return 1
    return max(1, min(10, max_steps // 100))


# --- one GPU shared by the app and a training ---------------------------------------------------

_RELEASERS: list[Callable[[], None]] = []  # what frees the models this process keeps loaded


def on_release(fn: Callable[[], None]) -> Callable[[], None]:
    """Register `fn` to drop models this process keeps (the chat cache), so that a training
    started on the same GPU gets their memory; `release_models` calls it."""
    if fn not in _RELEASERS:
        _RELEASERS.append(fn)
    return fn


def release_models() -> None:
    """Drop every registered model cache and hand cached GPU memory back (before a training
    starts on this machine's GPU)."""
    for fn in list(_RELEASERS):
        fn()
    empty_cache()


def empty_cache() -> None:
    """Collect unreferenced models and give the allocator's cached blocks back to the device."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def free_memory_gb() -> float | None:
    """GB free on the GPU now (what other processes, a training among them, hold is not free);
    None on a CPU."""
    if detect().device != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(0)
    return free / 2**30


def inference_need_gb(n_params: int, dtype: str, quantized: bool = False,
                      context_tokens: int = 2048) -> float:
    """Rough GPU memory for answering with a model: its weights (4-bit: ~0.55 byte a
    parameter), the CUDA context and room for activations and the KV cache."""
    weights = n_params * (0.55 if quantized else BYTES.get(dtype, 4))
    return weights * 1.2 / 2**30 + 0.5 + context_tokens * 2e-4


def check_room(need_gb: float, what: str, training: str | None) -> None:
    """Raise DeviceMemoryError when the GPU has less than `need_gb` free for `what`.

    `training` names the run training now (the caller asks finetune.jobs: this module knows
    nothing of runs); a CPU is never refused here."""
    free = free_memory_gb()
    if free is None or free >= need_gb:
        return
    if training:
        raise DeviceMemoryError(
            f"The GPU is busy training run {training}: {free:.1f} GB free, {what} needs "
            f"~{need_gb:.1f} GB. Wait for the run to finish or stop it, then try again.")
    raise DeviceMemoryError(
        f"Not enough GPU memory for {what}: {free:.1f} GB free of {detect().memory_gb:.0f} GB, "
        f"it needs ~{need_gb:.1f} GB. Close other programs using the GPU, or use a smaller "
        "model (or a QLoRA run, which answers with a 4-bit base).")


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA/MPS out-of-memory error (torch raises several types for it)."""
    if isinstance(e, MemoryError):
        return True
    text = f"{type(e).__name__}: {e}".lower()
    return "out of memory" in text or "outofmemory" in text


@contextlib.contextmanager
def memory_errors(what: str, tips: list[str], training: str | None = None):
    """Turn an out-of-memory error inside the block into a DeviceMemoryError that says what ran
    out, that a training shares the GPU when one does, and what to change."""
    try:
        yield
    except DeviceMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - only out-of-memory errors are translated
        if not is_out_of_memory(e):
            raise
        empty_cache()
        busy = f" A training (run {training}) is using the GPU now: wait for it or stop it." \
            if training else ""
        raise DeviceMemoryError(f"{what} ran out of memory.{busy} Try: " + "; or ".join(tips)
                                + f". ({type(e).__name__})") from None
