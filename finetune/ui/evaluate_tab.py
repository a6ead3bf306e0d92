"""The Evaluate tab: base vs tuned on rows the model never trained on, metric by metric and
example by example.

    python app.py      # then open the Evaluate tab

Handlers are thin: `finetune.evaluate.evaluate_choice` does the work and writes eval.json in the
run directory; picking a run shows its saved eval.json at once. Library errors become gr.Error
(`user_errors`).
"""

from __future__ import annotations

import gradio as gr

from finetune import evaluate
from finetune.ui.common import evaluate_choices, picker, refresh_triggers, user_errors

OWN_SPLIT, A_FILE = "The run's test split", "A file"
METRIC_HEADERS = ["metric", "base", "tuned", "change"]
EXAMPLE_HEADERS = ["prompt", "reference", "base answer", "tuned answer", "base", "tuned"]
NO_RUN = "No finished run yet: train one in the **Train** tab, then come back here."
NEXT = ("**Next:** open the **Chat** tab to talk to the tuned model, or put it side by side with "
        "the base model.")


def refresh_runs(current: str | None, seen: list | None = None):
    """The finished runs now; with `seen`, a run finished since the page last looked is picked
    (and the new seen list is returned too)."""
    return picker(evaluate_choices(), current, seen)


def summary_text(report: dict) -> str:
    counts = evaluate.outcome_counts(report)
    return (f"**{report.get('run', '')}** on {report.get('data', '')}: answers to "
            f"**{report['n_examples']}** examples, loss on **{report['n_loss_examples']}** "
            f"({report.get('seconds', '?')} s on {report.get('device', '?')}, "
            f"{str(report.get('created', ''))[:16].replace('T', ' ')}). "
            "Exact match per example: tuned right & base wrong "
            f"**{counts['tuned right, base wrong']}**, base right & tuned wrong "
            f"**{counts['base right, tuned wrong']}**, both right **{counts['both right']}**, "
            f"both wrong **{counts['both wrong']}**." + trust_markdown(report))


def trust_markdown(report: dict) -> str:
    """The checks after training (finetune.drift) in words, with a few flagged answers."""
    from finetune import drift, probe

    scores = probe.findings(report)  # the probe's scores, then its flags
    lines = scores[:1] + [f"⚠ {line}" for line in scores[1:]]
    flagged = bool((report.get("drift") or {}).get("flags"))
    lines += [("⚠ " if flagged else "") + line for line in drift.findings(report)]
    lines += [f"- `{x}`" for x in drift.example_lines(report.get("drift"))]
    return ("\n\n**Trust:** " + "  \n".join(lines)) if lines else ""


def _views(report: dict | None, which: str):
    if report is None:
        return ("No evaluation of this run yet: press **Run evaluation**.", [], [])
    # exported models (Share tab) stand beside base and tuned
    metrics = gr.Dataframe(value=evaluate.metric_rows(report, exported=True),
                           headers=evaluate.metric_headers(report, exported=True))
    return summary_text(report), metrics, evaluate.example_rows(report, which)


def votes_markdown(run_value: str | None) -> str:
    """The blind A/B votes people gave in the Chat tab, tallied (finetune.votes)."""
    from finetune import runinfo, votes
    from finetune.errors import RunError

    try:
        return "\n\n**People:** " + votes.tally(runinfo.named_run(run_value))["text"]
    except RunError:
        return ""


def show_saved(run_value: str | None, which: str):
    """The run's eval.json, if it has one, and the people's votes: (summary, metric rows,
    example rows)."""
    if not run_value:
        return NO_RUN, [], []
    summary, metrics, examples = _views(evaluate.saved_report(run_value), which)
    return summary + votes_markdown(run_value), metrics, examples


def filter_examples(run_value: str | None, which: str):
    report = evaluate.saved_report(run_value) if run_value else None
    return evaluate.example_rows(report, which) if report else []


@user_errors
def run_evaluation(run_value: str | None, source: str, upload: str | None, limit: float | None,
                   which: str, progress=gr.Progress()):
    report = evaluate.evaluate_choice(run_value, upload, source == A_FILE, limit,
                                      progress=lambda f, d: progress(f, desc=d), log=print)
    summary, metrics, examples = _views(report, which)
    return summary + votes_markdown(run_value), metrics, examples, refresh_runs(run_value)


def show_upload(source: str):
    return gr.update(visible=source == A_FILE)


def build_evaluate_tab() -> None:
    gr.Markdown("Does the tuned model do better than the model it started from? Both answer the "
                "same held-out rows; **exact match** counts answers equal to the reference (JSON "
                "compared as values), **loss** is scored on the answer tokens (lower is better).")
    with gr.Row():
        run = gr.Dropdown(choices=[], value=None, label="Run", scale=4,
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
    summary_md = gr.Markdown("")
    metrics_df = gr.Dataframe(value=[], headers=METRIC_HEADERS, interactive=False,
                              label="Base vs tuned")
    which = gr.Dropdown(list(evaluate.FILTERS), value="all", label="Show examples",
                        info="Which examples to list, by exact match.")
    examples_df = gr.Dataframe(value=[], headers=EXAMPLE_HEADERS, interactive=False,
                               wrap=True, label="Examples (click a column header to sort)",
                               column_widths=["24%", "18%", "22%", "22%", "7%", "7%"],
                               max_height=600)
    gr.Markdown(NEXT)

    views = [summary_md, metrics_df, examples_df]
    source.change(show_upload, source, upload)
    run.change(show_saved, [run, which], views)
    which.change(filter_examples, [run, which], examples_df)
    # one progress bar, above the results (Gradio would draw one on every output)
    go.click(run_evaluation, [run, source, upload, limit, which], views + [run],
             concurrency_limit=1, show_progress_on=summary_md)
    # runs and their eval.json are read when the page loads, not while the app is built
    seen = gr.State([])  # the runs this page offered, so a newly finished one is picked
    gr.on(refresh_triggers(refresh), refresh_runs, [run, seen], [run, seen]).then(
        show_saved, [run, which], views)
