"""What the tabs share (finetune/ui/common.py) and how the app is built: no run is read while the
app is built, generation widgets come from GenerationSettings, library errors become gr.Error.

    python -m pytest tests/test_ui.py -q
"""

from __future__ import annotations

import importlib.util
import inspect

import gradio as gr
import pytest

from conftest import REPO


def corrupt_run(home):
    """A finished run whose files are all unreadable, as an interrupted copy may leave it."""
    run = home / "runs" / "broken"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{")
    (run / "config.yaml").write_text("model: [unclosed\n")
    (run / "status.json").write_text("{")
    (run / "eval.json").write_text("{}")  # valid JSON, not a report
    return run


def test_building_the_app_reads_no_run(finetune_home, monkeypatch):
    from finetune import paths

    corrupt_run(finetune_home)

    def no_runs_at_build_time():
        raise AssertionError("a run directory was read while the app was built")

    monkeypatch.setattr(paths, "runs_dir", no_runs_at_build_time)
    spec = importlib.util.spec_from_file_location("app_under_test", REPO / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)  # `import app`: builds the module-level demo
    demo = app.build_app()

    # the run pickers are filled when the page loads instead
    from finetune.ui import chat_tab, evaluate_tab

    on_load = {inspect.unwrap(fn.fn) for fn in demo.fns.values()
               if any(t[1] == "load" and t[0] == demo._id for t in fn.targets)}
    assert {chat_tab.refresh_targets, evaluate_tab.refresh_runs} <= on_load


def test_pickers_survive_a_broken_run(finetune_home):
    from finetune import chat
    from finetune.models import BUNDLED_NAME
    from finetune.ui import chat_tab, common, evaluate_tab

    run = corrupt_run(finetune_home).name
    assert common.chat_choices() == [
        ("broken (?)", run), (f"{BUNDLED_NAME} (bundled, not fine-tuned)",
                              chat.MODEL_PREFIX + BUNDLED_NAME)]
    assert common.evaluate_choices() == [("broken · evaluated", run)]
    dropdown, seen, hint = chat_tab.refresh_targets(None, [])
    assert dropdown.value == run and hint == ""
    assert chat.system_for(run) is None  # unreadable: no suggestion, the prompt stays
    assert evaluate_tab.refresh_runs("gone").value == run


def test_a_run_trained_since_the_page_looked_is_picked_first(finetune_home):
    """Issue 18: after training, the Chat tab offered the bundled base model first."""
    from finetune import chat
    from finetune.models import BUNDLED_NAME
    from finetune.ui import chat_tab, evaluate_tab

    bundled = chat.MODEL_PREFIX + BUNDLED_NAME
    dropdown, seen, hint = chat_tab.refresh_targets(bundled, [])  # page load, no run yet
    assert dropdown.value == bundled and "No finished run yet" in hint
    run = corrupt_run(finetune_home).name  # a run finishes while the page is open
    dropdown, seen, hint = chat_tab.refresh_targets(bundled, seen)  # the tab is selected again
    assert dropdown.value == run and hint == ""
    # Once seen, a choice the person makes stays.
    assert chat_tab.refresh_targets(bundled, seen)[0].value == bundled
    dropdown, seen = evaluate_tab.refresh_runs(None, [])
    assert dropdown.value == run and evaluate_tab.refresh_runs(run, seen)[0].value == run


def test_chat_widgets_take_their_defaults_from_generation_settings():
    from finetune.config import GENERATION_FIELDS, GenerationSettings
    from finetune.ui import chat_tab

    with gr.Blocks():
        widgets = chat_tab.generation_widgets()
    defaults = GenerationSettings()
    assert len(widgets) == len(GENERATION_FIELDS)
    for widget, (name, f) in zip(widgets, GENERATION_FIELDS.items()):
        assert widget.label == f.metadata["label"] and widget.info == f.metadata["help"]
        if isinstance(widget, gr.Slider):
            assert widget.value == getattr(defaults, name)
            assert (widget.minimum, widget.maximum) == (f.metadata["min"], f.metadata["max"])
        else:
            assert name == "stop" and widget.value == "\n".join(defaults.stop)
    # the widgets' values, as a handler gets them, are the defaults again
    values = dict(zip(GENERATION_FIELDS, (w.value for w in widgets)))
    assert GenerationSettings.from_dict(values) == defaults


def test_a_streaming_handlers_library_error_becomes_gr_error():
    from finetune.errors import DataError
    from finetune.ui.common import user_errors

    @user_errors
    def handler(n):
        yield n
        raise DataError("row 3 has no answer: add one")

    assert inspect.isgeneratorfunction(handler)  # Gradio streams only generator functions
    stream = handler(1)
    assert next(stream) == 1
    with pytest.raises(gr.Error, match="row 3 has no answer"):
        next(stream)

    @user_errors
    def plain(n):
        raise DataError("bad")

    with pytest.raises(gr.Error, match="bad"):
        plain(1)


def test_every_handler_of_the_app_goes_through_the_guard(finetune_home):
    """One guard on every handler: visitors reach only those marked for them."""
    import app as app_module

    from finetune.ui.guard import VISITORS

    demo = app_module.build_app()
    visitor_names = set()
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or getattr(block_fn, "is_cancel_function", False) or \
                fn.__module__.startswith("gradio."):
            continue
        assert list(inspect.signature(fn).parameters)[0] == "request", block_fn.name
        if getattr(fn, VISITORS, False):
            visitor_names.add(block_fn.name)
    assert visitor_names <= {"show_role", "sign_in", "refresh_targets", "on_target_change",
                             "send", "offer_note", "on_mode", "clear_chat",
                             "repetition_penalty_for",
                             # the blind A/B test: two answers under the chat limits, a vote
                             "blind_ask", "blind_vote_a", "blind_vote_b", "blind_vote_tie"}
    assert {"send", "show_role", "refresh_targets"} <= visitor_names


def test_a_visitors_page_load_shows_no_refusal(finetune_home, monkeypatch):
    """The owner tabs' page-load handlers are refused for a visitor without a toast (a visitor
    saw two 'Only the owner' errors on every visit)."""
    import app as app_module

    from finetune.ui.guard import VISITORS

    monkeypatch.setenv("SPACE_ID", "me/finetune")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "me")
    demo = app_module.build_app()
    checked = 0
    for block_fn in demo.fns.values():
        fn, events = block_fn.fn, {e for _, e in block_fn.targets or []}
        if fn is None or getattr(fn, VISITORS, False) or fn.__module__.startswith("gradio.") \
                or (events and "load" not in events):
            continue
        with pytest.raises(gr.Error) as refused:
            fn(None, *[None] * len(block_fn.inputs))
        assert "Only the owner" in refused.value.message and not refused.value.visible
        checked += 1
    assert checked >= 3  # the Data tab's sample, the Train tab's runs, the pickers


