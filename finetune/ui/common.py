"""Small helpers shared by the tabs: run choices and turning library errors into gr.Error."""

from __future__ import annotations

import functools

from finetune.errors import FinetuneError


def run_choices() -> list[tuple[str, str]]:
    """(label, path) for every run, newest first."""
    from finetune import jobs, runinfo

    out = []
    for run_dir in runinfo.list_runs():
        state = jobs.status(run_dir).get("state", "?")
        out.append((f"{run_dir.name} ({state})", str(run_dir)))
    return out


def user_errors(fn):
    """Show FinetuneError messages to the user as gr.Error; the app keeps running."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except FinetuneError as e:
            raise gr.Error(str(e), duration=None) from None

    return wrapper
