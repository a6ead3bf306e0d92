"""The Chat tab: talk to a run's tuned model, its base model, or both side by side (streaming).

    python app.py      # then open the Chat tab

Handlers are thin: `finetune.chat` picks what answers and streams it; library errors become
gr.Error (`user_errors`), the app keeps running. The generation widgets are built from
`GenerationSettings`' metadata, so their defaults and ranges are the CLI's.
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from finetune import chat, runinfo, votes
from finetune.config import GENERATION_FIELDS, GenerationSettings
from finetune.models import BUNDLED_NAME
from finetune.ui.common import (BUNDLED_CHOICE, chat_choices, picker, refresh_triggers,
                                user_errors)
from finetune.ui.guard import for_visitors

MODES = [("Tuned", chat.TUNED), ("Base", chat.BASE), ("Side by side", chat.BOTH)]
BLIND_ASK = "Which answer is better? One of them is the base model's, the other the tuned one's."
BLIND_THANKS = ("Vote saved with the run (the Evaluate tab tallies the votes). Type another "
                "message for a new pair.")
NO_RUN_HINT = ("No finished run yet: train one in the **Train** tab. Meanwhile you can chat with "
               f"the bundled {BUNDLED_NAME} as it is.")


@for_visitors
def refresh_targets(current: str | None, seen: list | None, caller=None):
    """The dropdown with what this caller may chat with now (a run trained since the page last
    looked is picked), the values seen, and the hint when there is no run."""
    choices = chat_choices(owner=_owner(caller))
    dropdown, seen = picker(choices, current, seen or [])
    return dropdown, seen, "" if len(choices) > 1 else NO_RUN_HINT


@for_visitors
def on_target_change(choice: str | None, caller=None):
    """Suggest the run's own system prompt (the model answers best with it)."""
    system = chat.system_for(choice, owner=_owner(caller))
    return gr.skip() if system is None else system


@for_visitors
@user_errors
def send(message: str, single: list | None, left: list | None, right: list | None,
         choice: str | None, mode: str, system: str, *generation,
         caller=None) -> Iterator[tuple[Any, ...]]:
    """One Send button for both layouts; streams (textbox, chat, left, right). Side by side
    sends the message to the base model (left) and the tuned one (right)."""
    if not (message or "").strip():
        gr.Warning("Type a message first.")
        return
    settings = GenerationSettings.from_dict(dict(zip(GENERATION_FIELDS, generation)),
                                            source="Generation settings")
    rules = (caller.who, caller.gate, caller.client) if caller else (None, None, "")
    for shown in chat.converse(choice, mode, message, (single, left, right), system, settings,
                               *rules):
        yield "", *(gr.skip() if window is None else window for window in shown)


@user_errors
def offer(choice: str | None, offered: bool):
    """The owner offers the picked run to visitors, or withdraws it."""
    chat.set_offered(runinfo.named_run(choice), offered)
    return offer_note(choice)


@for_visitors
def offer_note(choice: str | None, caller=None):
    """Whether visitors may chat with the picked run (the checkbox), for the owner only."""
    if not _owner(caller) or not choice or choice.startswith(chat.MODEL_PREFIX):
        return gr.update(visible=False, value=False)
    offered = runinfo.named_run(choice) in chat.offered_runs(owner=False)
    return gr.update(visible=True, value=offered)


def _owner(caller) -> bool:
    return caller is None or caller.who.owner


@for_visitors
def on_mode(mode: str):
    both = mode == chat.BOTH
    return gr.update(visible=not both), gr.update(visible=both)


@for_visitors
def clear_chat():
    return "", [], [], []


@for_visitors
@user_errors
def blind_ask(message: str, choice: str | None, system: str, *generation, caller=None):
    """The blind test: both answers of the picked run, shown as A and B in a hidden order (the
    pair stays in the page's server-side state until it gets its vote)."""
    settings = GenerationSettings.from_dict(dict(zip(GENERATION_FIELDS, generation)),
                                            source="Generation settings")
    rules = (caller.who, caller.gate, caller.client) if caller else (None, None, "")
    pair = votes.ask(choice, message, system, settings, *rules)
    first, second = votes.shown(pair)
    return pair, first, second, BLIND_ASK


def blind_vote(pick: str):
    """The handler of one vote button: saves the vote with the run; the pair is spent."""

    @for_visitors
    @user_errors
    def vote(pair: dict | None, caller=None):
        votes.record(pair, pick, by="owner" if _owner(caller) else "visitor")
        return None, BLIND_THANKS

    vote.__name__ = f"blind_vote_{pick.lower()}"
    return vote


