"""Chat decoding on a CPU, compiled: the next-token steps run as code torch.compile made for the
loaded model, with each linear layer one pass over its weights.

A decode step multiplies one token's vector by every weight matrix, so on a CPU its time is the
reading of the weights (540 MB a token for the bundled model in fp32). MKL's matrix-vector
product reads them at ~10 GB/s on the 2-core AMD EPYC here and leaves the second core idle;
written as `(weight * x).sum(-1)`, inductor makes each one a vectorised reduction over all
cores at ~19-25 GB/s. transformers' static cache gives the step fixed shapes, so it compiles
once per cache size (`BUCKETS`), and the norms, rotary and attention around the products are
fused too. `bench chat`: ~2.5x plain `generate` with the same answer (docs/BENCHMARKS.md).

Compiling takes ~50 s on 2 cores (~12 s from inductor's cache, torchinductor_<user> in the temp
directory): an answer whose cache size is not compiled yet decodes as before (eager), and once it
is done the size compiles in a background thread at the lowest CPU priority, while the user reads
(an answer that ran beside a compile took 3x as long). The compiled code uses the thread count of
the first compile: with another (a training started beside the chat), answers decode eagerly. Only
for what was measured: CPU, fp32, a model of MIN_PARAMS or more (below that a step is Python, not
weights). `FINETUNE_DECODE=eager` turns it off. The prefill (the prompt, many tokens at once) is
not compiled: it is matrix-matrix work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import types
from typing import Any, Iterator

MIN_PARAMS = 50_000_000
BUCKETS = (512, 1024, 2048, 4096, 8192, 16384, 32768)  # static cache sizes, tokens
WARM_TOKENS = 3  # new tokens a warm-up generates: the 2nd and 3rd by the compiled step


class State:
    """A prepared model's compiled cache sizes, and how many answers used them."""

    def __init__(self, log):
        self.ready: dict[int, float] = {}  # cache size -> seconds its compile took
        self.threads = 0  # torch threads the compiled code was made for (its first compile)
        self.failed = ""
        self.compiled_answers = 0
        self.closed = False  # the chat let the model go: no compile for it any more
        self.log = log


# One compile, or one compiled answer, at a time in the process, whichever model: a compile
# beside an answer made it 3x slower, and two compiled answers at once share the same cores.
_busy = threading.Lock()
_guard = threading.Lock()  # for the two below
_warming: list = []  # the cache size compiling now, or waiting for answers to end
_answering = [0]  # answers of prepared models in progress, eager or compiled


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
    """Compile the decode step for cache `size` in a background thread at the lowest CPU
    priority (the compiler processes it starts inherit it), once no answer runs; one at a time
    in the process, so a request while another compiles is dropped (the next answer asks again).
    """
    with _guard:
        if not size or size in state.ready or state.failed or state.closed or _warming:
            return
        _warming.append(size)

    def work():
        import torch
        from transformers import GenerationConfig

        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only
        try:
            while _answering[0] and not state.closed:  # the user reads the answer now
                time.sleep(0.2)
            with _busy:
                threads = torch.get_num_threads()  # inductor writes it into the code
                if state.closed or threads != (state.threads or threads):
                    return  # the first compile's count sticks (dynamo does not check it)
                start = time.perf_counter()
                cfg = GenerationConfig(max_new_tokens=WARM_TOKENS, min_new_tokens=WARM_TOKENS,
                                       do_sample=False, pad_token_id=0, eos_token_id=None,
                                       compile_config=_compile_config())
                ids = torch.zeros((1, 8), dtype=torch.long)
                with torch.inference_mode():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   generation_config=cfg,
                                   past_key_values=_static_cache(model, size))
                state.threads = threads
                state.ready[size] = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001 - no compiler, an inductor bug: stay eager
            _fail(state, e)
        finally:
            with _guard:
                _warming.clear()

    threading.Thread(target=work, daemon=True, name="finetune-compile").start()


def _fail(state: State, error: Exception) -> None:
    """Compiled decoding off for this model, said where the chat logs and on stderr."""
    while getattr(error, "inner_exception", None) or error.__cause__:  # torch wraps the
        error = getattr(error, "inner_exception", None) or error.__cause__  # backend's error
    text = (str(error).strip().splitlines() or [""])[0][:200]
    state.failed = f"{type(error).__name__}: {text}"
    message = (f"Compiled decoding is off for this model, its answers decode as before: "
               f"{state.failed} (torch.compile needs a working C++ compiler such as g++; "
               "FINETUNE_DECODE=eager skips it)")
    state.log(message)
    if state.log is not print:
        print(message, file=sys.stderr)


def forget(model) -> None:
    """The chat let `model` go: a compile waiting for it is dropped."""
    state = getattr(model, "_finetune_decode", None)
    if state is not None:
        state.closed = True


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
    with _guard:
        _answering[0] += 1
    try:
        if size not in state.ready:
            yield {}
        elif torch.get_num_threads() != state.threads or not _busy.acquire(blocking=False):
            yield {}
        else:
            try:
                cfg.compile_config = _compile_config()
                cfg.prefill_chunk_size = None  # a chunked prefill would compile in the answer
                state.compiled_answers += 1
                yield {"past_key_values": _static_cache(model, size)}
            except Exception as e:  # the answer fails; later ones decode eagerly
                _fail(state, e)
                raise
            finally:
                _busy.release()
    finally:
        with _guard:
            _answering[0] -= 1
        if size not in state.ready:
            _warm(model, state, size)


def wait(model, timeout: float = 600.0) -> State | None:
    """Block until no compile runs or waits (for benchmarks and tests); `model`'s state."""
    deadline = time.monotonic() + timeout
    while _warming and time.monotonic() < deadline:
        time.sleep(0.1)
    return getattr(model, "_finetune_decode", None)
