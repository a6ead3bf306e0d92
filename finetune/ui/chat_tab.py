"""The Chat tab: talk to a run's tuned model, its base model, or both side by side (streaming).

Handlers are thin: they turn the widgets into a `finetune.chat.Target` and stream
`finetune.chat.stream_reply`; library errors become gr.Error, the app keeps running.
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from finetune.errors import FinetuneError

BUNDLED = "SmolLM2-135M-Instruct"
PLAIN_PREFIX = "model:"  # dropdown values that are a model, not a run
TUNED, BASE, BOTH = "Tuned", "Base", "Side by side"
NO_RUN_HINT = ("No finished run yet: train one in the **Train** tab. Meanwhile you can chat with "
               f"the bundled {BUNDLED} as it is.")


def target_choices() -> list[tuple[str, str]]:
    """(label, value): finished runs newest first, then the bundled model as it is."""
    from finetune import chat, runinfo

    out = []
    for run in chat.finished_runs():
        state = runinfo.read_status(run).get("state", "?")
        out.append((f"{run.name} ({state})", str(run)))
    out.append((f"{BUNDLED} (bundled, not fine-tuned)", PLAIN_PREFIX + BUNDLED))
    return out


def refresh_targets(current: str | None):
    choices = target_choices()
    values = [v for _, v in choices]
    value = current if current in values else values[0]
    hint = "" if len(choices) > 1 else NO_RUN_HINT
    return gr.Dropdown(choices=choices, value=value), hint


def _system_for(value: str | None) -> str | None:
    """The system prompt the run trained with; None for a plain model or an unreadable run."""
    from finetune import chat

    if not value or value.startswith(PLAIN_PREFIX):
        return None
    try:
        return chat.suggested_system(value)
    except FinetuneError:
        return None


def on_target_change(value: str | None):
    """Suggest the run's own system prompt (the model answers best with it)."""
    system = _system_for(value)
    return gr.skip() if system is None else system


def _targets(value: str | None, mode: str):
    """The chat.Target(s) the widgets ask for: one, or (base, tuned) side by side."""
    from finetune import chat

    if not value:
        raise gr.Error("Pick a run or a model first.")
    if value.startswith(PLAIN_PREFIX):
        if mode == BOTH:
            raise gr.Error("Side by side compares a run's base and tuned models: pick a run in "
                           "the list (train one in the Train tab if there is none).")
        return chat.resolve_target(value[len(PLAIN_PREFIX):])
    if mode == BOTH:
        return chat.resolve_target(value, base=True), chat.resolve_target(value)
    return chat.resolve_target(value, base=(mode == BASE))


def _plain(history: list | None) -> list[dict]:
    """Gradio 6 sends content as lists of blocks; keep text messages as plain strings."""
    from finetune.generation import to_messages

    return [m for m in to_messages(history or []) if m["role"] in ("user", "assistant")]


def _stream_into(history: list[dict], target, settings: dict) -> Iterator[list[dict]]:
    from finetune import chat

    history.append({"role": "assistant", "content": ""})
    text = ""
    for piece in chat.stream_reply(target, history[:-1], **settings):
        text += piece
        history[-1] = {"role": "assistant", "content": text}
        yield history
    if not text.strip():
        history[-1] = {"role": "assistant", "content": text + "(empty answer)"}
        yield history


def _settings(system: str, temperature: float, top_p: float, max_new_tokens: float,
              stops: str) -> dict:
    from finetune import chat

    return {"system": system or "", "temperature": float(temperature or 0.0),
            "top_p": float(top_p or 1.0), "max_new_tokens": int(max_new_tokens or 256),
            "stop": chat.parse_stops(stops)}


def respond(message: str, history: list | None, value: str | None, mode: str, system: str,
            temperature: float, top_p: float, max_new_tokens: float,
            stops: str) -> Iterator[tuple[Any, Any]]:
    """Stream one answer into the single chatbot: yields (textbox, chatbot)."""
    if not (message or "").strip():
        gr.Warning("Type a message first.")
        return
    try:
        target = _targets(value, TUNED if mode == BOTH else mode)
        history = _plain(history) + [{"role": "user", "content": message}]
        yield "", history
        for h in _stream_into(history, target, _settings(system, temperature, top_p,
                                                         max_new_tokens, stops)):
            yield "", h
    except FinetuneError as e:
        raise gr.Error(str(e), duration=None) from None


