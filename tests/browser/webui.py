"""What a person sees and does in the app, as Playwright helpers shared by the browser tests.

Everything here reads the rendered page (text, the SVG marks Vega draws) and acts through the
page (typing, clicking, uploading); nothing reads the app's internal state.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Locator, Page

RUN_STEPS = 120  # ~0.1 s a step for the tiny model: 6-15 s of training, 3-7 polls of the tab
FINAL = ("completed", "stopped", "failed", "interrupted")


def open_app(browser, app) -> Page:
    """A new browser tab on the app, once the Data tab has shown the bundled sample."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app.url)
    page.get_by_text("Rows:", exact=False).first.wait_for(timeout=60_000)
    return page


# --- finding widgets by the words on screen -----------------------------------------------------


def _label_re(label: str) -> re.Pattern:
    return re.compile(rf"^\s*{re.escape(label)}\s*$")


def block(page: Page, label: str) -> Locator:
    """The visible component whose label is exactly `label` (its info text is not part of it)."""
    title = page.locator("[data-testid=block-info]:visible, [data-testid=block-label]:visible",
                         has_text=_label_re(label))
    return title.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '),"
                         " ' block ')][1]")


def field(page: Page, label: str) -> Locator:
    """The text or number box labelled `label` (Train tab widgets: a config field's name with
    underscores as spaces)."""
    title = page.locator("[data-testid=block-info]:visible", has_text=_label_re(label))
    return page.locator("label:visible").filter(has=title).locator(
        "textarea, input[type=number], input[type=text]").first


def set_field(page: Page, label: str, value: str) -> None:
    box = field(page, label)
    box.fill(str(value))
    box.blur()


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def markdown_with(page: Page, pattern: str) -> Locator:
    """The visible Markdown block whose text matches `pattern` (a regex)."""
    return page.locator(".prose:visible").filter(has_text=re.compile(pattern))


def text_of(locator: Locator) -> str:
    return locator.inner_text() if locator.count() else ""


# --- progress ---------------------------------------------------------------------------------


def busy_trackers(page: Page) -> int:
    """How many components show Gradio's loading overlay (spinner, progress bar) right now."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=status-tracker]')]
                 .filter(e => !e.classList.contains('hide') && e.offsetParent !== null
                     && (e.classList.contains('pending') || e.classList.contains('generating')
                         || e.querySelector('.progress-text, .eta-bar, .loader, .progress-bar')))
                 .length""")


def progress_bars(page: Page) -> list[str]:
    """The description of every progress bar on screen (one per gr.Progress display)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[role=progressbar]')]
                 .filter(e => e.offsetParent !== null)
                 .map(e => e.getAttribute('aria-label') || '')""")


def wait_idle(page: Page, timeout: float = 60.0, settle: float = 0.3) -> None:
    """Wait until no component shows a loading overlay (twice in a row, `settle` s apart)."""
    deadline = time.time() + timeout
    quiet = 0
    while time.time() < deadline:
        quiet = quiet + 1 if busy_trackers(page) == 0 else 0
        if quiet >= 2:
            return
        page.wait_for_timeout(settle * 1000)
    raise AssertionError(f"the page was still busy after {timeout:.0f} s")


# --- plots: what Vega drew ----------------------------------------------------------------------


def plot_svg(page: Page, title: str) -> Locator:
    """The SVG of the plot whose title (drawn in the chart) is `title`."""
    return page.locator("svg:visible").filter(
        has=page.locator(f"[aria-label=\"Title text '{title}'\"]"))


def line_marks(page: Page, title: str) -> list[dict]:
    """Each line the plot shows: a path with a shape and a colour (Vega leaves the stroke out
    when the series has no colour, and then nothing shows); its label and vertex count."""
    svg = plot_svg(page, title)
    if not svg.count():
        return []
    return svg.first.evaluate(
        """svg => [...svg.querySelectorAll('path[aria-roledescription="line mark"]')]
                  .map(p => ({d: p.getAttribute('d') || '',
                              label: p.getAttribute('aria-label') || '',
                              stroke: p.getAttribute('stroke') || ''}))
                  .filter(m => m.d.length > 0 && m.stroke
                               && !['none', 'transparent'].includes(m.stroke))
                  .map(m => ({...m, points: (m.d.match(/[ML]/g) || []).length}))""")


def legend_text(page: Page, title: str) -> list[str]:
    svg = plot_svg(page, title)
    if not svg.count():
        return []
    return svg.first.evaluate(
        """svg => [...svg.querySelectorAll('.role-legend text')].map(t => t.textContent)""")


