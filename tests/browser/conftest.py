"""The browser suite's fixtures: one app server, one headless Chromium, one tiny model per session.

    python -m pytest -q tests/browser                 # about 3 minutes on 2 busy CPU cores
    UPDATE_SCREENSHOTS=1 python -m pytest -q tests/browser   # also refresh docs/screenshots/

The app runs as a person would start it (app.py's `demo`, served over HTTP in a subprocess) with
FINETUNE_HOME in a temporary folder; the tests drive it through Chromium and check what the page
shows. Screenshots go to $BROWSER_SCREENSHOTS (default tests/browser/screenshots/, git-ignored).
Chromium is /usr/bin/chromium or $CHROMIUM (scripts/test.sh installs it); Playwright's own
browser download is not used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import webui
from webui import FINAL, RUN_STEPS, open_app

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SAMPLES = REPO / "finetune" / "samples"
# The order a person goes through the app; tests/browser modules run in this order.
FLOW = ["test_browser_data", "test_browser_train", "test_browser_evaluate", "test_browser_chat",
        "test_browser_resume"]
DOC_SHOTS = ["data", "train", "evaluate", "chat"]  # copied to docs/screenshots/ on request


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives the real app in headless Chromium (tests/browser); "
        "deselect with -m 'not browser'")


def pytest_collection_modifyitems(config, items):
    """Mark every test here `browser` and run them last (the slow ones), modules in FLOW order."""
    ours = [item for item in items if HERE in Path(str(item.fspath)).parents]
    for item in ours:
        item.add_marker(pytest.mark.browser)

    def rank(item):
        stem = Path(str(item.fspath)).stem
        return FLOW.index(stem) if stem in FLOW else len(FLOW)

    mine = set(map(id, ours))
    items[:] = [item for item in items if id(item) not in mine] + sorted(ours, key=rank)


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser"),
                      shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# --- files the person brings ---------------------------------------------------------------


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> dict[str, Path]:
    """good.jsonl: 48 rows of the contacts sample; bad.jsonl: 7 lines, line 4 broken JSON."""
    folder = tmp_path_factory.mktemp("browser-data")
    rows = (SAMPLES / "contacts" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    good = folder / "good.jsonl"
    good.write_text("\n".join(rows[:48]) + "\n", encoding="utf-8")
    bad = folder / "bad.jsonl"
    broken = '{"messages": [{"role": "user", "content": "broken'
    bad.write_text("\n".join(rows[:3] + [broken] + rows[3:6]) + "\n", encoding="utf-8")
    return {"good": good, "bad": bad}


# --- screenshots -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shots():
    """Where the suite saves its screenshots; with UPDATE_SCREENSHOTS=1 the final ones are
    copied to docs/screenshots/ when the session ends."""
    folder = Path(os.environ.get("BROWSER_SCREENSHOTS") or HERE / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for name in DOC_SHOTS:
            if (folder / f"{name}.png").is_file():
                shutil.copyfile(folder / f"{name}.png", docs / f"{name}.png")


# --- the app -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_runs(home: Path) -> None:
    """End training processes the app started and left running (each is its own session)."""
    for status in (home / "runs").glob("*/status.json"):
        try:
            pid = int(json.loads(status.read_text()).get("pid") or 0)
        except (ValueError, OSError):
            continue
        if pid > 0:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class App:
    def __init__(self, url: str, home: Path, log: Path):
        self.url, self.home, self.log = url, home, log

    def uploaded(self, path: Path) -> Path:
        """The file as the app keeps an upload (the page names no other server path)."""
        import shutil

        target = self.home / "uploads" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return target

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def app(tmp_path_factory) -> App:
    """The app (app.py's `demo`) served on a free port, FINETUNE_HOME in a temporary folder."""
    home = tmp_path_factory.mktemp("browser-home")
    port = _free_port()
    env = dict(os.environ, FINETUNE_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(home / "gradio-tmp"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    code = ("import app; app.demo.queue(default_concurrency_limit=4).launch("
            f"server_name='127.0.0.1', server_port={port}, prevent_thread_lock=False)")
    log = home / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=home, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    server = App(url, home, log)
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not answer {url} within 90 s:\n{server.log_tail()}")
        time.sleep(0.3)
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _stop_runs(home)


# --- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium not found (looked at $CHROMIUM, /usr/bin/chromium and the PATH): "
                    "install it with `apt-get install -y chromium` (scripts/test.sh does this).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app):
    """A fresh tab on the app (closed after the test)."""
    p = open_app(browser, app)
    yield p
    p.context.close()


# --- one training run, started from the Train tab and watched there ---------------------------


@dataclass
class RunSeen:
    """What the tab that started the run showed while it trained."""

    page: object  # that tab, still open
    name: str = ""
    statuses: list = field(default_factory=list)  # each new status line, parsed
    plots: list = field(default_factory=list)  # per reading while it ran: points drawn, legends
    final: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def trained_run(browser, app, tiny_model, data_files, shots) -> RunSeen:
    """The tiny model trained on good.jsonl for RUN_STEPS steps from the Train tab, watched
    until it ends; the tab stays open so tests can read what it shows afterwards."""
    page = open_app(browser, app)
    webui.fill_training(page, tiny_model, app.uploaded(data_files["good"]), max_steps=RUN_STEPS,
                        eval_steps=10,
                        save_steps=RUN_STEPS)
    page.get_by_role("button", name="Start training").click()
    seen = RunSeen(page=page)
    shot = []

    def watch(st):
        if not st:
            return
        if not seen.statuses or st["text"] != seen.statuses[-1]["text"]:
            seen.statuses.append(st)
        if st["state"] in ("starting", "running"):
            seen.plots.append({"t": time.time(), "state": st["state"], "step": st["step"],
                               "loss": webui.line_marks(page, "loss"),
                               "lr": webui.line_marks(page, "learning rate"),
                               "loss_legend": webui.legend_text(page, "loss"),
                               "lr_legend": webui.legend_text(page, "learning rate")})
        if not shot and st["state"] == "running" and st["step"] >= RUN_STEPS // 3:
            shot.append(webui.shoot(page, shots, "train-live"))

    seen.final = webui.wait_status(page, lambda s: s["state"] in FINAL, timeout=240, watch=watch)
    seen.name = seen.final["name"]
    page.wait_for_timeout(2500)  # the tab polls every 2 s: let it poll once after the end
    yield seen
    page.context.close()
