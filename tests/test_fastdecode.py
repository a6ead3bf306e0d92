"""Compiled chat decoding on the CPU (`finetune.fastdecode`): the same answers as eager decoding,
an answer too long for the compiled cache, a compile that fails. Its speed is `bench chat`'s.

    python -m pytest tests/test_fastdecode.py -q

conftest turns compiled decoding off for the other tests (FINETUNE_DECODE=eager); these turn it
on for the tiny model (MIN_PARAMS 0), which compiles in ~20 s on 2 cores.
"""

from __future__ import annotations

import pytest

from finetune.config import GenerationSettings
from test_evaluate import plain_cpu  # noqa: F401 - plain_cpu: autouse fixture

PROMPTS = ["Spoke with Clara Ivanova. Virtucon, Halifax.", "Write a haiku about rain.",
           "What is two plus two?"]


@pytest.fixture
def compiled(monkeypatch):
    from finetune import fastdecode

    monkeypatch.delenv("FINETUNE_DECODE", raising=False)
    monkeypatch.setattr(fastdecode, "MIN_PARAMS", 0)
    made = []
    real = fastdecode._static_cache
    monkeypatch.setattr(fastdecode, "_static_cache",
                        lambda model, size: made.append(size) or real(model, size))
    return made


def _answers(target, cache, settings) -> list[str]:
    from finetune import chat

    return ["".join(chat.stream_reply(target, [{"role": "user", "content": p}],
                                      settings=settings, cache=cache)) for p in PROMPTS]


def test_compiled_decoding_answers_as_eager_decoding(tiny_model, compiled, monkeypatch):
    from finetune import chat, fastdecode

    target = chat.resolve_target(str(tiny_model))
    settings = GenerationSettings(max_new_tokens=24)
    monkeypatch.setenv("FINETUNE_DECODE", "eager")
    eager = _answers(target, chat.ModelCache(), settings)
    monkeypatch.delenv("FINETUNE_DECODE")

    cache, lines = chat.ModelCache(), []
    model, _ = cache.get(target, log=lines.append)
    assert _answers(target, cache, settings) == eager  # eagerly, then the size compiles
    state = fastdecode.wait(model)
    assert state is not None and not state.failed and list(state.ready) == [512]
    assert state.compiled_answers == 0
    assert _answers(target, cache, settings) == eager
    assert state.compiled_answers == len(PROMPTS)  # each answer decoded compiled
    assert hasattr(model, "_compiled_call")  # through transformers' torch.compile'd forward

    # an answer that does not fit the compiled cache decodes eagerly, and its size compiles in
    # the background afterwards for the next one
    long = GenerationSettings(max_new_tokens=600)
    first = "".join(chat.stream_reply(target, [{"role": "user", "content": PROMPTS[0]}],
                                      settings=long, cache=cache))
    assert first
    assert list(fastdecode.wait(model).ready) == [512, 1024]
    assert compiled.count(1024) == 1 and state.compiled_answers == len(PROMPTS)  # answered eagerly


def test_a_compile_that_fails_says_why_and_answers_eagerly(tiny_model, compiled, monkeypatch):
    from transformers import CompileConfig

    from finetune import chat, fastdecode

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found (test)")

    def config():
        cfg = CompileConfig(backend=broken)
        cfg._compile_all_devices = True
        return cfg

    monkeypatch.setattr(fastdecode, "_compile_config", config)
    target = chat.resolve_target(str(tiny_model))
    cache, lines = chat.ModelCache(), []
    model, _ = cache.get(target, log=lines.append)
    assert all(_answers(target, cache, GenerationSettings(max_new_tokens=8)))
    state = fastdecode.wait(model)
    assert "no C++ compiler found (test)" in state.failed
    assert any("Compiled decoding is off for this model" in line and
               "no C++ compiler found" in line for line in lines)
    answers = _answers(target, cache, GenerationSettings(max_new_tokens=8))
    assert all(answers) and state.compiled_answers == 0  # answered, eagerly


def test_off_where_not_measured(tiny_model, monkeypatch):
    import torch

    from finetune import fastdecode, models

    model = models.load_model(models.resolve(str(tiny_model)), dtype="fp32", device="cpu")
    monkeypatch.setenv("FINETUNE_DECODE", "eager")
    assert fastdecode.off_reason(model) == "FINETUNE_DECODE=eager"
    monkeypatch.delenv("FINETUNE_DECODE")
    assert fastdecode.off_reason(model).startswith("under 50M parameters")
    assert fastdecode.prepare(model) is None and not hasattr(model, "_finetune_decode")
    monkeypatch.setattr(fastdecode, "MIN_PARAMS", 0)
    assert fastdecode.off_reason(model.to(dtype=torch.bfloat16)).startswith("not measured in")
