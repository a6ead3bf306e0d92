"""Train tab in Chromium: start a short run of a tiny model, watch it, see it completed.

    python -m pytest -q tests/browser/test_browser_train.py

The run itself is the session fixture `trained_run` (conftest.py): typed into the Train tab,
started with the button and watched in that same tab until it ended.
"""

from __future__ import annotations

import pytest

import webui
from webui import RUN_STEPS, open_app



def test_the_status_line_moves_while_the_run_trains(trained_run):
    states = [s["state"] for s in trained_run.statuses]
    steps = [s["step"] for s in trained_run.statuses if s["state"] == "running"]
    assert "running" in states, f"never saw it running: {states}"
    assert len(set(steps)) >= 2 and any(0 < k < RUN_STEPS for k in steps), \
        f"the step count did not move while running: {steps}"
    assert trained_run.final["state"] == "completed", trained_run.final["text"]
    assert f"step {RUN_STEPS} of {RUN_STEPS}" in trained_run.final["text"]
    assert "Next: open the Evaluate tab" in trained_run.final["text"]


@pytest.mark.parametrize("title", ["loss", "learning rate"])
def test_the_plots_draw_a_growing_line_during_the_run(trained_run, title):
    key = "loss" if title == "loss" else "lr"
    drawn = [(p["step"], sum(m["points"] for m in p[key])) for p in trained_run.plots]
    counts = [n for _, n in drawn]
    assert any(n > 0 for n in counts), f"the {title} plot drew no line while training: {drawn}"
    first = next(i for i, n in enumerate(counts) if n > 0)
    assert max(counts[first:]) > counts[first], \
        f"the {title} line did not grow while training (step, points): {drawn}"
    legends = {tuple(p[f"{key}_legend"]) for p in trained_run.plots}
    assert not any("Infinity" in t for legend in legends for t in legend), legends


def test_all_runs_table_shows_the_run_completed(trained_run):
    page = trained_run.page
    table = webui.dataframe_after(page, "All runs")
    headers = webui.table_headers(table)
    rows = [dict(zip(headers, r)) for r in webui.table_rows(table)]
    ours = [r for r in rows if r.get("run") == trained_run.name]
    assert ours, f"run {trained_run.name} is not in the table: {rows}"
    assert ours[0]["status"] == "completed", ours[0]
    assert ours[0]["step"] == f"{RUN_STEPS}/{RUN_STEPS}", ours[0]


def test_run_picker_labels_the_run_completed(trained_run):
    assert webui.dropdown_value(trained_run.page, "run") == f"{trained_run.name} (completed)"


def test_a_new_tab_shows_the_finished_run_with_its_curves(trained_run, browser, app, shots):
    """Coming back later (or reloading) shows the run, its table row and both curves."""
    page = open_app(browser, app)
    try:
        webui.tab(page, "Train")
        st = webui.wait_status(page, lambda s: s["name"] == trained_run.name, timeout=20)
        assert st["state"] == "completed"
        assert webui.dropdown_value(page, "run") == f"{trained_run.name} (completed)"
        table = webui.dataframe_after(page, "All runs")
        rows = [dict(zip(webui.table_headers(table), r)) for r in webui.table_rows(table)]
        assert {"run": trained_run.name, "status": "completed",
                "step": f"{RUN_STEPS}/{RUN_STEPS}"}.items() <= next(
            r for r in rows if r["run"] == trained_run.name).items()
        page.wait_for_function(
            """() => [...document.querySelectorAll('path[aria-roledescription="line mark"]')]
                     .filter(p => (p.getAttribute('d') || '').length > 0).length >= 3""")
        loss = {m["label"].split("series: ")[-1]: m["points"]
                for m in webui.line_marks(page, "loss")}
        assert loss.get("train", 0) >= RUN_STEPS, loss  # a point a step
        assert loss.get("validation", 0) >= 2, loss  # validated every 10 steps
        lr = webui.line_marks(page, "learning rate")
        assert lr and lr[0]["points"] >= RUN_STEPS, lr
        assert "train" in webui.legend_text(page, "loss")
        webui.shoot(page, shots, "train")
    finally:
        page.context.close()
