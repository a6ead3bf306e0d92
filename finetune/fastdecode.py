"""Chat decoding on a CPU, compiled: the next-token steps run as code torch.compile made for the
loaded model, with each linear layer one pass over its weights.

A decode step multiplies one token's vector by every weight matrix, so on a CPU its time is the
reading of the weights (540 MB a token for the bundled model in fp32). MKL's matrix-vector
product reads them at ~10 GB/s on the 2-core AMD EPYC here and leaves the second core idle;
written as `(weight * x).sum(-1)`, inductor makes each one a vectorised reduction over all
cores at ~19-25 GB/s. transformers' static cache gives the step fixed shapes, so it compiles
once per cache size (`BUCKETS`), and the norms, rotary and attention around the products are
fused too. `bench chat`: ~2.5x plain `generate` with the same answer (docs/BENCHMARKS.md).

Compiling takes ~50 s on 2 cores (~12 s from inductor's cache, /tmp/torchinductor_<user>):
an answer whose cache size is not compiled yet decodes as before (eager), and once it is done
the size compiles in a background thread at the lowest CPU priority, while the user reads (an
answer that ran beside a compile took 3x as long). The compiled code uses the thread count of
the first compile: with another (a training started beside the chat), answers decode eagerly.
Only for what was measured: CPU, fp32, a model of MIN_PARAMS or more (below that a step is
Python, not weights). `FINETUNE_DECODE=eager` turns it off. The prefill (the prompt, many
tokens at once) is not compiled: it is matrix-matrix work.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import types
from typing import Any, Iterator

MIN_PARAMS = 50_000_000
BUCKETS = (512, 1024, 2048, 4096, 8192, 16384, 32768)  # static cache sizes, tokens
WARM_TOKENS = 3  # new tokens a warm-up generates: the second one runs the compiled step


class State:
    """A prepared model's compiled sizes; `lock` is held by a warm-up or a compiled answer, so a
    compile never runs beside the code it replaces (another answer then decodes eagerly)."""

    def __init__(self, log):
        self.lock = threading.Lock()
        self.starting = threading.Lock()  # one warm-up decided at a time
        self.ready: dict[int, float] = {}  # cache size -> seconds its compile took
        self.threads = 0  # torch threads the compiled code was made for
        self.failed = ""
        self.warming = 0
        self.log = log


def off_reason(model) -> str:
    """Why this model decodes eagerly ('' when compiled decoding applies)."""
    import torch

    if os.environ.get("FINETUNE_DECODE", "").lower() == "eager":
        return "FINETUNE_DECODE=eager"
    if model.device.type != "cpu":
        return f"not measured on {model.device.type}"
    if model.dtype != torch.float32:
        return f"not measured in {model.dtype}"
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model, "peft_config"):
        return "quantized or adapter model"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not support a static cache"
    if model.num_parameters() < MIN_PARAMS:
        return f"under {MIN_PARAMS // 1_000_000}M parameters"
    return ""


def prepare(model, log=print) -> State | None:
    """Make `model` decode compiled where it applies (its answers compile the sizes they need,
    `session`); None, and nothing changed, where it does not."""
    import torch

    if getattr(model, "_finetune_decode", None) is not None:
        return model._finetune_decode
    if off_reason(model):
        return None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(_linear, module)
    model._finetune_decode = State(log)
    return model._finetune_decode


def _linear(self, x):
    """nn.Linear, as one reduction per output when compiled for a single token's vector."""
    import torch

    if torch.compiler.is_compiling() and x.numel() == x.shape[-1]:
        y = (self.weight * x.unsqueeze(-2)).sum(-1)
        return y if self.bias is None else y + self.bias
    return torch.nn.functional.linear(x, self.weight, self.bias)


def bucket(n_tokens: int) -> int:
    """The static cache size for a prompt and answer of `n_tokens` (0: longer than any)."""
    return next((b for b in BUCKETS if b >= n_tokens), 0)


def _compile_config():
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    return config


def _static_cache(model, size: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=size)


def warm(model, n_tokens: int) -> None:
    """Compile, in the background, for answers of up to `n_tokens` (prompt included)."""
    state = getattr(model, "_finetune_decode", None)
    if state is not None:
        _warm(model, state, bucket(n_tokens))


def _warm(model, state: State, size: int) -> None:
    """Compile the decode step for cache `size` in a background thread (once at a time) whose
    CPU priority is the lowest (the compiler processes it starts inherit it)."""
    import torch

    threads = torch.get_num_threads()
    with state.starting:
        if not size or size in state.ready or state.warming or state.failed or \
                threads != (state.threads or threads):
            return
        state.warming = size

    def work():
        from transformers import GenerationConfig

        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only
        with state.lock:
            start = time.perf_counter()
            cfg = GenerationConfig(max_new_tokens=WARM_TOKENS, min_new_tokens=WARM_TOKENS,
                                   do_sample=False, pad_token_id=0, eos_token_id=None,
                                   compile_config=_compile_config())
            ids = torch.zeros((1, 8), dtype=torch.long)
            try:
                with torch.inference_mode():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   generation_config=cfg,
                                   past_key_values=_static_cache(model, size))
            except Exception as e:  # noqa: BLE001 - no compiler, an inductor bug: stay eager
                while getattr(e, "inner_exception", None) or e.__cause__:  # torch wraps the
                    e = getattr(e, "inner_exception", None) or e.__cause__  # backend's error
                text = (str(e).strip().splitlines() or [""])[0][:200]
                state.failed = f"{type(e).__name__}: {text}"
                state.log(f"Compiled decoding is off, answers decode as before: {state.failed}")
            else:
                state.threads = threads
                state.ready[size] = time.perf_counter() - start
            finally:
                state.warming = 0

    threading.Thread(target=work, daemon=True, name="finetune-compile").start()


@contextlib.contextmanager
def session(model, cfg, n_tokens: int) -> Iterator[dict[str, Any]]:
    """Extra `generate` arguments for one answer of up to `n_tokens` (prompt included): a static
    cache with `cfg` set to compile, when that size is compiled for the current thread count
    and no compile or other compiled answer runs; else none (eager), and once the answer is
    done its size compiles in the background for the next one."""
    import torch

    state = getattr(model, "_finetune_decode", None)
    size = bucket(n_tokens)
    if state is None or not size or state.failed:
        yield {}
        return
    if size not in state.ready:
        try:
            yield {}
        finally:
            _warm(model, state, size)
        return
    if torch.get_num_threads() != state.threads or not state.lock.acquire(blocking=False):
        yield {}
        return
    try:
        cfg.compile_config = _compile_config()
        yield {"past_key_values": _static_cache(model, size)}
    finally:
        state.lock.release()


def wait(model, timeout: float = 600.0) -> State | None:
    """Block until no warm-up runs for `model` (for benchmarks and tests)."""
    state = getattr(model, "_finetune_decode", None)
    deadline = time.monotonic() + timeout
    while state is not None and state.warming and time.monotonic() < deadline:
        time.sleep(0.1)
    return state
