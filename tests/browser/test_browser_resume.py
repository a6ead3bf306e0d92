"""Stop and Resume from the Train tab, and Resume after the training process was killed (kill -9).

    python -m pytest -q tests/browser/test_browser_resume.py

Each run here is long (400 steps) so it is still training when the test acts on it; a
checkpoint every 5 steps gives Resume something to continue from.
"""

from __future__ import annotations

import os
import re
import signal

import psutil
import pytest

import webui

STEPS = 400


def _start_long_run(page, app, tiny_model, data_files) -> dict:
    webui.fill_training(page, tiny_model, app.uploaded(data_files["good"]), max_steps=STEPS,
                        eval_steps=STEPS,
                        save_steps=5)
    page.get_by_role("button", name="Start training").click()
    return webui.wait_status(page, lambda s: s["state"] == "running" and s["step"] >= 6,
                             timeout=180)


def _press(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()


def _resumes(page, after_step: int) -> dict:
    """Press Resume; the status line must show the run training again past `after_step`
    (failing at once if it ends up interrupted or failed instead)."""
    _press(page, "Resume")
    # First the line leaves the state it was in (stopped, interrupted) ...
    webui.wait_status(page, lambda s: s["state"] in ("queued", "starting", "running"), timeout=30)
    # ... then the run trains past where it was, or ends up interrupted or failed again.
    st = webui.wait_status(
        page, lambda s: s["state"] in ("interrupted", "failed")
        or (s["state"] in ("running", "completed") and s["step"] > after_step), timeout=120)
    log = webui.log_text(page)
    assert "nothing to resume" not in log, log[-600:]
    assert st["state"] in ("running", "completed"), st["text"]
    return st


def _end(page) -> None:
    """Leave no training running for the next test: stop it if it still runs."""
    st = webui.parse_status(webui.status_text(page))
    if st and st["state"] in ("starting", "running"):
        _press(page, "Stop")
        webui.wait_status(page, lambda s: s["state"] in webui.FINAL, timeout=60)


@pytest.fixture(scope="module")
def stopped(browser, app, tiny_model, data_files, shots):
    """A tab whose run was stopped with the Stop button while it trained."""
    page = webui.open_app(browser, app)
    running = _start_long_run(page, app, tiny_model, data_files)
    _press(page, "Stop")
    st = webui.wait_status(page, lambda s: s["state"] in webui.FINAL, timeout=60)
    webui.shoot(page, shots, "train-stopped")
    yield {"page": page, "running": running, "stopped": st}
    _end(page)
    page.context.close()


def test_stop_ends_the_run_with_a_checkpoint_to_resume_from(stopped):
    st = stopped["stopped"]
    assert st["name"] == stopped["running"]["name"]
    assert st["state"] == "stopped", st["text"]
    assert st["step"] >= stopped["running"]["step"]
    assert "Press Resume to continue" in st["text"]


def test_resume_continues_a_stopped_run(stopped):
    page = stopped["page"]
    _resumes(page, after_step=stopped["stopped"]["step"])
    _end(page)


def test_resume_continues_after_the_training_process_was_killed(browser, app, tiny_model,
                                                                 data_files, shots):
    page = webui.open_app(browser, app)
    try:
        running = _start_long_run(page, app, tiny_model, data_files)
        # What a person does in a terminal: find the training process and kill -9 it.
        run_dir = str(app.home / "runs" / running["name"])
        procs = [p for p in psutil.process_iter(["pid", "cmdline"])
                 if run_dir in " ".join(p.info["cmdline"] or [])]
        assert procs, f"no training process for {run_dir}"
        for proc in procs:
            os.kill(proc.info["pid"], signal.SIGKILL)
        st = webui.wait_status(page, lambda s: s["state"] == "interrupted", timeout=30)
        assert re.search(r"ended unexpectedly at step \d+", st["text"]), st["text"]
        assert "Press Resume to continue" in st["text"]
        webui.shoot(page, shots, "train-interrupted")
        _resumes(page, after_step=st["step"])
        _end(page)
    finally:
        page.context.close()
