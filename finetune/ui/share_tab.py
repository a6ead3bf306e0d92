"""The Share tab (owner only): export a finished run (adapter, merged model, GGUF), see each export
checked on the held-out rows beside base and tuned, push it to the Hub with a model card, and
publish a chat-only Space for it.

    python app.py      # then open the Share tab

Handlers are thin: `finetune.export`, `finetune.hub` and `finetune.evaluate` do the work. Only
the owner may use them (the app's guard checks every handler); the token comes from the HF_TOKEN
secret or the box here, and is never written anywhere.
"""

import gradio as gr

from finetune import evaluate, export, gguf, hub, runinfo
from finetune.ui.common import evaluate_choices, picker, refresh_triggers, user_errors

ADAPTER, MERGED = "LoRA adapter (PEFT)", "merged model (safetensors)"
CHECK_HEADERS = ["export", "exact match", "agreement with tuned", "loss", "verdict"]
INTRO = ("Take a finished run elsewhere: the **adapter** alone (small; loads on its base model "
         "with PEFT), the **merged model** (loads with plain transformers), or **GGUF** for "
         "llama.cpp, Ollama and LM Studio (q8_0 is half the size of f16 and answers the same). "
         "Each export answers the run's held-out rows before it is offered; one that disagrees "
         "with the tuned model beyond rounding noise is flagged and not pushed.")


def _run(name):
    """The run directory the page names (a run name, never a path), or None."""
    return runinfo.named_run(name) if name else None


def refresh_runs(current, seen=None):
    return picker(evaluate_choices(), current, seen)


def _export_view(name):
    """(summary, check rows, side-by-side table) of the run's saved export."""
    run_value = _run(name)
    folder = export.default_out(run_value) if run_value else None
    if folder is None or not (folder / "export.json").is_file():
        return "No export of this run yet: pick what to export and press **Export and check**.", \
            [], gr.Dataframe(value=[], headers=evaluate.metric_headers())
    manifest = export.read_manifest(folder)
    report = evaluate.load_report(run_value) or {}
    names = {e["name"] for e in manifest["exports"]}
    checked = dict(report, exported={k: v for k, v in report.get("exported", {}).items()
                                     if k in names}) if report else None
    flagged = manifest.get("flagged") or []
    summary = (f"Exported {', '.join(sorted(names))} to `{folder}` ({manifest.get('seconds', '?')} "
               "s). " + (f"**Flagged: {', '.join(flagged)}**: its answers differ from the tuned "
                         "model's; it will not be pushed unless you tick *push anyway*."
                         if flagged else "Every checked export answers like the tuned model."))
    table = gr.Dataframe(value=evaluate.metric_rows(checked, exported=True) if checked else [],
                         headers=evaluate.metric_headers(checked, exported=True))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    summary += "\n\n" + ", ".join(f"`{p.relative_to(folder)}` ({p.stat().st_size / 1e6:.1f} MB)"
                                  for p in files)
    return summary, evaluate.export_rows(checked) if checked else [], table


def _push_view(name):
    run_value = _run(name)
    last = hub.last_push(run_value) if run_value else None
    if not last:
        return "Not pushed yet."
    seen = "private" if last["private"] else "public"
    return f"Pushed to [{last['repo_id']}]({last['url']}) ({seen}, {last['pushed']})."


@user_errors
def show_saved(name):
    run_value = _run(name)
    last = hub.last_push(run_value) if run_value else None
    repo = last["repo_id"] if last else (name or "")
    return (*_export_view(name), _push_view(name), repo,
            (repo.split("/")[-1] + "-chat") if repo else "")


@user_errors
def do_export(name, kinds, gguf_types, progress=gr.Progress()):
    run_value = runinfo.named_run(name)
    kinds = kinds or []
    export.export_run(run_value, export.default_out(run_value), adapter=(ADAPTER in kinds) or None,
                      merge=MERGED in kinds, gguf_types=gguf_types or [],
                      progress=lambda f, d: progress(f, desc=d))
    return _export_view(name)