def generation_widgets() -> list[gr.components.Component]:
    """One widget per GenerationSettings field, in field order, from its metadata: sliders in a
    row, then the stop strings box."""
    defaults = GenerationSettings()
    widgets = {}
    with gr.Row():
        for name, f in GENERATION_FIELDS.items():
            meta = f.metadata
            if meta["type"] is not list:
                widgets[name] = gr.Slider(meta["min"], meta["max"], value=getattr(defaults, name),
                                          step=meta["step"], label=meta["label"],
                                          info=meta["help"])
    widgets["stop"] = gr.Textbox(
        value="\n".join(s.replace("\n", "\\n") for s in defaults.stop), lines=2,
        label=GENERATION_FIELDS["stop"].metadata["label"], placeholder="one per line, e.g. ###",
        info=GENERATION_FIELDS["stop"].metadata["help"])
    return [widgets[name] for name in GENERATION_FIELDS]


def build_chat_tab() -> None:
    gr.Markdown("Talk to your fine-tuned model. **Side by side** sends each message to the base "
                "model (left) and the tuned one (right), so you can see what training changed.")
    hint = gr.Markdown("")
    with gr.Row():
        target = gr.Dropdown(choices=[BUNDLED_CHOICE], value=BUNDLED_CHOICE[1],
                             label="Run or model", scale=4,
                             info="Finished runs, newest first.")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=100)
        mode = gr.Radio(MODES, value=chat.TUNED, label="Answer with", scale=3,
                        info="Tuned: the run's model with its adapter merged. Base: the model it "
                        "started from.")
    offered = gr.Checkbox(label="Visitors may chat with this run", visible=False,
                          info="Visitors of the public link see the runs you offer, or when you "
                          "offer none, the newest completed run.")
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
                            info="Filled in with the one the run trained with; the model answers "
                            "best with the same one.")
        generation = generation_widgets()
    with gr.Accordion("Blind test: which answer is better?", open=False):
        gr.Markdown("Ask the picked run something: its base and tuned models both answer, shown "
                    "as **A** and **B** in an order you cannot see. Pick the better one (or a "
                    "tie); the votes are saved with the run and tallied in the Evaluate tab.")
        with gr.Row():
            blind_message = gr.Textbox(placeholder="A message for both models", show_label=False,
                                       scale=6)
            blind_btn = gr.Button("Get two answers", scale=1, min_width=120)
        with gr.Row():
            answer_a = gr.Textbox(label="Answer A", lines=6, interactive=False)
            answer_b = gr.Textbox(label="Answer B", lines=6, interactive=False)
        with gr.Row():
            vote_buttons = {pick: gr.Button(label, min_width=80) for pick, label in
                            (("A", "A is better"), ("tie", "Tie"), ("B", "B is better"))}
        blind_note = gr.Markdown("")
    gr.Markdown("**Next:** happy with the answers? The tuned weights are in the run directory "
                "(`runs/<run>/adapter/`, loadable with PEFT); otherwise train again with more or "
                "cleaner data.")

    inputs = [message, single, left, right, target, mode, system, *generation]
    outputs = [message, single, left, right]
    ev1 = message.submit(send, inputs, outputs)
    ev2 = send_btn.click(send, inputs, outputs)
    stop_btn.click(None, None, None, cancels=[ev1, ev2])
    clear.click(clear_chat, None, outputs, cancels=[ev1, ev2])
    mode.change(on_mode, mode, [single, pair])
    target.change(on_target_change, target, system)  # also when a refresh picks the first run
    target.change(offer_note, target, offered)
    offered.input(offer, [target, offered], offered)
    # A model as it is loops less with a repetition penalty; a tuned one answers as it trained.
    penalty = generation[list(GENERATION_FIELDS).index("repetition_penalty")]
    gr.on([target.change, mode.change], for_visitors(chat.repetition_penalty_for), [target, mode],
          penalty)
    pair = gr.State(None)  # the blind pair awaiting its vote: which is which stays here
    blind_inputs = [blind_message, target, system, *generation]
    gr.on([blind_btn.click, blind_message.submit], blind_ask, blind_inputs,
          [pair, answer_a, answer_b, blind_note], api_name="blind_ask")
    for pick, button in vote_buttons.items():
        button.click(blind_vote(pick), pair, [pair, blind_note],
                     api_name=f"blind_vote_{pick.lower()}")
    seen = gr.State([])  # the choices this page offered, so a new run is picked when it appears
    gr.on(refresh_triggers(refresh), refresh_targets, [target, seen], [target, seen, hint]).then(
        for_visitors(chat.repetition_penalty_for), [target, mode], penalty)
