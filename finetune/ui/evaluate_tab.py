"""The Evaluate tab: base vs tuned on rows the model never trained on, metric by metric and
example by example.

Handlers are thin: `finetune.evaluate.evaluate_run` does the work and writes eval.json in the
run directory; picking a run shows its saved eval.json at once.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from finetune import evaluate
from finetune.errors import FinetuneError

OWN_SPLIT, A_FILE = "The run's test split", "A file"
METRIC_HEADERS = ["metric", "base", "tuned", "change"]
EXAMPLE_HEADERS = ["prompt", "reference", "base answer", "tuned answer", "base", "tuned"]
NO_RUN = "No finished run yet: train one in the **Train** tab, then come back here."
NEXT = ("**Next:** open the **Chat** tab to talk to the tuned model, or put it side by side with "
        "the base model.")


def run_choices() -> list[tuple[str, str]]:
    """(label, path) of runs with trained weights, newest first; the label says if evaluated."""
    from finetune import chat

    out = []
    for run in chat.finished_runs():
        done = " · evaluated" if (run / "eval.json").is_file() else ""
        out.append((f"{run.name}{done}", str(run)))
    return out


def refresh_runs(current: str | None):
    choices = run_choices()
    values = [v for _, v in choices]
    value = current if current in values else (values[0] if values else None)
    return gr.Dropdown(choices=choices, value=value)


def summary_text(report: dict) -> str:
    counts = evaluate.outcome_counts(report)
    return (f"**{report.get('run', '')}** on {report.get('data', '')}: answers to "
            f"**{report['n_examples']}** examples, loss on **{report['n_loss_examples']}** "
            f"({report.get('seconds', '?')} s on {report.get('device', '?')}, "
            f"{str(report.get('created', ''))[:16].replace('T', ' ')}). "
            "Exact match per example: tuned right & base wrong "
            f"**{counts['tuned right, base wrong']}**, base right & tuned wrong "
            f"**{counts['base right, tuned wrong']}**, both right **{counts['both right']}**, "
            f"both wrong **{counts['both wrong']}**.")


def _views(report: dict | None, which: str):
    if report is None:
        return ("No evaluation of this run yet: press **Run evaluation**.", [], [])
    return (summary_text(report), evaluate.metric_rows(report),
            evaluate.example_rows(report, which))


def show_saved(run_value: str | None, which: str):
    """The run's eval.json, if it has one: (summary, metric rows, example rows)."""
    if not run_value:
        return NO_RUN, [], []
    return _views(evaluate.load_report(run_value), which)


def filter_examples(run_value: str | None, which: str):
    report = evaluate.load_report(run_value) if run_value else None
    return evaluate.example_rows(report, which) if report else []


def run_evaluation(run_value: str | None, source: str, upload: str | None, limit: float | None,
                   which: str, progress=gr.Progress()):
    if not run_value:
        raise gr.Error("Pick a finished run first (train one in the Train tab).")
    data = None
    if source == A_FILE:
        if not upload:
            raise gr.Error("Upload a test file first, or evaluate on the run's test split.")
        data = str(upload)
    if limit is not None and limit < 1:
        raise gr.Error("Examples to answer must be at least 1 (leave it empty for all, at most "
                       f"{evaluate.DEFAULT_LIMIT}).")
    try:
        report = evaluate.evaluate_run(Path(run_value), data=data,
                                       limit=int(limit) if limit else None,
                                       progress=lambda f, d: progress(f, desc=d), log=print)
    except FinetuneError as e:
        raise gr.Error(str(e), duration=None) from None
    summary, metric_rows, example_rows = _views(report, which)
    return summary, metric_rows, example_rows, refresh_runs(run_value)


def show_upload(source: str):
    return gr.update(visible=source == A_FILE)


def build_evaluate_tab() -> None:
    from gradio.context import Context

    tab = Context.block  # the gr.Tab app.py opened around us, to refresh when it is selected
    choices = run_choices()
    first = choices[0][1] if choices else None
    gr.Markdown("Does the tuned model do better than the model it started from? Both answer the "
                "same held-out rows; **exact match** counts answers equal to the reference (JSON "
                "compared as values), **loss** is scored on the answer tokens (lower is better).")
    with gr.Row():
        run = gr.Dropdown(choices=choices, value=first, label="Run", scale=4,
                          info="Finished runs, newest first.")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=100)
    with gr.Row():
        source = gr.Radio([OWN_SPLIT, A_FILE], value=OWN_SPLIT, label="Evaluate on", scale=2,
                          info="The test split was held out when the run started.")
        upload = gr.File(label="Test file (chat rows: JSONL, JSON, CSV, Parquet)",
                         file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet"],
                         type="filepath", visible=False, scale=2)
        limit = gr.Number(value=evaluate.DEFAULT_LIMIT, precision=0, minimum=1,
                          label="Examples to answer", scale=1,
                          info="Answers to at most this many test rows (answering takes most of "
                               "the time); loss uses every row.")
    go = gr.Button("Run evaluation", variant="primary")
    summary, metrics0, examples0 = show_saved(first, "all")
    summary_md = gr.Markdown(summary)
    metrics_df = gr.Dataframe(value=metrics0, headers=METRIC_HEADERS, interactive=False,
                              label="Base vs tuned")
    which = gr.Dropdown(list(evaluate.FILTERS), value="all", label="Show examples",
                        info="Which examples to list, by exact match.")
    examples_df = gr.Dataframe(value=examples0, headers=EXAMPLE_HEADERS, interactive=False,
                               wrap=True, label="Examples (click a column header to sort)",
                               column_widths=["24%", "18%", "22%", "22%", "7%", "7%"],
                               max_height=600)
    gr.Markdown(NEXT)

    source.change(show_upload, source, upload)
    run.change(show_saved, [run, which], [summary_md, metrics_df, examples_df])
    which.change(filter_examples, [run, which], examples_df)
    refresh.click(refresh_runs, run, run)
    go.click(run_evaluation, [run, source, upload, limit, which],
             [summary_md, metrics_df, examples_df, run], concurrency_limit=1)
    if isinstance(tab, gr.Tab):
        tab.select(refresh_runs, run, run)
