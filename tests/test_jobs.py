"""Background runs: started from the Train tab's handler, stopped, killed, reattached, resumed."""

import os
import signal
import subprocess
import sys
import time

import psutil

from runwait import wait_for_run as _wait
from finetune import allocator, config, jobs, runinfo, train


def _cfg(tiny_model, tiny_data, **kw):
    settings = dict(model=str(tiny_model), data=str(tiny_data), max_steps=12, batch_size=4,
                    grad_accum=1, eval_steps=2, save_steps=2, learning_rate=3e-3, method="lora",
                    lora_r=4, early_stopping=False)
    settings.update(kw)
    return config.RunConfig(**settings)




def test_run_started_from_the_train_tab_writes_metrics_the_live_view_plots(tiny_model, tiny_data):
    from finetune.ui import train_tab

    names = list(config.FIELDS)
    cfg = _cfg(tiny_model, tiny_data, max_steps=6)
    run_dir = jobs.prepare_run(cfg).run_dir
    jobs.start(run_dir)
    st = _wait(run_dir, lambda s: s.get("state") not in jobs.ACTIVE)
    assert st["state"] == "completed", runinfo.log_tail(run_dir)
    text, loss, score, lr, log, active = train_tab.live_view(run_dir.name)
    assert "completed" in text and "step 6 of 6" in text
    assert set(loss["series"]) == {"train", "validation"} and len(loss) >= 6
    assert score["value"].isna().all()  # no answers scored: early stopping is off here
    assert len(lr) >= 6 and not active
    assert train_tab.config_from_widgets(names, [getattr(cfg, n) for n in names]) == cfg
    # The worker's output is the log: each line written once.
    log = (run_dir / "train.log").read_text().splitlines()
    for start in ("hardware: ", "data: ", "model: ", "training: ", "finished all 6 steps"):
        assert sum(line.startswith(start) for line in log) == 1, (start, log)
    # the worker started itself again with tcmalloc where this machine has it
    malloc = [line for line in log if line.startswith("memory allocator: ")]
    assert len(malloc) == 1 and ("tcmalloc (" in malloc[0]) == (allocator.find() is not None)


def test_a_second_start_while_one_runs_is_refused(tiny_model, tiny_data):
    import pytest

    from finetune.errors import RunError

    first = jobs.prepare_run(_cfg(tiny_model, tiny_data, max_steps=400, save_steps=400,
                                  eval_steps=400)).run_dir
    jobs.start(first)
    _wait(first, lambda s: s.get("state") == "running")
    second = jobs.prepare_run(_cfg(tiny_model, tiny_data)).run_dir
    with pytest.raises(RunError, match="one training at a time"):
        jobs.start(second)
    # A refused resume leaves the run as it was (not "queued" with nothing to start it).
    assert jobs.stop(second)["state"] == "stopped"
    with pytest.raises(RunError, match="one training at a time"):
        jobs.resume(second)
    assert jobs.status(second)["state"] == "stopped"
    jobs.stop(first)


def test_stop_ends_the_process_tree_in_time_and_saves_the_adapter(tiny_model, tiny_data):
    run_dir = jobs.prepare_run(_cfg(tiny_model, tiny_data, max_steps=400, save_steps=400,
                                    eval_steps=400)).run_dir
    pid = jobs.start(run_dir)
    _wait(run_dir, lambda s: s.get("state") == "running" and s.get("step", 0) >= 2)
    t0 = time.time()
    st = jobs.stop(run_dir)
    assert time.time() - t0 < 10
    assert st["state"] == "stopped", st
    assert "stopped by request at step" in st["end_reason"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    # The step it stopped at was checkpointed, so resume continues from there.
    assert runinfo.latest_checkpoint(run_dir).name == f"checkpoint-{st['step']}"


def test_killed_training_shows_as_interrupted_and_resumes_to_the_same_final_step(tiny_model,
                                                                                  tiny_data):
    run_dir = jobs.prepare_run(_cfg(tiny_model, tiny_data, max_steps=12)).run_dir
    pid = jobs.start(run_dir)
    _wait(run_dir, lambda s: runinfo.latest_checkpoint(run_dir) is not None)
    os.kill(pid, signal.SIGKILL)
    st = _wait(run_dir, lambda s: s.get("state") == "interrupted", timeout=30)
    assert "ended unexpectedly" in st["end_reason"] and "resume continues from checkpoint-" in \
        st["end_reason"]
    assert [r["status"] for r in jobs.runs_table()] == ["interrupted"]
    killed_at = runinfo.latest_checkpoint(run_dir).name
    jobs.resume(run_dir)  # in the background, as the Train tab and `finetune resume` do
    status = _wait(run_dir, lambda s: s.get("state") not in jobs.ACTIVE)
    assert status["state"] == "completed" and status["step"] == 12, runinfo.log_tail(run_dir)
    assert f"resuming from {killed_at}" in (run_dir / "train.log").read_text()
    # the last checkpoint is never resumed, so it is saved without optimizer state; the one
    # before it, written while the run could still be stopped and resumed, has it
    last, before = (run_dir / "checkpoints" / f"checkpoint-{n}" for n in (12, 10))
    assert not (last / "optimizer.pt").exists() and (before / "optimizer.pt").is_file()


def test_resume_in_the_foreground_continues_a_stopped_run(tiny_model, tiny_data):
    run_dir = jobs.prepare_run(_cfg(tiny_model, tiny_data, max_steps=6, eval_steps=3,
                                    save_steps=3)).run_dir
    runinfo.update_status(run_dir, state="stopped")
    status = train.run(run_dir, resume=True)
    assert status["state"] == "completed" and status["step"] == 6


def test_training_survives_the_app_being_killed_and_is_reattached(tiny_model, tiny_data):
    run_dir = jobs.prepare_run(_cfg(tiny_model, tiny_data, max_steps=10)).run_dir
    app = subprocess.Popen([sys.executable, "-c",
                            "import sys, time; from finetune import jobs; from pathlib import Path;"
                            "jobs.start(Path(sys.argv[1])); time.sleep(600)", str(run_dir)],
                           env=os.environ.copy())
    _wait(run_dir, lambda s: s.get("state") == "running")
    app.kill()  # kill -9 of the app
    app.wait()
    # A new app process finds the run by reading the run directory, and it completes.
    assert jobs.active_run() == run_dir
    st = _wait(run_dir, lambda s: s.get("state") not in jobs.ACTIVE)
    assert st["state"] == "completed" and st["step"] == 10


def test_a_stop_waits_for_a_save_in_progress_and_kills_a_process_that_is_not_saving(tmp_path):
    """A process that ignores SIGTERM for 3 s stands for a training writing a multi-GB model:
    while its status says it is saving, the stop waits for it instead of killing it at the
    deadline; without that mark it is killed at the deadline."""
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "time.sleep(3)  # finetune")
    for saving, killed in ((True, False), (False, True)):
        run_dir = runinfo.new_run_dir(f"saving-{saving}")
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        time.sleep(0.5)  # the interpreter is up and ignores SIGTERM
        runinfo.update_status(run_dir, state="running", pid=proc.pid,
                              saving_since=time.time() if saving else None)
        t0 = time.time()
        st = jobs.stop(run_dir, timeout=1.0)
        took = time.time() - t0
        proc.wait(timeout=10)
        assert ("killed after" in (st.get("end_reason") or "")) == killed, st
        assert (took < 2.0) == killed, took
