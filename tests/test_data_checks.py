"""The traps before training (finetune.data.checks): too little data, labels out of balance, a
model that would not learn to stop, rows that carry no loss; in the Data tab's summary, in
`data inspect` and in the plan (Check settings, dry run, Start).

Run: python -m pytest -q tests/test_data_checks.py
"""

from __future__ import annotations

import json
import shutil

import pytest

from finetune import config, data, plan
from finetune.data import checks
from finetune.errors import DataError

NOT_CLOSED = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
              "{{'<|im_start|>assistant\n' + message['content'] + '\n'}}{% else %}"
              "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
              "'\n'}}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def labelled(shares: dict[str, int]) -> list[dict]:
    rows = []
    for label, n in shares.items():
        rows += [chat(f"Message number {len(rows) + i} about {label}?", label) for i in range(n)]
    return rows


def problems(summary: dict) -> str:
    return "\n".join(f"{p['level']}: {p['message']}" for p in summary["problems"])


def test_two_hundred_rows_get_the_small_data_warning(tmp_path):
    path = write_rows(tmp_path / "small.jsonl",
                      [chat(f"What is {i} plus {i}?", f"It is {2 * i}.") for i in range(200)])
    text = problems(data.analyze(path).summary)
    assert "warning: 200 rows: fewer than ~500 rarely teach a model much" in text
    tiny = problems(data.analyze(write_rows(tmp_path / "tiny.jsonl", [
        chat(f"What is {i} plus one?", f"It is {i + 1}.") for i in range(60)])).summary)
    assert "fine-tuning rarely beats a better prompt" in tiny
    assert checks.size_check(800).level == "ok"


def test_three_labels_ninety_five_five_are_out_of_balance(tmp_path):
    path = write_rows(tmp_path / "labels.jsonl", labelled({"spam": 180, "ham": 10, "eggs": 10}))
    summary = data.analyze(path).summary
    text = problems(summary)
    assert "3 distinct values (a classification-like task) out of balance" in text
    assert "'spam' 180 (90%)" in text and "learns to answer 'spam'" in text
    assert "balance_labels" in text  # says how to fix it
    even = data.analyze(write_rows(tmp_path / "even.jsonl",
                                   labelled({"spam": 70, "ham": 65, "eggs": 65}))).summary
    assert "out of balance" not in problems(even)
    assert next(c for c in even["checks"] if c["name"] == "label balance")["level"] == "ok"


def test_free_text_answers_are_not_labels():
    rows = [chat(f"Question {i}?", f"A free answer number {i}.") for i in range(200)]
    assert checks.answer_labels(rows) is None
    assert checks.balance_check(rows).level == "ok"


def test_balance_labels_down_samples_training_rows_and_keeps_the_test_split(tmp_path):
    path = write_rows(tmp_path / "labels.jsonl", labelled({"spam": 360, "ham": 20, "eggs": 20}))
    plain = data.prepare(config.RunConfig(data=path), 0.05)
    balanced = data.prepare(config.RunConfig(data=path, balance_labels=True), 0.05)
    assert [r["messages"] for r in balanced.test] == [r["messages"] for r in plain.test]
    answers = [data.prompt_and_answer(r)[1] for r in balanced.train + balanced.val]
    counts = {label: answers.count(label) for label in ("spam", "ham", "eggs")}
    assert len(set(counts.values())) == 1, counts  # every label as often as the rarest
    assert balanced.report["balanced"]["after"] == sum(counts.values())
    assert "down-sampling" in balanced.report["balanced"]["message"]
    assert plain.report["balanced"] is None


# --- will it stop? -------------------------------------------------------------------------------


def model_copy(tiny_model, tmp_path, template: str | None = None, eos: int | None = None):
    """The tiny model's config and tokenizer (no weights: planning reads none) with another
    chat template or another end token in its generation config."""
    out = tmp_path / "model"
    out.mkdir()
    for f in tiny_model.iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy2(f, out / f.name)
    if template is not None:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    if eos is not None:
        gen = json.loads((out / "generation_config.json").read_text())
        gen["eos_token_id"] = eos
        (out / "generation_config.json").write_text(json.dumps(gen))
    return out


def test_a_template_that_leaves_the_end_of_turn_token_out_of_the_loss_is_caught(tiny_model,
                                                                              tmp_path):
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(30)]
    good = checks.before_training(rows, data.TokenCounter(tiny_model), 64, None)
    stop = next(c for c in good if c.name == "will it stop")
    assert stop.level == "ok" and "<|im_end|>" in stop.message
    bad_model = model_copy(tiny_model, tmp_path, NOT_CLOSED)
    found = checks.before_training(rows, data.TokenCounter(bad_model), 64, None)
    stop = next(c for c in found if c.name == "will it stop")
    assert stop.level == "error" and "would not learn to stop" in stop.message
    assert "'<|im_end|>'" in stop.message  # names the token chat stops at
    # ... and training refuses it before it starts (Check settings, dry run, Start)
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match="would not learn to stop"):
        plan.plan(config.RunConfig(model=str(bad_model), data=path))


def test_chat_stopping_at_a_token_training_never_labels_is_caught(tiny_model, tmp_path):
    """The template ends answers with <|im_end|>, but generation stops only at <|endoftext|>
    (the model's generation config and EOS say so): the model would never stop."""
    bad_model = model_copy(tiny_model, tmp_path, eos=0)
    settings = json.loads((bad_model / "tokenizer_config.json").read_text())
    settings["eos_token"] = "<|endoftext|>"
    (bad_model / "tokenizer_config.json").write_text(json.dumps(settings))
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(30)]
    found = checks.before_training(rows, data.TokenCounter(bad_model), 64, None)
    stop = next(c for c in found if c.name == "will it stop")
    assert stop.level == "error" and "'<|endoftext|>'" in stop.message


def test_rows_whose_prompt_fills_the_max_length_are_an_error(tiny_model, tmp_path):
    long_prompt = " ".join(f"word{i}" for i in range(80))
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(30)] + \
        [chat(long_prompt, "Short answer.")]
    counter = data.TokenCounter(tiny_model)
    found = checks.before_training(rows, counter, 64, None, counter.lengths(rows))
    error = next(c for c in found if c.name == "loss on every row")
    assert error.level == "error" and "1 rows would carry no loss" in error.message
    assert "Rows 31 " in error.message and "Raise max_length" in error.message
    summary = data.analyze(write_rows(tmp_path / "long.jsonl", rows), max_length=64,
                           counter=counter).summary
    assert not summary["usable"] and "would carry no loss" in problems(summary)


def test_the_plan_lists_the_checks_and_warns(tiny_model, tiny_data):
    planned = plan.plan(config.RunConfig(model=str(tiny_model), data=str(tiny_data)))
    names = [c["name"] for c in planned.checks]
    assert names[:3] == ["data size", "label balance", "will it stop"]
    assert any("rarely beats a better prompt" in w for w in planned.warnings)
    assert planned.reasons["will it stop"].startswith("yes:")
