"""Data tab in Chromium: upload a good file, a broken one and an archive; see what was understood,
the rows, the token histogram, each problem with its line, and the archive's rows downloaded back.

    python -m pytest -q tests/browser/test_browser_data.py
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import webui



@dataclass
class Shown:
    """What the Data tab showed after one upload."""

    understood: str = ""
    problems: str = ""
    rows: list = field(default_factory=list)
    headers: list = field(default_factory=list)
    bars: list = field(default_factory=list)
    download: str = ""


def _upload(page, path) -> None:
    upload = webui.block(page, "Upload files or an archive").first
    clear = upload.get_by_role("button", name="Clear")
    if clear.count():
        clear.first.click()
    upload.locator("input[type=file]").set_input_files(str(path))


def _bars_total(page) -> int:
    return sum(int(b.get("rows", 0)) for b in webui.bars(page, "Tokens per row"))


def _shown(page, file_name: str, rows_read: int) -> Shown:
    understood = webui.markdown_with(page, r"^\s*Source:").first
    understood.filter(has_text=file_name).wait_for()
    understood.filter(has_text=f"Rows: {rows_read} read").wait_for()
    webui.wait_idle(page)
    # The histogram is drawn after the text; give it time to catch up before reading it.
    for _ in range(6):
        if _bars_total(page) in (0, rows_read, rows_read - 1):
            break
        page.wait_for_timeout(250)
    table = webui.dataframe(page, "Rows (first 200, after cleaning)")
    return Shown(understood=understood.inner_text(),
                 problems=webui.block(page, "Problems").first.inner_text(),
                 rows=webui.table_rows(table), headers=webui.table_headers(table),
                 bars=webui.bars(page, "Tokens per row"))


def _archive(data_files) -> Path:
    """chats.zip: the first 12 rows of good.jsonl, one example a .json file, and a picture."""
    path = data_files["good"].with_name("chats.zip")
    rows = data_files["good"].read_text(encoding="utf-8").splitlines()[:12]
    with zipfile.ZipFile(path, "w") as archive:
        for i, row in enumerate(rows):
            archive.writestr(f"chats/{i:02d}.json", row)
        archive.writestr("chats/cover.png", b"\x89PNG")
    return path


@pytest.fixture(scope="module")
def uploads(browser, app, data_files, shots):
    """One tab: the good file uploaded, then the broken one, then an archive (downloaded back
    as JSONL); what it showed after each."""
    page = webui.open_app(browser, app)
    try:
        _upload(page, data_files["good"])
        good = _shown(page, "good.jsonl", 48)
        webui.shoot(page, shots, "data")
        _upload(page, data_files["bad"])
        bad = _shown(page, "bad.jsonl", 7)
        webui.shoot(page, shots, "data-problems")
        _upload(page, _archive(data_files))
        archive = _shown(page, "chats.zip", 12)
        page.get_by_role("button", name="Download as JSONL").click()
        # Gradio shows a file's name and its extension in separate elements.
        link = page.locator("tr:visible", has_text="chats-cleaned").first
        link.wait_for()
        archive.download = link.inner_text()
    finally:
        page.context.close()
    return {"good": good, "bad": bad, "archive": archive}


def test_a_broken_line_is_shown_with_its_line_number(uploads):
    bad = uploads["bad"]
    assert re.search(r"ERROR\s+bad\.jsonl line 4: not valid JSON", bad.problems), bad.problems
    assert "Not usable yet" in bad.understood
    assert "Rows: 7 read, 6 usable" in bad.understood


def test_a_good_file_shows_what_was_understood_and_its_rows(uploads):
    good = uploads["good"]
    assert "Format: messages (detected)" in good.understood
    assert "Rows: 48 read, 48 usable, 48 after cleaning" in good.understood
    assert "The Train tab will use:" in good.understood and "good.jsonl" in good.understood
    # 48 rows: the one problem is the guides' rule of thumb on small data
    assert "ERROR" not in good.problems
    assert "fine-tuning rarely beats a better prompt" in good.problems, good.problems
    assert good.headers[:3] == ["#", "tokens", "turns"]
    assert "completion (learned)" in good.headers
    first = dict(zip(good.headers, good.rows[0]))
    assert first["#"] == "1" and int(first["tokens"]) > 0
    assert "Aisha Tinkamer" in first["prompt (context)"]
    assert '"name": "Aisha Tinkamer"' in first["completion (learned)"]
    assert len(good.rows) >= 5  # the rows on screen (the table scrolls)


def test_the_histogram_counts_the_uploaded_file(uploads):
    bars = uploads["good"].bars
    assert sum(int(b["rows"]) for b in bars) == 48, bars


def test_the_histogram_forgets_the_previous_file_after_an_unusable_one(uploads):
    bars = uploads["bad"].bars
    total = sum(int(b["rows"]) for b in bars)
    # Nothing, or the 6 rows of bad.jsonl that could be read: never the 48 of good.jsonl.
    assert total in (0, 6), bars


def test_an_archive_is_read_file_by_file_and_downloads_as_jsonl(uploads):
    archive = uploads["archive"]
    assert "Files: 12 read (12 .json), 1 not read" in archive.understood
    assert "Rows: 12 read, 12 usable, 12 after cleaning" in archive.understood
    assert re.search(r"WARNING\s+chats\.zip/chats/cover\.png: not read", archive.problems), \
        archive.problems
    assert re.search(r"chats-cleaned\s*\.jsonl", archive.download), archive.download
