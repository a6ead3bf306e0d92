"""Streaming chat on the tiny model: pieces, stop strings, the model cache, the Chat tab handlers.

    python -m pytest tests/test_chat.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config import GenerationSettings
from test_evaluate import make_run, plain_cpu  # noqa: F401 - plain_cpu: autouse fixture

PROMPT = "Spoke with Clara Ivanova. Virtucon, Halifax."


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("chatrun"), tiny_model, rows=2)


@pytest.fixture(autouse=True)
def cold_cache(monkeypatch):
    from finetune import chat

    monkeypatch.setattr(chat, "CACHE", chat.ModelCache(size=2))  # each test starts cold


def widget_values(**changes) -> list:
    """The Chat tab's generation widget values, in field order: the defaults with `changes`."""
    from finetune.config import GENERATION_FIELDS

    values = GenerationSettings(**changes).to_dict()
    values["stop"] = "\n".join(values["stop"])
    return [values[n] for n in GENERATION_FIELDS]


def test_stream_yields_pieces_that_join_to_the_full_answer(run):
    from finetune import chat, generation

    target = chat.resolve_target(run)
    assert target.kind == "tuned"
    history = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]  # Gradio 6 blocks
    pieces = list(chat.stream_reply(target, history,
                                    settings=GenerationSettings(max_new_tokens=40)))
    assert len(pieces) >= 3 and all(pieces)

    model, tok = chat.CACHE.get(target)
    full = generation.generate_batch(model, tok, [[{"role": "user", "content": PROMPT}]], 40)[0]
    assert "".join(pieces).strip() == full and full

    # a stop string ends the answer before it, and is not shown
    stop = full[12:15]
    cut = list(chat.stream_reply(target, history,
                                 settings=GenerationSettings(max_new_tokens=40, stop=[stop])))
    assert "".join(cut) == "".join(pieces)[:"".join(pieces).index(stop)]


def test_each_token_shows_at_once_and_a_split_character_when_whole(tiny_model):
    import torch
    from transformers import AutoTokenizer

    from finetune import generation

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "Café, naïve 日本 ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # some character is split over tokens:
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(1, len(ids)))
    streamer = generation._token_streamer()(tok, skip_prompt=True, skip_special_tokens=True)
    streamer.put(torch.tensor([ids[:2]]))  # the prompt: not shown
    shown = []
    for i in ids:  # what the Chat window gets after each generated token
        streamer.put(torch.tensor([i]))
        shown.append(streamer.text_queue.get_nowait())
    streamer.end()
    shown.append(streamer.text_queue.get_nowait())
    assert shown[0] == tok.decode(ids[:1]) != ""  # the first token, before the second comes
    assert "".join(shown) == text
    assert not any("\ufffd" in s for s in shown)  # half a character is never shown
    assert "" in shown[:-1]  # ...it waits for its other bytes


