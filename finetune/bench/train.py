"""Training speed: LoRA on the bundled model with the demo settings, real tokens/s and peak memory.

    python -m finetune bench train
"""

from __future__ import annotations

import resource
import statistics
import time


def bench_train(steps: int = 12) -> dict:
    from finetune import config, hardware, jobs, runinfo, train

    cfg = config.RunConfig(max_steps=steps, val_fraction=0.0, early_stopping=False,
                           save_steps=steps, eval_steps=steps, name="bench-train")
    planned = jobs.prepare_run(cfg)
    resolved = planned.config
    t0 = time.time()
    status = train.run(planned.run_dir, tee=False)
    seconds = time.time() - t0
    metrics = [m for m in runinfo.read_metrics(planned.run_dir) if m.get("tokens_per_s")]
    speeds = [m["tokens_per_s"] for m in metrics[2:]] or [m["tokens_per_s"] for m in metrics]
    return {"state": status.get("state"), "steps": steps, "batch": resolved.batch_size,
            "max_length": resolved.max_length, "precision": resolved.precision,
            "tokens_per_s_median": statistics.median(speeds) if speeds else None,
            "seconds": round(seconds, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "machine": hardware.detect().describe()}
