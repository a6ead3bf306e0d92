"""Torch work in a thread of its own, which ends with it.

Each thread that runs parallel torch work on a CPU keeps an OpenMP (libgomp) team of threads
until it ends. Once a process holds more of those than the machine has cores, libgomp stops
letting them spin between parallel regions, and the compiled chat decode (`finetune.fastdecode`:
hundreds of short parallel regions a token) ran at half speed (a 2-core AMD EPYC: 35 -> 18
tokens/s after one matmul in a long-lived thread, for good; docs/BENCHMARKS.md). So torch work
that a long-lived thread asks for (the app's Gradio workers, a command's main thread before it
chats) runs through `run`, or a function marked `off_main`.

The caller's context variables (a Gradio request's progress tracker) go along; torch's
per-thread modes (no_grad, inference_mode, autocast) do not: the function sets its own.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def run(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` run in a new thread that ends with it: its result, or its error."""
    context = contextvars.copy_context()
    result: list = []
    failure: list[BaseException] = []

    def work():
        try:
            result.append(context.run(fn, *args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(e)

    worker = threading.Thread(target=work, daemon=True,
                              name=f"finetune-{getattr(fn, '__name__', 'work')}")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


def off_main(fn: Callable[..., T]) -> Callable[..., T]:
    """A decorator: `fn` runs through `run` when a thread other than the main one calls it. The
    main thread of a command ends with it, and there Ctrl-C still reaches `fn`'s cleanup."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            return fn(*args, **kwargs)
        return run(fn, *args, **kwargs)

    return wrapper
