"""Training speed: this project's pipeline against plain TRL + PEFT on the same run, same machine.

    python -m finetune bench train --json                  # bundled model, sample:contacts
    python -m finetune bench train --json --rounds 2       # baseline, ours, baseline, ours
    python -m finetune bench train --json --model DIR --steps 3 --data FILE   # any model/data
    python -m finetune bench train --json --shape llama-1b --seq-len 2048      # a GPU's check
    python -m finetune bench train --json --shape mistral-7b --seq-len 2048 --method qlora
    python -m finetune bench train --json --liger          # ours with and without Liger (GPU)

Both sides get the same model, data, LoRA settings, batch, learning rate, schedule, seed and
steps (planned once, as `python -m finetune train` plans them). The baseline is TRL's
`SFTTrainer` + PEFT with TRL's own defaults for everything else (gradient checkpointing, the
padded collator, its loss path with entropy and token accuracy) except the precision, which
follows the machine (`hardware.choose_precision`), as ours does. Each side trains in its own
child process, one after the other, so its peak memory (RSS from `wait4`, or the CUDA peak) is
its own. Tokens/s counts real tokens (no padding) from the second step on; MFU counts ~4 x
parameters FLOPs a token for LoRA (forward, and the backward to the inputs) against the
probe's matmul peak (`hardware.probe`; on a GPU an 8192-cube matmul in the run's precision).
On a GPU the same command measures bf16 on CUDA: `python -m finetune bench train --json`.
`--shape` trains a random-init model of a published size instead (`bench/shapes.py`), and
`--seq-len N` rows of about N tokens (the samples' turns, one chat after another) instead of the
data, with `max_length` N. `--liger` (an NVIDIA GPU) trains ours twice, without and with Liger's
kernels (`finetune.liger`), and keeps what it measured for `liger_kernels` 'auto' on this GPU.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIDES = ("baseline", "ours")


def _child(side: str, run_dir: Path) -> dict:
    """Train one side in a child process; its metrics, status, peak memory and wall time."""
    from finetune import allocator, runinfo

    start = time.time()
    process = "baseline" if side == "baseline" else "ours"  # ours-liger: ours, its config says
    with open(run_dir / "train.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "finetune.bench.child", process,
                                 str(run_dir)], stdout=out, stderr=subprocess.STDOUT,
                                env=allocator.environ(os.environ, use=process == "ours"))
        _, code, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(code)
    child = runinfo.read_json(run_dir / "bench.json", {}) or {}
    metrics = [m for m in runinfo.read_metrics(run_dir) if "loss" in m]
    status = runinfo.read_status(run_dir)
    if proc.returncode != 0 or status.get("state") != "completed":
        from finetune.errors import FinetuneError

        raise FinetuneError(f"bench train: the {side} run failed ({status.get('error') or 'exit '}"
                            f"{proc.returncode}); see {run_dir / 'train.log'}.")
    rss_gb = usage.ru_maxrss / 2**20  # kilobytes on Linux
    cuda_gb = child.get("cuda_peak_gb")
    skip = 1 if len(metrics) > 2 else 0  # the first step holds one-off allocations
    a, b = metrics[skip], metrics[-1]
    tokens = b["tokens"] - (a["tokens"] if skip else 0)
    seconds = b["time"] - (a["time"] if skip else 0.0)
    return {"tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "peak_memory_gb": round(cuda_gb if cuda_gb is not None else rss_gb, 3),
            "peak_rss_gb": round(rss_gb, 3), "cuda_peak_gb": cuda_gb,
            "steps": len(metrics), "tokens": metrics[-1]["tokens"],
            "wall_s": round(time.time() - start, 1), "attention": child.get("attention"),
            "allocator": child.get("allocator"),
            "loss": [round(m["loss"], 5) for m in metrics], "run": str(run_dir)}


def _gpu_peak(precision: str) -> float:
    """GFLOP/s of an 8192-cube matmul in the run's precision on the GPU (the MFU's peak)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    torch.matmul(a, b)
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    return round(2 * 8192**3 * reps / (time.perf_counter() - start) / 1e9, 1)


def compare(ours: dict, baseline: dict) -> dict:
    """Ratios and how far the loss curves are apart (step by step)."""
    diffs = [abs(x - y) for x, y in zip(ours["loss"], baseline["loss"])]
    return {"speedup_vs_baseline": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 3),
            "memory_vs_baseline": round(ours["peak_memory_gb"] / baseline["peak_memory_gb"], 3),
            "loss_max_abs_diff": round(max(diffs), 5) if diffs else None,
            "loss_max_rel_diff": round(max(d / max(abs(y), 1e-9) for d, y in
                                           zip(diffs, baseline["loss"])), 5) if diffs else None,
            "same_tokens": ours["tokens"] == baseline["tokens"]}


def _liger_side(resolved, hw) -> None:
    """Refuse `--liger` where Liger's kernels cannot run (before anything trains)."""
    from finetune import liger, models

    liger.check("on", hw.device, models.model_shape(models.resolve(resolved.model))["model_type"],
                asked="bench train --liger", instead="leave out --liger")


