"""Evaluate tab in Chromium: evaluate the run trained in the Train tab; see base vs tuned.

    python -m pytest -q tests/browser/test_browser_evaluate.py
"""

from __future__ import annotations

import time

import pytest

import webui


@pytest.fixture(scope="module")
def evaluation(trained_run, browser, app, shots):
    """One tab: pick the run, press Run evaluation, watch the page until the metrics show."""
    page = webui.open_app(browser, app)
    try:
        webui.tab(page, "Evaluate")
        page.wait_for_function(
            "name => [...document.querySelectorAll('input[aria-label=\"Run\"]')]"
            ".some(i => i.value.startsWith(name))", arg=trained_run.name)
        picked = webui.dropdown_value(page, "Run")
        page.get_by_role("button", name="Run evaluation").click()
        bars_seen = []  # the progress bars on screen at each look, while it ran
        metrics = webui.dataframe(page, "Base vs tuned")
        started = time.time()
        while time.time() < started + 180:
            bars = webui.progress_bars(page)
            if bars:
                bars_seen.append(bars)
            elif (bars_seen or time.time() > started + 5) and webui.table_rows(metrics):
                break
            page.wait_for_timeout(100)
        webui.wait_idle(page)
        webui.shoot(page, shots, "evaluate")
        return {"picked": picked, "bars_seen": bars_seen,
                "headers": webui.table_headers(metrics), "rows": webui.table_rows(metrics),
                "summary": webui.markdown_with(page, r"answers to").first.inner_text(),
                "examples": webui.table_rows(
                    webui.dataframe(page, "Examples (click a column header to sort)"))}
    finally:
        page.context.close()


def test_the_run_is_offered_and_evaluated_base_vs_tuned(evaluation, trained_run):
    assert evaluation["picked"].startswith(trained_run.name)
    assert evaluation["headers"] == ["metric", "base", "tuned", "change"]
    metrics = {row[0]: row[1:] for row in evaluation["rows"]}
    assert {"exact match", "loss (answer tokens)"} <= set(metrics), evaluation["rows"]
    for base, tuned, change in metrics.values():
        assert base and tuned and change
    # The tiny model was trained on the answers: its answer loss must fall.
    assert float(metrics["loss (answer tokens)"][1]) < float(metrics["loss (answer tokens)"][0])
    assert trained_run.name in evaluation["summary"]
    assert evaluation["examples"], "no example rows under the metrics"


def test_one_progress_bar_while_evaluating(evaluation):
    seen = evaluation["bars_seen"]
    assert seen, "no progress bar was seen while the evaluation ran"
    most = max(seen, key=len)
    assert len(most) == 1, f"{len(most)} progress bars at once: {most}"
