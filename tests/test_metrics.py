"""Metrics on strings: what a user reads in the Evaluate tab must mean what it says.

    python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

import pytest

from finetune import metrics


def test_exact_match_ignores_surrounding_whitespace_only():
    assert metrics.is_exact("  billing\n", "billing")
    assert not metrics.is_exact("Billing", "billing")
    assert not metrics.is_exact("billing.", "billing")
    assert metrics.exact_match(["a", "b ", "c"], ["a", "b", "x"]) == pytest.approx(2 / 3)


def test_exact_match_compares_json_as_values():
    ref = '{"name": "Ana", "company": null, "phone": "555-1"}'
    assert metrics.is_exact('{"phone":"555-1","name":"Ana","company":null}', ref)
    assert not metrics.is_exact('{"name": "Ana", "company": "", "phone": "555-1"}', ref)
    assert not metrics.is_exact('{"name": "Ana"}', ref)
    assert metrics.is_exact("[1, 2.0]", "[1.0, 2]")
    assert not metrics.is_exact("[1, 2]", "[2, 1]")
    assert not metrics.is_exact("true", "1")  # JSON booleans are not numbers
    # Code fences are not JSON: a fenced answer is not an exact match.
    assert not metrics.is_exact('```json\n{"name": "Ana"}\n```', '{"name": "Ana"}')


def test_rouge_l():
    assert metrics.rouge_l_one("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert metrics.rouge_l_one("", "") == 1.0
    assert metrics.rouge_l_one("", "x") == 0.0
    assert metrics.rouge_l_one("a b c", "x y z") == 0.0
    # LCS "a c d" = 3; precision 3/4, recall 3/3 -> F1 = 6/7
    assert metrics.rouge_l_one("a b c d", "a c d") == pytest.approx(6 / 7)
    # a subsequence, not a substring: order matters, gaps do not
    assert metrics.rouge_l_one("d c a", "a c d") == pytest.approx(1 / 3)
    assert metrics.rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_bleu_corpus():
    same = ["the cat sat on the mat"]
    assert metrics.bleu(same, same) == pytest.approx(100)
    assert metrics.bleu(["dogs bark loudly"], ["the cat sat on the mat"]) == pytest.approx(0)
    # one-word answers score by their words, not 0 for lack of 4-grams
    assert metrics.bleu(["billing", "refund"], ["billing", "bug"]) == pytest.approx(50)
    assert metrics.bleu([], []) is None


def test_json_validity_is_reported_only_for_json_references():
    refs = ['{"a": 1}', '{"a": 2}', '[3]']
    answers = ['{"a": 1}', "not json", '{"a": 3}']
    out = metrics.compute(answers, refs)
    assert out["json_valid"] == pytest.approx(2 / 3)
    assert out["exact_match"] == pytest.approx(1 / 3)
    plain = metrics.compute(["billing", "bug"], ["billing", "refund"])
    assert "json_valid" not in plain
    assert plain["exact_match"] == 0.5
    assert not metrics.references_are_json(["42", '"x"'])  # scalars are not a JSON task


def test_lengths_must_match():
    with pytest.raises(ValueError):
        metrics.exact_match(["a"], ["a", "b"])