def bench_train(model: str | None = None, steps: int | None = None, rounds: int | None = None,
                data: str | None = None, shape: str | None = None, seq_len: int | None = None,
                method: str | None = None, liger: bool = False, log=print) -> dict:
    from finetune import config, hardware, models, paths, plan, runinfo
    from finetune import liger as kernels
    from finetune.bench import cpu_id, shapes

    steps, rounds = steps or 12, rounds or 1
    if shape:
        if model:
            from finetune.errors import ConfigError

            raise ConfigError("Give --model or --shape, not both.")
        shapes.check_shape(shape)
        log(f"bench train: making (once) a random-init {shapes.WHAT[shape]}-shaped model")
        model = str(shapes.shaped_model(shape, seq_len or 4096))
    extra = {"method": method} if method else {}
    if seq_len:
        tokenizer = models.load_tokenizer(models.resolve(model or config.DEFAULT_MODEL))
        data = str(shapes.long_chats(paths.home() / "bench-data" / f"chats-{seq_len}.jsonl",
                                     tokenizer, seq_len))
        extra["max_length"] = seq_len
    cfg = config.RunConfig(model=model or config.DEFAULT_MODEL, data=data or config.DEFAULT_DATA,
                           max_steps=steps, val_fraction=0.0, early_stopping=False,
                           save_steps=steps, eval_steps=steps, name="bench-train", **extra)
    resolved = plan.plan(cfg).config
    hw = hardware.detect()
    configs = {side: resolved for side in SIDES}
    if liger:  # ours without, then with Liger's kernels
        _liger_side(resolved, hw)
        configs.update(ours=resolved.replace(liger_kernels="off"),
                       **{"ours-liger": resolved.replace(liger_kernels="on")})
    results: dict[str, list[dict]] = {side: [] for side in configs}
    for r in range(rounds):
        for side in configs:  # alternately: a load on the machine that comes and goes hits all
            run_dir = runinfo.new_run_dir(f"bench-{side}")
            configs[side].save(run_dir / "config.yaml")
            runinfo.update_status(run_dir, state="queued", created=time.time(), step=0)
            log(f"bench train: round {r + 1} of {rounds}, {side} ({run_dir})")
            results[side].append(_child(side, run_dir))
            one = results[side][-1]
            log(f"  {one['tokens_per_s']} tokens/s, peak {one['peak_memory_gb']} GB")
    gflops = hardware.probe()
    peak = gflops.get(resolved.precision)
    if hw.device == "cuda":  # the probe's small matmul is far from a GPU's peak: measure a big one
        gflops = {**gflops, f"{resolved.precision}_8192": _gpu_peak(resolved.precision)}
        peak = gflops[f"{resolved.precision}_8192"]
    n_params = models.model_shape(models.resolve(resolved.model))["n_params"]

    def summary(side: str) -> dict:
        runs = results[side]
        out = dict(runs[-1])
        out["tokens_per_s"] = statistics.median(x["tokens_per_s"] for x in runs)
        out["peak_memory_gb"] = max(x["peak_memory_gb"] for x in runs)
        out["tokens_per_s_all"] = [x["tokens_per_s"] for x in runs]
        if peak:
            out["mfu"] = round(out["tokens_per_s"] * 4 * n_params / (peak * 1e9), 4)
        return out

    ours, baseline = summary("ours"), summary("baseline")
    flags = hw.cpu_flags
    extra = {}
    if liger:
        with_kernels = summary("ours-liger")
        against = compare(with_kernels, ours)
        what = shapes.WHAT[shape] + " shape" if shape else Path(resolved.model).name
        kept = None  # trained on other tokens: not the same work, nothing for 'auto' to follow
        if against["same_tokens"]:
            kept = kernels.record(hw.name, {
                "speedup": against["speedup_vs_baseline"],
                "memory": against["memory_vs_baseline"],
                "loss_max_rel_diff": against["loss_max_rel_diff"],
                "on": f"{what}, {resolved.method}, {resolved.max_length} tokens",
                "date": time.strftime("%Y-%m-%d", time.gmtime())})
        extra["liger"] = {**with_kernels, **compare(with_kernels, baseline),
                          "speedup_vs_ours": against["speedup_vs_baseline"],
                          "memory_vs_ours": against["memory_vs_baseline"],
                          "loss_max_rel_diff_vs_ours": against["loss_max_rel_diff"],
                          "kept_for_auto": kept}
    return {
        **compare(ours, baseline),
        "ours": ours, "baseline": baseline, **extra,
        "settings": {"model": resolved.model, "data": resolved.data, "method": resolved.method,
                     "lora_r": resolved.lora_r, "batch_size": resolved.batch_size,
                     "grad_accum": resolved.grad_accum, "max_length": resolved.max_length,
                     "shape": shape and shapes.WHAT[shape], "seq_len": seq_len,
                     "steps": steps, "precision": resolved.precision, "rounds": rounds,
                     "liger_kernels": configs["ours"].liger_kernels,
                     "order": f"{', '.join(configs)}, alternately", "n_params": n_params},
        "machine": {"device": hw.device, "name": hw.name, "cpu_model": cpu_id(),
                    "avx512_bf16": "avx512_bf16" in flags, "threads": hw.threads,
                    "gflops": gflops, "describe": hw.describe(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