@user_errors
def do_push(name, repo, token, private, force, progress=gr.Progress()):
    run_value = runinfo.named_run(name)
    folder = export.default_out(run_value) if run_value else None
    if folder is None or not (folder / "export.json").is_file():
        raise hub.HubError("Export the run first (above); what was exported and checked is what "
                           "is pushed.")
    hub.push(run_value, repo, token=token or None, folder=folder, private=private, force=force,
             progress=lambda f, d: progress(f, desc=d))
    return _push_view(name)


@user_errors
def do_space(name, space, token, space_private, progress=gr.Progress()):
    run_value = runinfo.named_run(name)
    last = hub.last_push(run_value) if run_value else None
    if not last:
        raise hub.HubError("Push the model first: the chat Space loads it from the Hub.")
    from finetune import chat

    result = hub.publish_chat_space(last["repo_id"], space or None, token=token or None,
                                    private=space_private, system=chat.suggested_system(run_value),
                                    progress=lambda f, d: progress(f, desc=d))
    note = f"\n\n{result['note']}" if result["note"] else ""
    return (f"Chat Space: [{result['space_id']}]({result['url']}) (it builds in a few "
            f"minutes).{note}")


def build_share_tab() -> None:
    gr.Markdown(INTRO)
    if hub.on_space():
        gr.Markdown(f"⚠️ {hub.SPACE_NOTE}")
    with gr.Row():
        run = gr.Dropdown(choices=[], value=None, label="Run", scale=4,
                          info="Finished runs, newest first.")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=100)
    with gr.Row():
        kinds = gr.CheckboxGroup([ADAPTER, MERGED], value=[MERGED], label="Export",
                                 info="Nothing ticked: the adapter alone.")
        gguf_types = gr.CheckboxGroup(list(gguf.TYPES), value=["q8_0"],
                                      label="GGUF (llama.cpp, Ollama, LM Studio)",
                                      info="With an Ollama Modelfile carrying the chat template "
                                           "and stop token. " + gguf.TYPES["q8_0"] + ".")
    go = gr.Button("Export and check", variant="primary")
    summary = gr.Markdown("")
    checks = gr.Dataframe(value=[], headers=CHECK_HEADERS, interactive=False, wrap=True,
                          label="Each export on the held-out rows")
    table = gr.Dataframe(value=[], headers=evaluate.metric_headers(), interactive=False,
                         label="Base vs tuned vs exported (also in eval.json)")

    gr.Markdown("### Push to the Hugging Face Hub\nWhat was exported above, with a model card "
                "(settings, data summary, scores, loss curve, how to load it).")
    with gr.Row():
        repo = gr.Textbox(label="Repository", placeholder="my-model or owner/my-model", scale=3)
        token = gr.Textbox(label="Token", type="password", scale=2,
                           placeholder="empty: HF_TOKEN" + (" (Space secret)" if hub.on_space()
                                                            else " or your saved login"))
        private = gr.Checkbox(True, label="Private", scale=1)
        force = gr.Checkbox(False, label="Push anyway if flagged", scale=1)
    push = gr.Button("Push to the Hub")
    pushed = gr.Markdown("")

    gr.Markdown("### Chat Space\nA small public app where anyone can chat with the pushed model "
                "(no training UI).")
    with gr.Row():
        space = gr.Textbox(label="Space name", placeholder="my-model-chat", scale=3)
        space_private = gr.Checkbox(False, label="Private Space", scale=1)
    publish = gr.Button("Publish chat Space")
    published = gr.Markdown("")

    views = [summary, checks, table]
    run.change(show_saved, run, views + [pushed, repo, space])
    go.click(do_export, [run, kinds, gguf_types], views, concurrency_limit=1,
             show_progress_on=summary)
    push.click(do_push, [run, repo, token, private, force], pushed, concurrency_limit=1)
    publish.click(do_space, [run, space, token, space_private], published, concurrency_limit=1)
    seen = gr.State([])
    gr.on(refresh_triggers(refresh), refresh_runs, [run, seen], [run, seen]).then(
        show_saved, run, views + [pushed, repo, space])