def test_cache_keeps_base_and_tuned_and_cli_answers(run, tiny_model, capsys):
    from finetune import chat, cli

    tuned, base = chat.resolve_target(run), chat.resolve_target(run, base=True)
    assert base.kind == "base" and base.path == str(tiny_model.resolve())
    m1, _ = chat.CACHE.get(tuned)
    m2, _ = chat.CACHE.get(base)
    assert chat.CACHE.get(tuned)[0] is m1 and chat.CACHE.get(base)[0] is m2  # no reload
    assert m1 is not m2 and len(chat.CACHE.keys()) == 2

    assert cli.main(["chat", str(run), "--prompt", PROMPT, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()


def test_chat_tab_side_by_side_streams_both(run, monkeypatch):
    from finetune import chat
    from finetune.ui import chat_tab

    monkeypatch.setenv("FINETUNE_HOME", str(run.parent.parent))  # the page names runs
    monkeypatch.setattr(chat, "SHOW_EVERY_S", 0.0)  # every piece shown: the tiny model is quick
    import copy

    history = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]
    steps = [copy.deepcopy(s) for s in chat_tab.send(
        PROMPT, [], [], history, run.name, chat.BOTH, "", *widget_values(max_new_tokens=24))]
    steps = [(box, left, right) for box, _, left, right in steps]
    box, left, right = steps[-1]
    assert box == ""
    assert [m["role"] for m in left] == ["user", "assistant"]
    assert [m["role"] for m in right] == ["user", "assistant", "user", "assistant"]
    assert right[1]["content"] == "hello" and left[0]["content"] == PROMPT
    assert left[-1]["content"] and right[-1]["content"]
    # both stream: the left answer grows over several steps before the right one starts
    lefts = [len(s[1][-1]["content"]) for s in steps if s[1][-1]["role"] == "assistant"]
    rights = [len(s[2][-1]["content"]) for s in steps if len(s[2]) == 4]
    assert len(set(lefts)) >= 3 and len(set(rights)) >= 3


def test_chat_tab_errors_are_messages(tiny_model, tmp_path, finetune_home):
    import gradio as gr

    from finetune import chat
    from finetune.config import RunConfig
    from finetune.models import BUNDLED_NAME
    from finetune.ui import chat_tab, common

    busy = finetune_home / "runs" / "busy"
    busy.mkdir(parents=True)
    RunConfig(model=str(tiny_model)).save(busy / "config.yaml")
    gen = widget_values(max_new_tokens=8)
    with pytest.raises(gr.Error, match="no trained model yet"):
        list(chat_tab.send("hi", [], [], [], "busy", chat.TUNED, "", *gen))
    for path in (str(busy), "../runs/busy", "/etc", ".."):  # the page names runs, never paths
        with pytest.raises(gr.Error, match="is not a run name"):
            list(chat_tab.send("hi", [], [], [], path, chat.TUNED, "", *gen))
    with pytest.raises(gr.Error, match="pick a run"):
        list(chat_tab.send("hi", [], [], [], chat.MODEL_PREFIX + "x", chat.BOTH, "", *gen))
    with pytest.raises(gr.Error, match="Pick a run or a model"):
        list(chat_tab.send("hi", [], [], [], None, chat.TUNED, "", *gen))
    with pytest.raises(gr.Error, match="max_new_tokens: 0 is outside 1..2048"):
        list(chat_tab.send("hi", [], [], [], "busy", chat.TUNED, "",
                           *widget_values(max_new_tokens=0)))
    # only finished runs are offered, and the bundled model always is
    choices = common.chat_choices()
    assert [v for _, v in choices] == [chat.MODEL_PREFIX + BUNDLED_NAME]


def test_bundled_model_answers_through_its_chat_template(bundled_model):
    from finetune import chat

    answer = "".join(chat.answer_once("SmolLM2-135M-Instruct", "What is the capital of France?",
                                      settings=GenerationSettings(max_new_tokens=12)))
    assert "Paris" in answer


def test_picking_a_run_suggests_the_system_prompt_it_trained_with(run, monkeypatch):
    from finetune.ui import chat_tab

    monkeypatch.setenv("FINETUNE_HOME", str(run.parent.parent))
    assert chat_tab.on_target_change(run.name).startswith("Extract the contact as JSON")


def test_a_model_as_it_is_gets_a_repetition_penalty_and_a_tuned_one_none():
    from finetune import chat
    from finetune.config import GenerationSettings
    from finetune.models import BUNDLED_NAME

    plain = chat.MODEL_PREFIX + BUNDLED_NAME
    assert chat.repetition_penalty_for(plain) == chat.BASE_REPETITION_PENALTY > 1.0
    assert chat.repetition_penalty_for("runs/x", chat.BASE) == chat.BASE_REPETITION_PENALTY
    for mode in (chat.TUNED, chat.BOTH):  # the tuned model answers as evaluation scored it
        assert chat.repetition_penalty_for("runs/x", mode) == \
            GenerationSettings().repetition_penalty == 1.0


def test_a_qlora_run_answers_on_its_4bit_base_with_the_adapter_beside_it(tiny_model, tmp_path):
    from finetune import chat, generation

    run = make_run(tmp_path, tiny_model, rows=2, method="qlora")
    assert chat.resolve_target(run, base=True).four_bit
    target = chat.resolve_target(run)
    model, tokenizer = chat.CACHE.get(target)
    layers = {type(m).__module__ + "." + type(m).__name__ for m in model.modules()}
    assert "bitsandbytes.nn.modules.Linear4bit" in layers  # the base stays 4-bit
    assert hasattr(model, "peft_config")  # the adapter is not merged into it
    answer = "".join(chat.stream_reply(target, [{"role": "user", "content": PROMPT}],
                                       settings=GenerationSettings(max_new_tokens=4)))
    assert isinstance(answer, str)
    # evaluation scores the loss on the same unmerged 4-bit model
    nll, tokens = generation.completion_nll(model, tokenizer, [([{"role": "user",
                                                                  "content": PROMPT}], "Clara")])
    assert tokens > 0 and nll / tokens > 0


def test_chat_models_leave_the_gpu_before_a_training_starts_there(run, tiny_model, tmp_path,
                                                                  monkeypatch):
    from finetune import chat, hardware, jobs

    chat.CACHE.get(chat.resolve_target(run))
    assert chat.CACHE.keys()
    jobs.free_the_gpu()  # on a CPU chat keeps its models while a run trains
    assert chat.CACHE.keys()

    monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware(
        "cuda", "Tesla T4", 15.6, 8, capability=(7, 5)))
    spawned = []

    class Process:  # the training process is not started: only the order matters here
        pid = 4242

        def __init__(self, argv, **kw):
            spawned.append(list(chat.CACHE.keys()))

    monkeypatch.setattr(jobs.subprocess, "Popen", Process)
    jobs.start(make_run(tmp_path, tiny_model, rows=2))
    assert spawned == [[]]  # the cache was empty when the training started
    assert chat.CACHE.keys() == []


