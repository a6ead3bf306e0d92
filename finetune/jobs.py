"""Runs as background processes: prepare, start, stop, resume, reattach, list.

    python -m finetune runs            # every run with its state
    python -m finetune stop RUN        # ends the whole process tree within 10 s, adapter saved

A run is a subprocess (the worker entry `python -m finetune.train RUN_DIR [--resume]`, or for
several processes `accelerate launch` of that entry: finetune.launch) in its own session whose
output is the run's train.log and that writes only to its run directory, so it outlives the
browser tab and the app. Whoever reads the
run directory later (the app after a restart, the CLI) sees the same state; a run whose process
died without saying so is shown as "interrupted" and can be resumed from its checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from finetune import launch as launcher, plan, runinfo
from finetune.config import RunConfig
from finetune.errors import RunError
from finetune.plan import Plan

STOP_TIMEOUT_S = 10.0
SAVE_TIMEOUT_S = 900.0  # a stop waits this long for a save in progress (a 7B full fine-tune
# writes ~28 GB of fp32 weights plus its optimizer state) before it kills the process
ACTIVE = ("queued", "starting", "running", "stopping")


# --- preparing a run ---------------------------------------------------------------------------


def prepare_run(cfg: RunConfig) -> Plan:
    """Plan the config and write a new run directory ready to train (state 'queued'); the plan
    that is returned holds the run directory, the resolved config and the reasons."""
    free_the_gpu()  # so the planner budgets the memory the app's chat models held
    planned = plan.plan(cfg)
    if launcher.distributed(planned.config):
        launcher.check(planned.config)  # before a run directory exists for it
    hint = cfg.name or f"{Path(str(cfg.data).split(':')[-1]).stem}-{cfg.method}"
    run_dir = runinfo.new_run_dir(hint)
    planned.config.save(run_dir / "config.yaml")
    if launcher.distributed(planned.config):
        from finetune import hardware

        launcher.write_config(run_dir, planned.config, hardware.gpu_count())
    runinfo.write_resolved(run_dir, planned.reasons)
    runinfo.update_status(run_dir, state="queued", created=time.time(), step=0,
                          total_steps=int(planned.config.max_steps))
    planned.run_dir = run_dir
    return planned


def launch(cfg: RunConfig) -> Plan:
    """prepare_run, then start it in the background (what the Train tab's Start does)."""
    planned = prepare_run(cfg)
    start(planned.run_dir)
    return planned


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


def _elsewhere(status: dict) -> bool:
    """A run whose main process is on another machine (a cluster run read from a login node):
    its processes cannot be seen from here, so its status is taken as written."""
    return bool(status.get("host")) and status["host"] != socket.gethostname()


def status(run_dir: Path) -> dict:
    """The run's status, with a dead process detected and recorded as 'interrupted'."""
    st = runinfo.read_status(run_dir)
    if st.get("state") in ("starting", "running", "stopping") and not _elsewhere(st) and \
            not _alive(st):
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


def free_the_gpu() -> None:
    """On a GPU, the models this process keeps for chat leave it before a training starts there
    (one GPU shared by the app and the training process); on a CPU they stay."""
    from finetune import hardware

    if hardware.detect().device == "cuda":
        hardware.release_models()


def training_run_name() -> str | None:
    """The name of the run training now, for messages about a busy GPU; None when none."""
    run = active_run()
    return run.name if run is not None else None


def _spawn(run_dir: Path, resume: bool = False) -> int:
    """Start the worker for run_dir; refused (the run left as it was) while another trains."""
    busy = active_run()
    if busy is not None and busy != run_dir:
        raise RunError(f"Run '{busy.name}' is training now; one training at a time per machine. "
                       "Wait for it to finish or stop it first.")
    free_the_gpu()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "finetune.train", str(run_dir)] + (["--resume"] if resume else [])
    cfg = runinfo.load_config(run_dir)
    if launcher.distributed(cfg):
        from finetune import hardware

        if cfg.num_machines > 1:
            raise RunError(f"Run '{run_dir.name}' spans {cfg.num_machines} machines: start it on "
                           "each machine with the command the train command printed (or sbatch "
                           "its run.slurm); it cannot be started from here.")
        launcher.check_local(cfg, hardware.gpu_count())
        argv = launcher.command(run_dir, resume=resume)
    log = open(run_dir / "train.log", "a", encoding="utf-8")
    proc = subprocess.Popen(argv, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=os.getcwd(), start_new_session=True)
    log.close()
    runinfo.update_status(run_dir, state="starting", pid=proc.pid, host=socket.gethostname(),
                          started=time.time(), error=None, end_reason=None)
    return proc.pid


