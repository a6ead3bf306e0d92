"""The forgetting probe (finetune.probe) and mixing general data into training (data.mix).

Run: python -m pytest -q tests/test_probe.py
"""

from __future__ import annotations

import json

import pytest

from finetune import config, data, probe
from finetune.data import mix
from finetune.errors import DataError


def test_the_probe_ships_a_few_dozen_questions_with_short_answers():
    items = probe.questions()
    assert 30 <= len(items) <= 60
    assert all(q["question"].endswith("?") and q["answers"] for q in items)
    assert len({q["question"] for q in items}) == len(items)
    # mixing never trains on the probe's answers: no probe question is in the general rows
    general = mix.GENERAL_FILE.read_text(encoding="utf-8")
    assert not any(q["question"] in general for q in items)


def test_an_answer_is_right_when_it_names_the_answer_as_a_word():
    assert probe.is_right("The capital of France is Paris.", ["Paris"])
    assert probe.is_right("paris", ["Paris"])
    assert not probe.is_right("Parisian food is great.", ["Paris"])
    assert probe.is_right("A spider has 8 legs.", ["8", "eight"])
    assert not probe.is_right("It has 18 legs.", ["8", "eight"])


def test_the_drop_from_base_to_tuned_is_reported_and_flagged():
    items = probe.questions()
    right = [q["answers"][0] for q in items]
    base = right[:30] + ["I do not know."] * (len(items) - 30)
    tuned = right[:20] + ['{"name": "x"}'] * (len(items) - 20)
    report = probe.report({"base": base, "tuned": tuned})
    assert report["models"]["base"]["right"] == 30 and report["models"]["tuned"]["right"] == 20
    assert report["lost"] == 10 and report["gained"] == 0
    assert report["drop"] == pytest.approx(10 / len(items))
    (flag,) = report["flags"]
    assert flag.startswith(f"The tuned model forgot general knowledge: it answers 20 of "
                           f"{len(items)} probe questions right, the base model 30")
    assert "mix_general" in flag
    first, *_ = probe.findings({"probe": report})
    assert first == (f"General knowledge (the probe's {len(items)} questions): base 30 of "
                     f"{len(items)} ({100 * 30 / len(items):.0f}%), tuned 20 of {len(items)} "
                     f"({100 * 20 / len(items):.0f}%); lost 10, gained 0.")
    same = probe.report({"base": base, "tuned": base})
    assert same["flags"] == [] and same["drop"] == 0
    # a run that mixed general rows in already is not told to do so
    (flag,) = probe.report({"base": base, "tuned": tuned}, mixed=0.2)["flags"]
    assert "20% general rows were mixed in already: try a larger share" in flag
    assert "(mix_general, e.g. 0.2)" not in flag


def test_probe_answers_in_another_writing_system_are_flagged():
    items = probe.questions()
    answers = [q["answers"][0] for q in items]
    tuned = ["巴黎"] + answers[1:]
    report = probe.report({"base": answers, "tuned": tuned}, ["login", "billing"] * 20,
                          lambda texts: [len(t.split()) for t in texts])
    assert any(f.startswith(f"1 of {len(items)} tuned answers to the probe contain CJK")
               for f in report["flags"])
    assert report["drift"]["models"]["base"]["foreign"] == {}  # English is expected


def rows_file(path, n):
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Extract the number from: item {i}"},
        {"role": "assistant", "content": str(i)}]}) + "\n" for i in range(n)), encoding="utf-8")
    return str(path)


def test_mix_general_adds_general_rows_to_training_only(tmp_path):
    path = rows_file(tmp_path / "task.jsonl", 200)
    plain = data.prepare(config.RunConfig(data=path), 0.05)
    mixed = data.prepare(config.RunConfig(data=path, mix_general=0.2), 0.05)
    general = [r for r in mixed.train if r.get(mix.GENERAL)]
    assert len(general) == round(0.2 / 0.8 * len(plain.train))
    assert len(mixed.train) == len(plain.train) + len(general)
    assert mixed.val == plain.val and mixed.test == plain.test  # they keep measuring the task
    assert "general instruction rows from the shipped general sample" in \
        mixed.report["mixed"]["message"]
    assert plain.report["mixed"] is None


def test_mixing_into_plain_text_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"line {i} of a story" for i in range(50)), encoding="utf-8")
    with pytest.raises(DataError, match="mix_general mixes chat rows"):
        data.prepare(config.RunConfig(data=str(path), mix_general=0.2), 0.05)