def test_chat_on_a_busy_gpu_says_which_run_trains_and_what_it_needs(run, monkeypatch):
    import torch

    from finetune import chat, generation, hardware, jobs
    from finetune.errors import DeviceMemoryError

    monkeypatch.setattr(jobs, "training_run_name", lambda: "demo-lora")
    target = chat.resolve_target(run)
    monkeypatch.setattr(hardware, "inference_settings", lambda: ("cuda", "fp16"))
    monkeypatch.setattr(hardware, "free_memory_gb", lambda: 0.3)
    with pytest.raises(DeviceMemoryError, match=r"GPU is busy training run demo-lora: 0.3 GB "
                                                r"free, tiny-run \(tuned\) needs ~0.\d GB"):
        chat.CACHE.get(target)

    monkeypatch.setattr(hardware, "inference_settings", lambda: ("cpu", "fp32"))

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, as generation.stream is

    monkeypatch.setattr(generation, "stream", out_of_memory)
    with pytest.raises(DeviceMemoryError) as e:
        list(chat.stream_reply(target, [{"role": "user", "content": PROMPT}]))
    assert "This answer ran out of memory. A training (run demo-lora) is using the GPU" in \
        str(e.value) and "fewer new tokens" in str(e.value)


def test_a_fast_stream_redraws_the_window_a_few_times_and_ends_with_the_whole_answer(monkeypatch):
    """A page redraws the whole message per update: a stream of many tiny pieces must not become
    as many redraws (a busy page then ignores Stop), and the last update is the full answer."""
    from finetune import chat

    pieces = [f"w{i} " for i in range(400)]
    monkeypatch.setattr(chat, "stream_reply", lambda *a, **k: iter(pieces))
    shown = list(chat.chat_turn(None, [], "hi"))
    assert shown[0] == [{"role": "user", "content": "hi"}]  # the message shows at once
    assert shown[-1][-1] == {"role": "assistant", "content": "".join(pieces)}
    assert len(shown) < 20, len(shown)
