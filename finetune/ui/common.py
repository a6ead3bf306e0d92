"""Shared by the tabs: the run pickers, and turning library errors into gr.Error.

    python app.py      # the tabs that use these
"""

from __future__ import annotations

import functools
import inspect

from finetune import chat
from finetune.errors import FinetuneError
from finetune.models import BUNDLED_NAME

# The Chat tab offers it before any run is read (and to API callers that never load the page).
BUNDLED_CHOICE = (f"{BUNDLED_NAME} (bundled, not fine-tuned)", chat.MODEL_PREFIX + BUNDLED_NAME)


def run_choices() -> list[tuple[str, str]]:
    """(label, run name) for every run, newest first (the Train tab)."""
    from finetune import jobs, runinfo

    out = []
    for run_dir in runinfo.list_runs():
        state = jobs.status(run_dir).get("state", "?")
        out.append((f"{run_dir.name} ({state})", run_dir.name))
    return out


def evaluate_choices() -> list[tuple[str, str]]:
    """(label, run name) of runs with trained weights, newest first; the label says if
    evaluated (the Evaluate tab)."""
    return [(f"{run.name}{' · evaluated' if (run / 'eval.json').is_file() else ''}", run.name)
            for run in chat.finished_runs()]


def chat_choices(owner: bool = True) -> list[tuple[str, str]]:
    """(label, value): the runs this caller may chat with (every finished run for the owner, the
    offered ones for visitors) newest first, then the bundled model as it is (the Chat tab)."""
    from finetune import runinfo

    return [(f"{run.name} ({runinfo.read_status(run).get('state', '?')})", run.name)
            for run in chat.offered_runs(owner)] + [BUNDLED_CHOICE]


def picker(choices: list[tuple[str, str]], current: str | None, seen: list | None = None):
    """A dropdown update offering `choices`. With `seen` (the values this page offered before),
    a run that appeared since is picked (a run just trained is what a person wants next);
    otherwise `current` stays while it is offered. Returns the dropdown, and with `seen` also
    the new list of seen values."""
    import gradio as gr

    values = [v for _, v in choices]
    new = [v for v in values if seen is not None and v not in seen]
    value = new[0] if new else current if current in values else (values[0] if values else None)
    dropdown = gr.Dropdown(choices=choices, value=value)
    return dropdown if seen is None else (dropdown, values)


def refresh_triggers(button) -> list:
    """When a tab reads its run list: on page load, when the tab is selected and on its refresh
    `button`, never while the app is built. Call it inside the tab, outside any row."""
    import gradio as gr
    from gradio.context import Context

    triggers = [Context.root_block.load, button.click]
    tab = Context.block  # the gr.Tab app.py opened around the tab's build function
    if isinstance(tab, gr.Tab):
        triggers.append(tab.select)
    return triggers


def user_errors(fn):
    """Show FinetuneError messages to the user as gr.Error, with any secret scrubbed out; the
    app keeps running.

    Works on generator handlers too (streaming), which must stay generator functions for
    Gradio to stream them."""
    import gradio as gr

    from finetune.access import scrub

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except FinetuneError as e:
                raise gr.Error(scrub(str(e)), duration=None) from None

        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FinetuneError as e:
            raise gr.Error(scrub(str(e)), duration=None) from None

    return wrapper
