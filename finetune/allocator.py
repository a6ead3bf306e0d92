"""The memory allocator a training process runs with: tcmalloc where it is installed.

A CPU training step allocates and frees the same large activations again and again. The C
library's malloc either keeps them in a heap that fragments (peak memory up) or, with the limit
`fastpath.release_freed_memory` sets, maps each one fresh, which page-faults on first write.
tcmalloc (gperftools, Debian's `libtcmalloc-minimal4`; PyTorch's CPU tuning guide recommends it)
keeps freed memory in size classes and reuses it. Measured on the `bench train` batch (AMD EPYC,
no avx512_bf16, docs/BENCHMARKS.md): a step took 0.86x the time on one thread and 0.80x on two,
at the same peak memory.

A library that replaces malloc must be loaded before the process starts (`LD_PRELOAD`), so the
entry points that train call `reexec()` first (`python -m finetune train|resume|bench`, the
worker `python -m finetune.train`), and `environ()` gives a child process its environment
(`bench train`'s plain-TRL baseline gets none). Not on a machine with an NVIDIA driver: it is
measured on CPUs only. `FINETUNE_ALLOCATOR=system` keeps the C library's malloc.
"""

from __future__ import annotations

import functools
import os
import sys

NAMES = ("tcmalloc_minimal", "tcmalloc")  # ctypes.util.find_library names, first found wins
_MARK = "FINETUNE_ALLOCATOR_SET"  # set once the environment was made: never exec twice
# tcmalloc reports every allocation over 1 GB on stderr (a model or optimizer state is one);
# the run's log is no place for that
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50)}


def _wanted() -> bool:
    """Linux without an NVIDIA driver, and not turned off (FINETUNE_ALLOCATOR=system)."""
    return (sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia")
            and os.environ.get("FINETUNE_ALLOCATOR") != "system")


@functools.cache
def find() -> str | None:
    """The file name of tcmalloc on this machine, or None (not installed, or not `_wanted`)."""
    if not _wanted():
        return None
    import ctypes.util

    for name in NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def environ(env: dict[str, str], use: bool = True) -> dict[str, str]:
    """A copy of `env` for a child process: with tcmalloc preloaded (`use`, when installed), or
    with it taken out of LD_PRELOAD (not `use`)."""
    env = dict(env)
    lib = find()
    kept = [p for p in env.get("LD_PRELOAD", "").split(":") if p and not _is_tcmalloc(p)]
    if use and lib:
        kept.insert(0, lib)
        env.update(_QUIET)
        env[_MARK] = "1"
    else:
        env.pop(_MARK, None)
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def _is_tcmalloc(path: str) -> bool:
    return os.path.basename(path).startswith("libtcmalloc")


def in_use() -> str | None:
    """The tcmalloc file this process runs with, or None (the C library's malloc)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                path = line.split()[-1]
                if _is_tcmalloc(path):
                    return os.path.basename(path)
    except OSError:
        pass
    return None


def describe() -> str:
    """For the run's log: which allocator, and how to get the faster one."""
    lib = in_use()
    if lib:
        return f"tcmalloc ({lib})"
    if find():
        return "the C library's (tcmalloc is installed but was not loaded at the start)"
    if _wanted():
        return ("the C library's (install Debian's libtcmalloc-minimal4 for ~15-20% faster CPU "
                "training steps)")
    return "the C library's"


def reexec() -> None:
    """Start this process again with tcmalloc preloaded, when it is installed and not loaded
    yet (once: the environment is marked). Call it first thing in an entry point."""
    if os.environ.get(_MARK) or find() is None or in_use():
        return
    env = environ(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])), env)
