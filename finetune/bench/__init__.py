"""Speed on this machine, measured (never assumed), with the CPU/GPU named beside every figure.

    python -m finetune bench                 # hardware, data, chat, train
    python -m finetune bench train --json    # our training against plain TRL, same run
    python -m finetune bench train --json --shape llama-1b --seq-len 2048   # on a GPU
    python -m finetune bench chat --json     # the Chat tab against plain generate, same run
    python -m finetune bench data            # `data inspect` on 100,000 rows; 10,000 files
    python -m finetune bench defaults        # auto vs hand-tuned vs LLaMA-Factory defaults (hours)
    python -m finetune bench defaults --tasks dates,receipts --setups auto,hand-tuned
    python -m finetune bench gpu --json      # the GPU path end to end (needs a CUDA GPU)

Each benchmark is a function returning a JSON-ready dict; the CLI prints them. Progress lines go
to stderr, so `--json` output is the results alone.
"""

from __future__ import annotations

import sys

from finetune.errors import ConfigError


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def cpu_id() -> str:
    """The CPU's model name with its family and model numbers (the name alone can be 'AMD EPYC'
    for several generations)."""
    from finetune import hardware

    name, fields = hardware.cpu_model(), {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip():
                break
    except OSError:
        return name
    if fields:
        return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    return name


def bench_hardware() -> dict:
    from finetune import hardware

    return hardware.summary()


def bench_train(**options) -> dict:
    from finetune.bench.train import bench_train as run

    return run(log=log, **options)


def bench_chat(model: str | None = None) -> dict:
    from finetune.bench.chat import bench_chat as run

    return run(model=model, log=log)


def bench_data() -> dict:
    from finetune.bench.data import bench_data as run

    return run()


def bench_defaults(tasks: list[str] | None = None, setups: list[str] | None = None) -> dict:
    from finetune.bench.defaults import bench_defaults as run

    return run(tasks, setups, log=log)


def bench_gpu() -> dict:
    from finetune.bench.gpu import bench_gpu as run

    return run(log=log)


BENCHES = {"hardware": bench_hardware, "data": bench_data, "chat": bench_chat,
           "train": bench_train, "defaults": bench_defaults, "gpu": bench_gpu}
QUICK = ["hardware", "data", "chat", "train"]  # `bench` alone; `defaults` takes about two hours,
# `gpu` needs a CUDA GPU


def check_names(what: list[str]) -> list[str]:
    """The benchmarks to run (QUICK when none are named); ConfigError for unknown names."""
    unknown = [w for w in what if w not in BENCHES]
    if unknown:
        raise ConfigError(f"Unknown benchmark(s) {', '.join(unknown)}: choose from "
                          f"{', '.join(BENCHES)}.")
    return list(what) or QUICK


TRAIN_OPTIONS = ("model", "data", "steps", "rounds", "shape", "seq_len", "method", "liger")


def run_one(name: str, options: dict | None = None) -> dict:
    """One benchmark; `options` narrow it: tasks and setups for `defaults`; TRAIN_OPTIONS for
    `train`; the model for `chat`."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if name == "defaults":
        return BENCHES[name](**{k: options[k] for k in ("tasks", "setups") if k in options})
    if name == "train":
        return bench_train(**{k: options[k] for k in TRAIN_OPTIONS if k in options})
    if name == "chat":
        return bench_chat(options.get("model"))
    return BENCHES[name]()


def run_all(names: list[str], options: dict | None = None) -> dict:
    return {name: run_one(name, options) for name in names}
