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


def _reference_nll(model, tokenizer, rows, max_length=2048):
    """The loss as evaluation computed it before: full logits, an fp32 copy, cross-entropy."""
    import torch
    import torch.nn.functional as F

    from finetune.generation import completion_ids

    total, count = 0.0, 0
    for prompt, answer in rows:
        ids, start = completion_ids(tokenizer, prompt, answer)
        ids = ids[:max_length]
        labels = torch.tensor([-100] * start + ids[start:])
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum"))
        count += int((labels[1:] != -100).sum())
    return total, count


ROWS = [([{"role": "user", "content": f"Give me item {i} of the list " * (1 + i % 3)}],
         f"Item {i} is number {i * 7}") for i in range(11)]


def test_answer_loss_equals_the_full_logits_computation(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.generation import completion_nll

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    nll, tokens = completion_nll(model, tokenizer, ROWS, batch_size=4)
    ref_nll, ref_tokens = _reference_nll(model, tokenizer, ROWS)
    assert tokens == ref_tokens > 0
    assert abs(nll / tokens - ref_nll / ref_tokens) < 1e-5
    # the patched head leaves generation as it was
    from finetune.generation import generate_batch

    assert generate_batch(model, tokenizer, [ROWS[0][0]], 4, batch_size=1)[0] is not None


def test_answer_loss_of_a_big_vocabulary_never_builds_the_full_logits(tiny_model):
    """A 150,000-word vocabulary (Qwen-sized) at batch 4: full logits would take one
    4 x length x 150,000 fp32 block; the loss pass allocates at most one TRL tile
    (tokens x 32,768 words) at a time."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune.generation import completion_ids, completion_nll
    from finetune.hardware import LOSS_TILE_TOKENS, LOSS_TILE_WORDS

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    vocab = 150_000
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, max_position_embeddings=512,
                                         tie_word_embeddings=True)).eval()
    rows = ROWS[:4]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        nll, tokens = completion_nll(model, tokenizer, rows, batch_size=4)
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    width = max(len(completion_ids(tokenizer, p, a)[0]) for p, a in rows)
    full_logits = 4 * (width - 1) * vocab * 4
    print(f"largest allocation {largest / 2**20:.0f} MB, full logits {full_logits / 2**20:.0f} MB")
    assert largest < full_logits / 3
    assert largest <= LOSS_TILE_TOKENS * LOSS_TILE_WORDS * 4
    ref_nll, ref_tokens = _reference_nll(model, tokenizer, rows)
    assert tokens == ref_tokens and abs(nll / tokens - ref_nll / ref_tokens) < 1e-5


def test_greedy_answers_are_generates_and_a_right_one_is_not_generated(bundled_model,
                                                                         monkeypatch):
    # Validation answers: a reference the model would write itself is seen in one forward
    # pass; only the other rows are generated; the answers are what generate_batch gives.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import generation

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(bundled_model)
    model = AutoModelForCausalLM.from_pretrained(bundled_model, dtype=torch.float32).eval()
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "user", "content": "Name a primary colour. One word."}]]
    made = [generation.generate_batch(model, tok, [p], 24)[0] for p in prompts]
    assert "Paris" in made[0]
    rows = [(prompts[0], made[0]), (prompts[1], made[1] + " Wrong.")]
    generated = []
    plain = generation.generate_batch

    def counting(model, tok, ps, *a, **k):
        generated.extend(p[-1]["content"] for p in ps)
        return plain(model, tok, ps, *a, **k)

    monkeypatch.setattr(generation, "generate_batch", counting)
    assert generation.greedy_answers(model, tok, rows, 24) == made
    assert generated == ["Name a primary colour. One word."]  # only the wrong reference's row