def bars(page: Page, title: str) -> list[dict]:
    """The bars of a bar plot, from the labels Vega gives them ('x: ..; y: ..; color: ..')."""
    svg = plot_svg(page, title)
    if not svg.count():
        return []
    labels = svg.first.evaluate(
        """svg => [...svg.querySelectorAll('path[aria-roledescription="bar"]')]
                  .filter(p => (p.getAttribute('d') || '').length > 0)
                  .map(p => p.getAttribute('aria-label') || '')""")
    out = []
    for label in labels:
        out.append(dict(part.split(": ", 1) for part in label.split("; ") if ": " in part))
    return out


# --- tables ---------------------------------------------------------------------------------

_CELLS = """c => {
    const rows = {};
    c.querySelectorAll('[role=gridcell][data-row]').forEach(td => {
        (rows[td.dataset.row] ||= {})[+td.dataset.col] = td.innerText.trim();
    });
    return Object.keys(rows).sort((a, b) => a - b)
        .map(r => Object.keys(rows[r]).sort((a, b) => a - b).map(k => rows[r][k]));
}"""


def table_rows(container: Locator) -> list[list[str]]:
    """The cells a Gradio Dataframe shows (rows rendered on screen), as text."""
    return container.evaluate(_CELLS) if container.count() else []


def table_headers(container: Locator) -> list[str]:
    return container.evaluate(
        "c => [...c.querySelectorAll('th[role=columnheader]')].map(th => th.innerText.trim())"
    ) if container.count() else []


def dataframe(page: Page, label: str) -> Locator:
    """The visible Dataframe labelled `label`."""
    return page.get_by_role("grid", name=label, exact=True)


def dataframe_after(page: Page, heading: str) -> Locator:
    """The first Dataframe after the Markdown heading `heading` (for tables without a label)."""
    return page.locator(f"xpath=//h3[normalize-space()='{heading}']/following::*[@role='grid'][1]")


def dropdown_value(page: Page, label: str) -> str:
    """What a dropdown shows (the label of the chosen option)."""
    return block(page, label).first.locator("input").first.input_value()


def choose(page: Page, label: str, option: str) -> None:
    """Open the dropdown labelled `label` and click the option whose text contains `option`."""
    block(page, label).first.locator("input").first.click()
    page.get_by_role("option").filter(has_text=option).first.click()


# --- screenshots ----------------------------------------------------------------------------


def shoot(page: Page, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --- the Train tab ----------------------------------------------------------------------------

STATUS_RE = re.compile(
    r"(?P<name>[\w.-]+): (?P<state>[a-z]+), step (?P<step>\d+) of (?P<total>\S+)")


def status_text(page: Page) -> str:
    """The Train tab's status line ('NAME: running, step 12 of 80 ...'), '' when none."""
    return text_of(markdown_with(page, r"step \d+ of").first)


def parse_status(text: str) -> dict | None:
    m = STATUS_RE.search(text or "")
    if not m:
        return None
    return {"name": m["name"], "state": m["state"], "step": int(m["step"]),
            "total": m["total"], "text": text}


def fill_training(page: Page, model: Path, data: Path, max_steps: int, eval_steps: int,
                  save_steps: int, early_stopping: bool = False) -> None:
    """Type a training setup into the Train tab (basic row and the Advanced settings)."""
    tab(page, "Train")
    set_field(page, "model", str(model))
    set_field(page, "data", str(data))
    advanced = page.get_by_role("button", name=re.compile(r"^Advanced settings"))
    if not field(page, "max steps").is_visible():
        advanced.click()
    set_field(page, "max steps", str(max_steps))
    set_field(page, "eval steps", str(eval_steps))
    set_field(page, "save steps", str(save_steps))
    box = page.get_by_role("checkbox", name="early stopping", exact=True)
    box.set_checked(early_stopping)


def wait_status(page: Page, done, timeout: float, every: float = 0.4, watch=None) -> dict:
    """Poll the status line until `done(status)` holds; `watch(status)` sees every reading.
    Raises AssertionError with the last line read when time runs out."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = parse_status(status_text(page))
        if watch:
            watch(last)
        if last and done(last):
            return last
        page.wait_for_timeout(every * 1000)
    raise AssertionError(f"the status line did not get there in {timeout:.0f} s; last seen: "
                         f"{(last or {}).get('text', status_text(page))!r}")


def log_text(page: Page) -> str:
    """The Train tab's 'Log (last lines)' box, opened if needed."""
    code = block(page, "train.log")
    if not code.count() or not code.first.is_visible():
        page.get_by_role("button", name=re.compile(r"^Log \(last lines\)")).click()
    return block(page, "train.log").first.inner_text()