def respond_side_by_side(message: str, left: list | None, right: list | None, value: str | None,
                         system: str, temperature: float, top_p: float, max_new_tokens: float,
                         stops: str) -> Iterator[tuple[Any, Any, Any]]:
    """Send the same message to base (left) and tuned (right); stream both, one after the other
    (on a CPU two at once would each run at half speed). Yields (textbox, left, right)."""
    if not (message or "").strip():
        gr.Warning("Type a message first.")
        return
    try:
        base, tuned = _targets(value, BOTH)
        settings = _settings(system, temperature, top_p, max_new_tokens, stops)
        left = _plain(left) + [{"role": "user", "content": message}]
        right = _plain(right) + [{"role": "user", "content": message}]
        yield "", left, right
        for h in _stream_into(left, base, settings):
            yield "", h, right
        for h in _stream_into(right, tuned, settings):
            yield "", left, h
    except FinetuneError as e:
        raise gr.Error(str(e), duration=None) from None


def send(message, single, left, right, value, mode, system, temperature, top_p, max_new_tokens,
         stops):
    """One Send button for both layouts: routes to respond / respond_side_by_side."""
    if mode == BOTH:
        for box, lh, rh in respond_side_by_side(message, left, right, value, system, temperature,
                                                top_p, max_new_tokens, stops):
            yield box, gr.skip(), lh, rh
    else:
        for box, h in respond(message, single, value, mode, system, temperature, top_p,
                              max_new_tokens, stops):
            yield box, h, gr.skip(), gr.skip()


def on_mode(mode: str):
    both = mode == BOTH
    return gr.update(visible=not both), gr.update(visible=both)


def clear_chat():
    return "", [], [], []


def build_chat_tab() -> None:
    from gradio.context import Context

    tab = Context.block  # the gr.Tab app.py opened around us, to refresh when it is selected
    choices = target_choices()
    gr.Markdown("Talk to your fine-tuned model. **Side by side** sends each message to the base "
                "model (left) and the tuned one (right), so you can see what training changed.")
    hint = gr.Markdown(NO_RUN_HINT if len(choices) == 1 else "")
    with gr.Row():
        target = gr.Dropdown(choices=choices, value=choices[0][1], label="Run or model", scale=4,
                             info="Finished runs, newest first.")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=100)
        mode = gr.Radio([TUNED, BASE, BOTH], value=TUNED, label="Answer with", scale=3,
                        info="Tuned: the run's model with its adapter merged. Base: the model it "
                        "started from.")
    single = gr.Chatbot(label="Chat", height=440, buttons=["copy"])
    with gr.Row(visible=False) as pair:
        left = gr.Chatbot(label="Base model", height=440, buttons=["copy"])
        right = gr.Chatbot(label="Tuned model", height=440, buttons=["copy"])
    with gr.Row():
        message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False,
                             scale=6, autofocus=False)
        send_btn = gr.Button("Send", variant="primary", scale=1, min_width=80)
        stop_btn = gr.Button("Stop", scale=1, min_width=80)
        clear = gr.Button("Clear", scale=1, min_width=80)
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", lines=2,
                            value=_system_for(choices[0][1]) or "",
                            info="Filled in with the one the run trained with; the model answers "
                            "best with the same one.")
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature",
                                    info="0: always the most likely next word (repeatable). "
                                    "Higher: more varied.")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p",
                              info="With temperature > 0: sample only from the most likely words "
                              "that make up this share.")
            max_new = gr.Slider(16, 2048, value=256, step=16, label="Max new tokens",
                                info="The answer stops here at the latest.")
        stops = gr.Textbox(label="Stop strings", lines=2, placeholder="one per line, e.g. ###",
                           info="The answer ends before the first of these (write \\n for a "
                           "line break).")
    gr.Markdown("**Next:** happy with the answers? The tuned weights are in the run directory "
                "(`runs/<run>/adapter/`, loadable with PEFT); otherwise train again with more or "
                "cleaner data.")

    inputs = [message, single, left, right, target, mode, system, temperature, top_p, max_new,
              stops]
    outputs = [message, single, left, right]
    ev1 = message.submit(send, inputs, outputs)
    ev2 = send_btn.click(send, inputs, outputs)
    stop_btn.click(None, None, None, cancels=[ev1, ev2])
    clear.click(clear_chat, None, outputs, cancels=[ev1, ev2])
    mode.change(on_mode, mode, [single, pair])
    target.change(on_target_change, target, system)
    refresh.click(refresh_targets, target, [target, hint])
    if isinstance(tab, gr.Tab):
        tab.select(refresh_targets, target, [target, hint])
