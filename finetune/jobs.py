"""Runs as background processes: prepare, start, stop, resume, reattach, list.

    python -m finetune runs            # every run with its state
    python -m finetune stop RUN        # ends the whole process tree within 10 s, adapter saved

A run is a subprocess (`python -m finetune train runs/NAME/config.yaml`) in its own session that
writes only to its run directory, so it outlives the browser tab and the app. Whoever reads the
run directory later (the app after a restart, the CLI) sees the same state; a run whose process
died without saying so is shown as "interrupted" and can be resumed from its checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune import runinfo
from finetune.config import RunConfig
from finetune.errors import RunError

STOP_TIMEOUT_S = 10.0
ACTIVE = ("queued", "starting", "running", "stopping")


# --- preparing a run ---------------------------------------------------------------------------


def gather_facts(cfg: RunConfig):
    """Measure what the resolvers need: data size and token lengths, model shape, machine."""
    import random

    from finetune import hardware, models, resolve
    from finetune.data import prepare

    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source)
    shape = model_shape(source)
    # Count and measure the rows that will be used for training + validation.
    splits = prepare(cfg.replace(val_fraction=0.0), 0.0)
    rows = splits.train
    sample = rows if len(rows) <= resolve.LENGTH_SAMPLE else \
        random.Random(cfg.seed).sample(rows, resolve.LENGTH_SAMPLE)
    lengths = resolve.token_lengths(sample, tokenizer)
    answers = resolve.answer_lengths(sample, tokenizer)
    hw = hardware.detect()
    gflops = hardware.probe()
    precision, why = hardware.choose_precision(hw, gflops)
    return resolve.Facts(n_rows=len(rows), lengths=lengths, has_val_file=bool(cfg.val_data),
                         n_val_file=len(splits.val), answer_lengths=answers,
                         data_format=splits.report["format"],
                         precision=precision, precision_reason=why, device=hw.device,
                         memory_gb=hw.memory_gb,
                         **{k: v for k, v in shape.items() if k != "lora_per_rank"}), source, shape


def model_shape(source) -> dict:
    """Parameter count and sizes from the config alone (no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source.path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    per_rank = sum(m.in_features + m.out_features for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
    text = config.get_text_config()
    return {"n_params": n_params, "hidden": text.hidden_size, "layers": text.num_hidden_layers,
            "vocab": text.vocab_size, "context": getattr(text, "max_position_embeddings", 4096),
            "lora_per_rank": per_rank}


def resolve_config(cfg: RunConfig) -> tuple[RunConfig, dict[str, str]]:
    """Every 'auto' setting made concrete, with the reason for each value."""
    from finetune import hardware, resolve

    if cfg.precision == "fp16" and hardware.detect().device == "cpu":
        from finetune.errors import ConfigError

        raise ConfigError("precision fp16 needs a GPU (CPUs run it at ~2 GFLOP/s, and training "
                          "refuses it there): use 'auto', 'fp32' or 'bf16' on this machine.")
    facts, source, shape = gather_facts(cfg)
    resolved, reasons = resolve.resolve(cfg, facts, shape["lora_per_rank"])
    reasons["model"] = source.describe()
    return resolved, reasons


def prepare_run(cfg: RunConfig) -> Path:
    """Resolve the config and write a new run directory ready to train (state 'queued')."""
    cfg.validate()
    resolved, reasons = resolve_config(cfg)
    hint = cfg.name or f"{Path(str(cfg.data).split(':')[-1]).stem}-{cfg.method}"
    run_dir = runinfo.new_run_dir(hint)
    resolved.save(run_dir / "config.yaml")
    runinfo.write_resolved(run_dir, reasons)
    runinfo.update_status(run_dir, state="queued", created=time.time(), step=0,
                          total_steps=int(resolved.max_steps))
    return run_dir


def reuse_or_prepare(config_path: str | None, cfg: RunConfig) -> Path:
    """The run directory to train in: a prepared run that never started, or a new one."""
    if config_path:
        run_dir = Path(config_path).resolve().parent
        status = runinfo.read_status(run_dir)
        ours = status.get("pid") == os.getpid()  # spawned for this very run by start()
        if status.get("state") in ("queued", "starting") and (ours or not _alive(status)):
            return run_dir
    return prepare_run(cfg)


# --- processes ---------------------------------------------------------------------------------


def _alive(status: dict) -> bool:
    pid = status.get("pid")
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return "finetune" in " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to look at
        return False


def _resume_point(run_dir: Path) -> str:
    ckpt = runinfo.latest_checkpoint(run_dir)
    return f"resume continues from {ckpt.name}" if ckpt else \
        "resume continues from the start (no checkpoint yet)"


def status(run_dir: Path) -> dict:
    """The run's status, with a dead process detected and recorded as 'interrupted'."""
    st = runinfo.read_status(run_dir)
    if st.get("state") in ("starting", "running", "stopping") and not _alive(st):
        # Give a process that just started (or just ended) a moment before judging it.
        if time.time() - st.get("updated", 0) > 3:
            st = runinfo.update_status(
                run_dir, state="interrupted", pid=None,
                end_reason=f"the training process ended unexpectedly at step {st.get('step', 0)}; "
                           f"{_resume_point(run_dir)}")
    return st


def active_run() -> Path | None:
    for run_dir in runinfo.list_runs():
        st = status(run_dir)
        if st.get("state") in ("starting", "running", "stopping") and _alive(st):
            return run_dir
    return None


def _spawn(run_dir: Path, argv: list[str]) -> int:
    busy = active_run()
    if busy is not None and busy != run_dir:
        raise RunError(f"Run '{busy.name}' is training now; one training at a time per machine. "
                       "Wait for it to finish or stop it first.")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(run_dir / "train.log", "a", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "finetune", *argv], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=os.getcwd(), start_new_session=True)
    log.close()
    runinfo.update_status(run_dir, state="starting", pid=proc.pid, started=time.time())
    return proc.pid


def start(run_dir: Path) -> int:
    """Start a prepared run in the background; returns its pid."""
    return _spawn(run_dir, ["train", str(run_dir / "config.yaml")])


def check_resumable(run_dir: Path) -> dict:
    st = status(run_dir)
    if st.get("state") in ACTIVE and _alive(st):
        raise RunError(f"Run '{run_dir.name}' is still {st['state']}; nothing to resume.")
    if st.get("state") == "completed":
        raise RunError(f"Run '{run_dir.name}' already completed; start a new run to train more.")
    return st


def resume(run_dir: Path) -> int:
    check_resumable(run_dir)
    runinfo.update_status(run_dir, state="queued", end_reason=None, error=None)
    return _spawn(run_dir, ["resume", str(run_dir), "--foreground"])


def stop(run_dir: Path, timeout: float = STOP_TIMEOUT_S) -> dict:
    """Ask the run to stop (it saves a checkpoint and the adapter); kill its tree at the deadline."""
    st = status(run_dir)
    if st.get("state") not in ACTIVE or not _alive(st):
        if st.get("state") == "queued":
            return runinfo.update_status(run_dir, state="stopped", end_reason="stopped before it began")
        return st
    pid = int(st["pid"])
    runinfo.update_status(run_dir, state="stopping")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + timeout - 0.5
    while time.time() < deadline and _alive({"pid": pid}):
        time.sleep(0.1)
    if _alive({"pid": pid}):
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session: this ends every child too
        except (ProcessLookupError, PermissionError):
            pass
        return runinfo.update_status(run_dir, state="stopped", pid=None, finished=time.time(),
                                     end_reason=f"stopped (killed after {timeout:.0f} s); "
                                                f"{_resume_point(run_dir)}")
    try:
        os.killpg(pid, signal.SIGKILL)  # stray children, if any
    except (ProcessLookupError, PermissionError):
        pass
    return runinfo.read_status(run_dir)


# --- the runs table ----------------------------------------------------------------------------


def summary(run_dir: Path) -> dict:
    st = status(run_dir)
    try:
        cfg = runinfo.load_config(run_dir)
    except Exception:  # noqa: BLE001 - a damaged run still gets a row
        cfg = None
    metrics = runinfo.read_metrics(run_dir)
    train = [m["loss"] for m in metrics if "loss" in m]
    val = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    end = st.get("finished") or (time.time() if st.get("state") in ACTIVE else st.get("updated"))
    duration = (end - st["started"]) if st.get("started") and end else None
    return {"run": run_dir.name, "model": cfg.model if cfg else "?",
            "method": cfg.method if cfg else "?", "data": cfg.data if cfg else "?",
            "status": st.get("state", "?"), "step": f"{st.get('step', 0)}/{st.get('total_steps', '?')}",
            "train_loss": round(train[-1], 4) if train else None,
            "val_loss": round(min(val), 4) if val else None,
            "duration_s": round(duration) if duration else None}


def runs_table() -> list[dict]:
    return [summary(r) for r in runinfo.list_runs()]


def format_runs_table(rows: list[dict]) -> str:
    if not rows:
        return "no runs yet: python -m finetune train --preset demo"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c] if r[c] is not None else "-").ljust(widths[c]) for c in cols)
              for r in rows]
    return "\n".join(lines)
