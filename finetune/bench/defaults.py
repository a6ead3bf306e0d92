"""Do the auto defaults work the first time? Defaults vs hand-tuned vs LLaMA-Factory's defaults.

    python -m finetune bench defaults            # hours on a 2-core CPU; a markdown table
    python -m finetune bench defaults --tasks dates --setups auto    # one row

Each task is a bundled sample, or one of the two tasks under finetune/bench/tasks/ whose answers need
small arithmetic or re-ordering (dates: free-text appointment -> 'YYYY-MM-DD HH:MM'; receipts: the
total of a short receipt; made by scripts/make_bench_tasks.py), each with its own held-out test
split. Three LoRA runs per task, all through this project's pipeline so that only the settings
differ:
  auto         every setting at its default (resolved from the data and the machine)
  hand-tuned   two passes over every row (no validation) at lr 3e-4, r 16, batch 8: the best
               of the hand-set runs recorded in docs/BENCHMARKS.md
  llama-factory LLaMA-Factory 0.9.5's web-UI defaults: 3 epochs, lr 5e-5, LoRA r 8, batch 2 x 8,
               cutoff 2048, gradient checkpointing, no validation split
The score is the tuned model's exact match on the test split; time is training wall time.
"""

from __future__ import annotations

import time
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TASKS = ["sample:contacts", "sample:tickets", "sample:rewrite", "dates", "receipts"]

SETUPS = {
    "auto": {},
    "hand-tuned": {"learning_rate": 3e-4, "lora_r": 16, "lora_alpha": 32, "epochs": 2,
                   "batch_size": 8, "grad_accum": 1, "early_stopping": False,
                   "val_fraction": 0.0},
    "llama-factory": {"learning_rate": 5e-5, "lora_r": 8, "lora_alpha": 16, "epochs": 3,
                      "batch_size": 2, "grad_accum": 8, "max_length": 2048,
                      "gradient_checkpointing": "on", "val_fraction": 0.0,
                      "early_stopping": False, "warmup_ratio": 0.0, "lr_scheduler": "cosine"},
}
# The tasks of finetune/bench/tasks/ learn more slowly than the samples: their hand-set run is two
# passes over every row at the auto learning rate.
HAND_TUNED = {"dates": {"learning_rate": 4e-4, "epochs": 2},
              "receipts": {"learning_rate": 4e-4, "epochs": 2}}


def task_data(task: str) -> dict:
    """The data settings of a task: a bundled sample, or a task of finetune/bench/tasks/ with
    its own test file."""
    if task.startswith("sample:"):
        return {"data": task}
    return {"data": str(TASKS_DIR / task / "train.jsonl"),
            "test_data": str(TASKS_DIR / task / "test.jsonl")}


def run_one(task: str, setup: str, log=print) -> dict:
    from finetune import config, evaluate, jobs, train

    cfg = config.RunConfig(**task_data(task), name=f"bench-{setup}-{task.split(':')[-1]}",
                           **{**SETUPS[setup], **(HAND_TUNED.get(task, {}) if setup ==
                                                  "hand-tuned" else {})})
    planned = jobs.prepare_run(cfg)
    run_dir, resolved = planned.run_dir, planned.config
    t0 = time.time()
    status = train.run(run_dir, tee=True)
    seconds = time.time() - t0
    report = evaluate.evaluate_run(run_dir, log=log)
    m = report["metrics"]
    row = {"task": task, "setup": setup, "state": status.get("state"),
           "steps": status.get("step"), "train_s": round(seconds),
           "base_em": m["base"]["exact_match"], "tuned_em": m["tuned"]["exact_match"],
           "n_test": report["n_examples"], "end": status.get("end_reason", ""),
           "settings": (f"lr {resolved.learning_rate:g}, r {resolved.lora_r}, batch "
                        f"{resolved.batch_size}x{resolved.grad_accum}, {resolved.max_steps} steps "
                        f"planned, max len {resolved.max_length}, {resolved.precision}, "
                        + (f"{resolved.val_fraction:.0%} validation every {resolved.eval_steps} "
                           "steps" if resolved.val_fraction else "no validation")),
           "run": str(run_dir)}
    log(row)
    return row


def markdown(rows: list[dict], machine: str) -> str:
    out = [f"Machine: {machine}. Date: {time.strftime('%Y-%m-%d')}.", "",
           "| task | setup | tuned exact match | base | train time | steps | settings | how it ended |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['task']} | {r['setup']} | {r['tuned_em']:.0%} | {r['base_em']:.0%} | "
                   f"{r['train_s'] // 60} min {r['train_s'] % 60} s | {r['steps']} | "
                   f"{r['settings']} | {r['end']} |")
    return "\n".join(out)


def bench_defaults(tasks=None, setups=None, log=print) -> dict:
    from finetune import hardware
    from finetune.errors import ConfigError

    unknown = [t for t in tasks or [] if t not in TASKS] + \
        [s for s in setups or [] if s not in SETUPS]
    if unknown:
        raise ConfigError(f"Unknown task(s) or setup(s) {', '.join(unknown)}: tasks are "
                          f"{', '.join(TASKS)}; setups are {', '.join(SETUPS)}.")
    rows = [run_one(task, setup, log) for task in (tasks or TASKS)
            for setup in (setups or SETUPS)]
    machine = hardware.detect().describe()
    return {"rows": rows, "machine": machine, "markdown": markdown(rows, machine)}
