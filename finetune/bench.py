"""Speed on this machine, measured (never assumed), with the CPU/GPU named beside every figure.

    python -m finetune bench                 # everything
    python -m finetune bench train --json    # LoRA training tokens/s on the bundled model
    python -m finetune bench chat            # time to first token, decode tokens/s
    python -m finetune bench data            # `data inspect` on 100,000 rows
    python -m finetune bench defaults        # auto vs hand-tuned vs LLaMA-Factory defaults (~2 h)
"""

from __future__ import annotations

import json
import resource
import statistics
import time


def bench_hardware() -> dict:
    from finetune import hardware

    return hardware.summary()


def bench_train(steps: int = 12) -> dict:
    """LoRA on the bundled model with the demo settings: real tokens/s and peak memory."""
    from finetune import config, hardware, jobs, runinfo, train

    cfg = config.RunConfig(max_steps=steps, val_fraction=0.0, early_stopping=False,
                           save_steps=steps, eval_steps=steps, name="bench-train")
    run_dir = jobs.prepare_run(cfg)
    resolved = config.load(run_dir / "config.yaml")
    t0 = time.time()
    status = train.run(run_dir, tee=False)
    seconds = time.time() - t0
    metrics = [m for m in runinfo.read_metrics(run_dir) if m.get("tokens_per_s")]
    speeds = [m["tokens_per_s"] for m in metrics[2:]] or [m["tokens_per_s"] for m in metrics]
    return {"state": status.get("state"), "steps": steps, "batch": resolved.batch_size,
            "max_length": resolved.max_length, "precision": resolved.precision,
            "tokens_per_s_median": statistics.median(speeds) if speeds else None,
            "seconds": round(seconds, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "machine": hardware.detect().describe()}


def bench_chat() -> dict:
    from finetune.bench_chat import bench_chat as run

    return run()


def bench_data() -> dict:
    from finetune.data.bench import bench_inspect

    return bench_inspect()


def bench_defaults() -> dict:
    from finetune.bench_defaults import bench_defaults as run

    return run()


BENCHES = {"hardware": bench_hardware, "data": bench_data, "chat": bench_chat,
           "train": bench_train, "defaults": bench_defaults}
QUICK = ["hardware", "data", "chat", "train"]  # `bench` alone; `defaults` takes about two hours


def main(what: list[str], as_json: bool = False) -> int:
    from finetune.errors import ConfigError

    unknown = [w for w in what if w not in BENCHES]
    if unknown:
        raise ConfigError(f"Unknown benchmark(s) {', '.join(unknown)}: choose from "
                          f"{', '.join(BENCHES)}.")
    results = {}
    for name in what or QUICK:
        results[name] = BENCHES[name]()
        if not as_json:
            print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)
    if as_json:
        print(json.dumps(results, indent=2, default=str))
    return 0
