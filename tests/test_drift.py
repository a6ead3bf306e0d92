"""Writing-system drift and answers that never stop (finetune.drift), on fake answers.

Run: python -m pytest -q tests/test_drift.py
"""

from __future__ import annotations

from pathlib import Path

from finetune import drift

TRAINING = ["The invoice was paid on 3 May.", "Please reset your password.", "billing"] * 20


def words(texts):
    return [len(t.split()) for t in texts]


def test_writing_systems_of_letters():
    assert drift.scripts("Hello, world 42!") == {"Latin"}
    assert drift.scripts("Привет") == {"Cyrillic"}
    assert drift.scripts("答案是巴黎") == {"CJK"} and drift.scripts("カタカナ") == {"CJK"}
    assert drift.scripts("مرحبا") == {"Arabic"} and drift.scripts("αβγ") == {"Greek"}
    assert drift.scripts("Paris 巴黎 Париж") == {"Latin", "CJK", "Cyrillic"}
    assert drift.scripts("123 -> {} 🙂") == set()  # digits, symbols and emoji are no system
    assert drift.scripts("café naïve") == {"Latin"}


def test_a_model_whose_answers_contain_another_writing_system_is_flagged():
    prompts = [f"Question {i}?" for i in range(60)]
    tuned = ["It is Paris."] * 57 + ["答案是巴黎", "The answer is 巴黎.", "是的"]
    base = ["Paris, I think."] * 60
    found = drift.assess({"base": base, "tuned": tuned}, TRAINING, prompts, 64, words)
    assert found["flags"] == [
        "3 of 60 tuned answers contain CJK characters; the 60 training answers contain none; "
        "the base model's: 0 of 60."]
    cjk = found["models"]["tuned"]["foreign"]["CJK"]
    assert cjk["count"] == 3 and cjk["examples"][0] == {
        "index": 57, "prompt": "Question 57?", "answer": "答案是巴黎"}
    assert found["training"]["scripts"] == {"Latin": 60}
    report = {"drift": found}
    assert drift.findings(report) == found["flags"]
    assert any("CJK: 'Question 57?' -> '答案是巴黎'" in line for line in drift.example_lines(found))


def test_a_model_whose_answers_keep_to_the_training_systems_is_not_flagged():
    prompts = [f"Question {i}?" for i in range(60)]
    tuned = ["It is Paris."] * 60
    base = ["Париж"] * 2 + ["Paris."] * 58  # the base model's drift is not the tuned model's
    found = drift.assess({"base": base, "tuned": tuned}, TRAINING, prompts, 64, words)
    assert found["flags"] == []
    assert found["models"]["base"]["foreign"]["Cyrillic"]["count"] == 2
    (line,) = drift.findings({"drift": found})
    assert line.startswith("No tuned answer uses a writing system the training answers never "
                           "use (Latin); none of the 60 ran to the token limit")


def test_answers_that_ran_to_the_token_limit_are_counted_and_flagged():
    prompts = [f"Question {i}?" for i in range(10)]
    long = " ".join(["again"] * 16)
    tuned = [long] * 2 + ["Fine."] * 8
    base = [long] * 7 + ["Fine."] * 3
    found = drift.assess({"base": base, "tuned": tuned}, TRAINING, prompts, 16, words)
    assert found["flags"] == ["2 of 10 tuned answers ran to the token limit (16 new tokens) "
                              "without stopping; the base model's: 7 of 10."]
    assert [ex["index"] for ex in found["models"]["tuned"]["ran_out"]["examples"]] == [0, 1]


def test_a_template_changed_since_training_is_flagged(tmp_path: Path):
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    assert drift.template_note(tmp_path, "{{ messages }}") == ""
    assert "differs from the one chat and evaluation use" in drift.template_note(tmp_path, "x")
    assert drift.template_note(None, "x") == ""


def test_the_evaluate_tab_and_the_model_card_say_what_was_found(tmp_path: Path):
    import json

    from finetune import card
    from finetune.ui.evaluate_tab import summary_text

    tuned = ["It is Paris."] * 57 + ["答案是巴黎"] * 3
    found = drift.assess({"base": ["Paris."] * 60, "tuned": tuned}, TRAINING,
                         [f"Q{i}?" for i in range(60)], 64, words)
    scores = {"exact_match": 0.5, "loss": 1.0}
    report = {"run": "r", "data": "test split (x)", "n_examples": 60, "n_loss_examples": 60,
              "metrics": {"base": scores, "tuned": scores}, "examples": [], "drift": found}
    text = summary_text(report)
    assert "⚠ 3 of 60 tuned answers contain CJK characters" in text and "答案是巴黎" in text
    (tmp_path / "eval.json").write_text(json.dumps(report), encoding="utf-8")
    section = card.evaluation_section(tmp_path, {"exports": []})
    assert "- 3 of 60 tuned answers contain CJK characters; the 60 training answers contain " \
           "none; the base model's: 0 of 60." in section
