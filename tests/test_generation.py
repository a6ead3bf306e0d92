"""Generation settings (one dataclass for the chat CLI, the Chat tab and evaluation) and the
generation config they become.

    python -m pytest tests/test_generation.py -q
"""

from __future__ import annotations

import pytest

from finetune.config import GENERATION_FIELDS, GenerationSettings
from finetune.errors import ConfigError


def test_defaults_are_valid_and_greedy():
    s = GenerationSettings().validate()
    assert (s.max_new_tokens, s.temperature, s.top_p, s.repetition_penalty, s.stop) == \
        (256, 0.0, 1.0, 1.0, [])


def test_round_trip_and_text_from_flags_or_widgets():
    s = GenerationSettings(max_new_tokens=40, temperature=0.7, top_p=0.9, repetition_penalty=1.2,
                           stop=["###", "\n"])
    assert GenerationSettings.from_dict(s.to_dict()) == s
    # CLI flags and widgets give text and floats; a textbox gives stop strings one per line
    # ('\n' written out is a newline, blank lines are left out)
    assert GenerationSettings.from_dict({"max_new_tokens": "40", "temperature": "0.7",
                                         "top_p": 0.9, "repetition_penalty": 1.2,
                                         "stop": "###\n\n\\n"}) == s
    assert GenerationSettings.from_dict({"max_new_tokens": 40.0}).max_new_tokens == 40


def test_bad_values_and_unknown_keys_are_named():
    with pytest.raises(ConfigError) as e:
        GenerationSettings.from_dict({"max_new_token": 3, "stops": ["#"]}, source="chat")
    msg = str(e.value)
    assert msg.startswith("chat: unknown setting(s)")
    assert "'max_new_token' (did you mean 'max_new_tokens'?)" in msg and "'stops'" in msg
    with pytest.raises(ConfigError) as e:
        GenerationSettings.from_dict({"max_new_tokens": 2.5, "temperature": "hot", "top_p": 1.5,
                                      "repetition_penalty": 0, "stop": 3})
    msg = str(e.value)
    assert "temperature: expected a number, got 'hot'" in msg
    assert "max_new_tokens: expected a whole number, got 2.5" in msg
    assert "top_p: 1.5 is outside 0.05..1.0" in msg
    assert "repetition_penalty: 0.0 is outside 1.0..2.0" in msg
    assert "stop: expected text or a list of strings, got 3" in msg
    with pytest.raises(ConfigError, match="max_new_tokens: 0 is outside 1..2048"):
        GenerationSettings(max_new_tokens=0).validate()
    with pytest.raises(ConfigError, match="stop: expected a list of strings"):
        GenerationSettings(stop="###").validate()


def test_chat_flags_come_from_the_settings(monkeypatch, capsys):
    from finetune import chat, cli

    chat_parser = cli._parser()._subparsers._group_actions[0].choices["chat"]
    flags = {a.dest[len("gen_"):]: a for a in chat_parser._actions if a.dest.startswith("gen_")}
    assert list(flags) == list(GENERATION_FIELDS)
    for name, f in GENERATION_FIELDS.items():
        assert flags[name].help.startswith(f.metadata["help"].replace("%", "%%"))
        assert f"Default: {getattr(GenerationSettings(), name)!r}." in flags[name].help

    seen = []
    monkeypatch.setattr(chat, "answer_once",
                        lambda target, prompt, system, settings, base: seen.append(settings) or
                        iter(["ok"]))
    assert cli.main(["chat", "m", "--prompt", "p", "--temperature", "0.7", "--stop", "###",
                     "--stop", "\\n", "--repetition-penalty", "1.3"]) == 0
    assert seen == [GenerationSettings(temperature=0.7, repetition_penalty=1.3,
                                       stop=["###", "\n"])]
    assert cli.main(["chat", "m", "--prompt", "p", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens: 0 is outside 1..2048" in capsys.readouterr().err


def test_repetition_penalty_reaches_generation(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import generation

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    # 1.0 leaves the model's own setting (none here: transformers 5 leaves it unset)
    assert generation.generation_config(model, tok, GenerationSettings()).repetition_penalty \
        in (None, 1.0)
    used = []
    generate = model.generate

    def spy(*args, **kwargs):
        used.append(kwargs["generation_config"])
        return generate(*args, **kwargs)

    model.generate = spy
    settings = GenerationSettings(max_new_tokens=4, repetition_penalty=1.3)
    pieces = list(generation.stream(model, tok, [{"role": "user", "content": "hi"}], settings))
    assert pieces and used[0].repetition_penalty == 1.3 and used[0].max_new_tokens == 4
    assert used[0].do_sample is False  # temperature 0: greedy