def start(run_dir: Path) -> int:
    """Start a prepared run in the background; returns its pid."""
    return _spawn(run_dir)


def check_resumable(run_dir: Path) -> dict:
    st = status(run_dir)
    if st.get("state") in ACTIVE and _alive(st):
        raise RunError(f"Run '{run_dir.name}' is still {st['state']}; nothing to resume.")
    if st.get("state") == "completed":
        raise RunError(f"Run '{run_dir.name}' already completed; start a new run to train more.")
    return st


def resume(run_dir: Path) -> int:
    """Continue a stopped, failed or interrupted run from its latest checkpoint, in the
    background; returns the worker's pid."""
    check_resumable(run_dir)
    return _spawn(run_dir, resume=True)


def _saving(run_dir: Path) -> bool:
    """The training process is writing its checkpoint or weights (for at most SAVE_TIMEOUT_S):
    killing it now would leave a half-written model."""
    since = runinfo.read_status(run_dir).get("saving_since")
    return bool(since) and time.time() - since < SAVE_TIMEOUT_S


def stop(run_dir: Path, timeout: float = STOP_TIMEOUT_S) -> dict:
    """Ask the run to stop (it saves a checkpoint and the adapter); kill its tree at the deadline,
    unless it is saving then: a save in progress is given up to SAVE_TIMEOUT_S to finish."""
    st = status(run_dir)
    if st.get("state") in ACTIVE and _elsewhere(st):
        raise RunError(f"Run '{run_dir.name}' trains on {st['host']}, not on this machine: stop "
                       "it there (python -m finetune stop RUN), or cancel its Slurm job.")
    if st.get("state") not in ACTIVE or not _alive(st):
        if st.get("state") == "queued":
            return runinfo.update_status(run_dir, state="stopped", end_reason="stopped before it began")
        return st
    pid = int(st["pid"])
    runinfo.update_status(run_dir, state="stopping")
    # With several processes every worker hears the stop at once (torchrun starts each in a
    # session of its own, out of reach of a signal to the launcher's group), and the launcher
    # does not: told to stop, torchrun gives its workers 30 s and then kills them, which would
    # cut a long save. It exits by itself once the workers have.
    tree = _tree(pid)
    try:
        several = launcher.distributed(runinfo.load_config(run_dir))
    except Exception:  # noqa: BLE001 - a damaged config: the launcher alone, as for one process
        several = False
    for proc in tree[1:] if several and len(tree) > 1 else tree[:1]:
        try:
            proc.send_signal(signal.SIGTERM)
        except Exception:  # noqa: BLE001 - already gone
            pass
    workers = tree[1:] if several else []
    deadline = time.time() + timeout - 0.5
    while (_alive({"pid": pid}) or _any_running(workers)) and \
            (time.time() < deadline or _saving(run_dir)):
        time.sleep(0.1)
    if _alive({"pid": pid}) or _any_running(workers):
        _kill(pid, tree)
        return runinfo.update_status(run_dir, state="stopped", pid=None, finished=time.time(),
                                     end_reason=f"stopped (killed after {timeout:.0f} s); "
                                                f"{_resume_point(run_dir)}")
    _kill(pid, tree)  # stray children, if any
    return runinfo.read_status(run_dir)


def _tree(pid: int) -> list:
    """The process and all its descendants (psutil processes), the process first."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _any_running(procs: list) -> bool:
    import psutil

    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def _kill(pid: int, tree: list) -> None:
    """SIGKILL to the run's session and to each process of its tree (workers in sessions of
    their own included)."""
    try:
        os.killpg(pid, signal.SIGKILL)  # its own session: this ends every child in it too
    except (ProcessLookupError, PermissionError):
        pass
    for proc in tree[1:]:
        try:
            proc.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass


def follow(run_dir: Path, every_s: float = 1.0):
    """The run's train.log as it grows (pieces of text) until the run ends: what a terminal shows
    of a run started in the background (a run of several processes always is)."""
    path, pos = Path(run_dir) / "train.log", 0
    while True:
        active = status(run_dir).get("state") in ACTIVE
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            if chunk:
                yield chunk.decode("utf-8", errors="replace")
        if not active:
            return
        time.sleep(every_s)


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
