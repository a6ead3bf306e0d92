"""The Data tab's handlers, called directly (no browser).

Run: python -m pytest -q tests/test_data_tab.py
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from finetune import data, preview
from finetune.config import DEFAULT_MODEL
from finetune.ui import data_tab, train_tab

DEFAULTS = ("auto", "", False, False, False, 512)


def show(source, *settings, current=None, model=DEFAULT_MODEL):
    """The tab's outputs for `source`; a local file is uploaded first, as the page does."""
    settings = settings or DEFAULTS
    if Path(source).is_file() and preview.uploads_dir() not in Path(source).parents:
        source = preview.keep_upload(source)
    keys = ["understood", "problems", "plot", "table", "rows", "row_no", "rendered", "info", "state"]
    return dict(zip(keys, data_tab.show(source, *settings, model, current or {})))


def auto_cut(out) -> int:
    note = [line for line in out["understood"].split("  \n") if line.startswith("**Max length (auto)")]
    assert note, out["understood"]
    return int(note[0].split("** ")[1].split(":")[0])


def test_default_sample_on_page_load():
    out = dict(zip(["understood", "problems", "plot", "table", "rows", "row_no", "rendered", "info",
                    "state"], data_tab.show_default()))
    assert out["state"] == {"data": "sample:contacts", "data_format": "messages"}
    assert "**Format:** messages (detected)" in out["understood"]
    assert "train **342**, validation **18**" in out["understood"]  # what the Train tab will hold out
    # the one problem: the guides' rule of thumb on 360 rows (a narrow task learns from them)
    assert [level for _, level in out["problems"] if level] == ["warning"]
    assert "360 rows: fewer than ~500 rarely teach a model much" in out["problems"][1][0]
    assert "**Will it stop:** yes" in out["understood"] or "**Will it stop:** not checked" in \
        out["understood"]
    assert len(out["table"]) == 200 and "completion (learned)" in out["table"].columns
    assert any(label == data_tab.LOSS for _, label in out["rendered"])
    assert out["info"].startswith("Row 1 of 360")


def test_an_empty_max_length_shows_the_cut_training_will_choose():
    out = show("sample:contacts", "auto", "", False, False, False, None)
    cut = auto_cut(out)
    assert "covers 100.0% of rows" in out["understood"] and "0 truncated" in out["understood"]
    assert cut % 8 == 0 and f"0 longer than the max length of {cut}" in out["understood"]
    assert out["rows"]["cut"] == cut
    # The example view cuts where the tab cut, even with the box left empty.
    spans, info = data_tab.show_example({"rows": out["rows"]["rows"], "cut": 16}, 1, None,
                                        DEFAULT_MODEL)
    assert "cut off by the max length" in info


def test_max_length_is_the_train_tabs_for_its_model_and_travels_to_it(tiny_model):
    from finetune import config, plan

    # Counted with the tiny model's own tokenizer (another vocabulary: other lengths), the Data
    # tab's auto cut is the one the planner makes for a run on that model and data.
    bundled = auto_cut(show("sample:contacts", "auto", "", False, False, False, None))
    tiny = show("sample:contacts", "auto", "", False, False, False, None, model=str(tiny_model))
    assert "tiny-llama" in tiny["understood"] and auto_cut(tiny) != bundled
    planned = plan.plan(config.RunConfig(model=str(tiny_model), data="sample:contacts"))
    assert planned.config.max_length == auto_cut(tiny)
    # Left empty, the Train tab keeps 'auto' (the same cut); a typed one is handed over.
    assert train_tab.from_data_tab(tiny["state"])[3] == "auto"
    typed = show("sample:contacts", "auto", "", False, False, False, 96, model=str(tiny_model))
    assert train_tab.from_data_tab(typed["state"]) == ("sample:contacts", "messages", "", "96")


def test_upload_is_kept_and_mapping_writes_a_prepared_file(tmp_path, finetune_home):
    upload = tmp_path / "qa.csv"
    upload.write_text("question,answer,email\nWhy?,Because.,a@b.org\nHow?,Like so.,c@d.org\n",
                      encoding="utf-8")
    saved = preview.keep_upload(str(upload))
    assert Path(saved).parent == finetune_home / "uploads" and Path(saved).read_bytes() == upload.read_bytes()
    out = show(saved, "auto", "prompt=question, completion=answer", True, False, False, 512)
    state = out["state"]
    assert state["data_format"] == "messages" and state["data"].endswith("qa-prepared.jsonl")
    rows = [json.loads(x) for x in Path(state["data"]).read_text().splitlines()]
    assert rows[0]["messages"][-1]["content"] == "Because."
    # The prepared file is what training reads, and it trains as it is.
    assert data.load(state["data"]).rows == out["rows"]["rows"]
    assert "**Ignored columns:** email" in out["understood"]