def test_the_live_view_says_the_latest_and_the_best_validation_answers():
    from finetune.ui.train_tab import score_words

    curves = {"score": [(10, 0.5, 16), (20, 0.875, 16), (30, 0.8125, 16)],
              "score_metric": "exact_match"}
    assert score_words(curves) == ("validation answers: 13 of 16 right at step 30 (best 14 of 16 "
                                   "right at step 20)")
    curves = {"score": [(10, 0.41, 8)], "score_metric": "rouge_l"}
    assert score_words(curves) == ("validation answers: ROUGE-L 0.41 at step 10 (best ROUGE-L "
                                   "0.41 at step 10)")
    assert score_words({"score": [], "score_metric": None}) == ""


def test_several_gpu_settings_are_offered_only_with_more_than_one_gpu(monkeypatch):
    from finetune import config, hardware
    from finetune.ui import train_tab

    with gr.Blocks() as demo:
        train_tab.build_train_tab(demo, gr.State(), gr.State())
    hidden = [b for b in demo.blocks.values() if isinstance(b, gr.Column) and not b.visible]
    labels = {b.label for col in hidden for b in demo.blocks.values()
              if getattr(b, "label", None) and _inside(demo, b, col)}
    assert {"num processes", "strategy"} <= labels  # built from the config, hidden at first
    assert not {"num machines", "main process ip"} & {getattr(b, "label", None)
                                                      for b in demo.blocks.values()}
    on_load = {inspect.unwrap(fn.fn) for fn in demo.fns.values()
               if any(t[1] == "load" for t in fn.targets)}
    assert train_tab.offer_several_gpus in on_load
    for gpus, shown in ((0, False), (1, False), (2, True)):
        monkeypatch.setattr(hardware, "gpu_count", lambda n=gpus: n)
        assert train_tab.offer_several_gpus()["visible"] is shown
    assert config.FIELDS["strategy"].metadata["help"] in {
        b.info for b in demo.blocks.values() if getattr(b, "label", None) == "strategy"}


def _inside(demo, block, parent) -> bool:
    """Whether block sits (at any depth) inside parent in the page's layout."""
    node = block
    while node is not None:
        if node is parent:
            return True
        node = getattr(node, "parent", None)
    return False