def test_errors_show_in_the_problems_panel_and_keep_the_previous_data(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9"}\n')
    previous = {"data": "sample:tickets", "data_format": "messages"}
    out = show(str(bad), *DEFAULTS, current=previous)
    assert out["state"] == previous
    assert "The Train tab still uses `sample:tickets`" in out["understood"]
    (level, _), (message, _) = out["problems"]
    assert level == "ERROR" and "byte 13 (line 1, column 14)" in message
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a"}\n{"instruction": "i", "output": "o"}\n', encoding="utf-8")
    out = show(str(mixed), current=previous)
    assert out["state"] == previous and "**Not usable yet:**" in out["understood"]
    assert ("ERROR", "error") in out["problems"]


def test_long_rows_dropped_on_request(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "word " * 300}) + "\n" + json.dumps({"text": "hi"}) + "\n")
    warned = show(str(path), "auto", "", False, False, False, 32)
    assert ("WARNING", "warning") in warned["problems"]
    # nothing changed: training reads the uploaded file itself
    assert warned["state"]["data"] == str(preview.uploads_dir() / "t.jsonl")
    dropped = show(str(path), "auto", "", False, False, True, 32)
    assert "1 too long" in dropped["understood"]
    assert data.load(dropped["state"]["data"]).rows == [{"text": "hi"}]


def test_example_view_and_next_step():
    rows = data.load("sample:tickets").rows
    spans, info = data_tab.show_example({"rows": rows}, 5, 512, DEFAULT_MODEL)
    assert info.startswith("Row 5 of 360") and spans[-1][1] == data_tab.LOSS
    assert data_tab.show_example({"rows": []}, 1, 512, DEFAULT_MODEL) == ([], "")
    with gr.Blocks():
        data_tab.build_data_tab(gr.State({}), gr.State(DEFAULT_MODEL))
    assert "Train" in data_tab.NEXT


def test_the_page_reads_no_server_path(tmp_path, finetune_home):
    secret = tmp_path / "secrets.jsonl"
    secret.write_text('{"text": "HF_TOKEN=hf_not_for_you"}\n')
    for source in (str(secret), "/etc/passwd", "../../etc/passwd", str(finetune_home / "x.jsonl")):
        out = dict(zip(["understood", "problems"], data_tab.show(source, *DEFAULTS, DEFAULT_MODEL,
                                                                  {})))
        assert "not something the page can read" in out["problems"][1][0]
        assert "hf_not_for_you" not in str(out)


def test_common_column_names_are_read_and_named(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text("Question,Answer\nWhy?,Because.\nHow?,Like so.\n", encoding="utf-8")
    out = show(str(path))
    assert ("**Columns read as:** `prompt=Question, completion=Answer` (recognised from their "
            "names") in out["understood"]
    # Nothing changed: training reads the upload itself, as the format shown.
    state = out["state"]
    assert (state["data"], state["data_format"]) == (str(preview.uploads_dir() / "faq.csv"),
                                                     "prompt_completion")
    assert data.load(state["data"], state["data_format"]).rows == out["rows"]["rows"]


def test_an_archive_or_several_files_upload_and_download_as_jsonl(tmp_path, finetune_home):
    import zipfile

    rows = [{"messages": [{"role": "user", "content": f"Q{i}"},
                          {"role": "assistant", "content": f"A{i}"}]} for i in range(3)]
    archive = tmp_path / "chats.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, row in enumerate(rows):
            zf.writestr(f"chats/{i}.json", json.dumps(row))
        zf.writestr("chats/cover.png", b"\x89PNG")
    out = show(str(archive))
    assert "**Files:** 3 read (3 .json), 1 not read" in out["understood"]
    assert any("chats.zip/chats/cover.png: not read" in text for text, _ in out["problems"])
    assert out["rows"]["rows"] == rows and out["state"]["data"].endswith("uploads/chats.zip")
    # The same examples as separate files: kept together in one folder and read as one dataset.
    parts = []
    for i, row in enumerate(rows):
        parts.append(tmp_path / f"{i}.json")
        parts[-1].write_text(json.dumps(row))
    folder = preview.keep_upload([str(p) for p in parts])
    assert Path(folder).parent == finetune_home / "uploads" and preview.keep_upload(
        [str(p) for p in reversed(parts)]) == folder
    out = show(folder)
    assert "**Files:** 3 read (3 .json)" in out["understood"] and out["rows"]["rows"] == rows
    # Download as JSONL: every row after cleaning, which reads back the same.
    path = data_tab.download(out["rows"], folder)
    assert path.endswith("-cleaned.jsonl") and data.load(path).rows == rows


def test_a_hostile_archive_is_refused_and_the_tab_keeps_working(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.txt", b"\0" * (4 << 20))
    previous = {"data": "sample:tickets", "data_format": "messages"}
    out = show(str(bomb), current=previous)
    assert out["state"] == previous and "The Train tab still uses" in out["understood"]
    assert "bomb.zip was refused" in out["problems"][1][0]
    with pytest.raises(gr.Error, match="nothing usable to download"):
        data_tab.download(out["rows"], str(bomb))
    assert show("sample:contacts")["state"]["data"] == "sample:contacts"
