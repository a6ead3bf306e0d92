"""Task metrics for generated answers against references: exact match, ROUGE-L, BLEU, valid JSON.

Pure functions on strings, used by `finetune.evaluate`:

    python -m pytest tests/test_metrics.py -q

Scales: exact match, ROUGE-L and valid-JSON share are 0..1; BLEU is sacrebleu's 0..100.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

_MISSING = object()


def parse_json(text: str) -> Any:
    """The parsed value of `text`, or `_MISSING` when it is not JSON (strict: no code fences)."""
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        return _MISSING


def is_json(text: str) -> bool:
    return parse_json(text) is not _MISSING


def is_structured_json(text: str) -> bool:
    """A JSON object or array: what 'answer with JSON' tasks mean ('42' or '"x"' do not count)."""
    return isinstance(parse_json(text), (dict, list))


def is_exact(answer: str, reference: str) -> bool:
    """Equal after stripping whitespace; when both parse as JSON, equal as values (key order and
    spacing do not matter)."""
    a, r = (answer or "").strip(), (reference or "").strip()
    if a == r:
        return True
    pa, pr = parse_json(a), parse_json(r)
    if pa is _MISSING or pr is _MISSING:
        return False
    return _same_json(pa, pr)


def _same_json(a: Any, b: Any) -> bool:
    # json.loads gives 1 == 1.0 == True; keep booleans apart from numbers.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # 1 and 1.0 are the same number
    return type(a) is type(b) and a == b


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_one(answer: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of whitespace tokens (case-sensitive)."""
    a, r = (answer or "").split(), (reference or "").split()
    if not a and not r:
        return 1.0
    if not a or not r:
        return 0.0
    lcs = _lcs_length(a, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(answers: Sequence[str], references: Sequence[str]) -> float | None:
    _check(answers, references)
    if not answers:
        return None
    return sum(is_exact(a, r) for a, r in zip(answers, references)) / len(answers)


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> float | None:
    _check(answers, references)
    if not answers:
        return None
    return sum(rouge_l_one(a, r) for a, r in zip(answers, references)) / len(answers)


def bleu(answers: Sequence[str], references: Sequence[str]) -> float | None:
    """Corpus BLEU, 0..100 (sacrebleu, 13a tokenizer).

    Effective order: n-gram orders that no answer reaches are left out, so one-word answers
    ('billing') score by their unigrams instead of 0 for want of 4-grams.
    """
    _check(answers, references)
    if not answers:
        return None
    from sacrebleu.metrics import BLEU

    score = BLEU(effective_order=True).corpus_score([a or "" for a in answers],
                                                    [[r or "" for r in references]])
    return min(100.0, float(score.score))


def json_valid(answers: Sequence[str]) -> float | None:
    """Share of answers that parse as JSON."""
    if not answers:
        return None
    return sum(is_json(a or "") for a in answers) / len(answers)


def references_are_json(references: Sequence[str]) -> bool:
    """True when every reference is a JSON object or array: then valid JSON is worth reporting."""
    return bool(references) and all(is_structured_json(r or "") for r in references)


def compute(answers: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """All generation metrics; 'json_valid' only when the references are JSON."""
    out = {"exact_match": exact_match(answers, references),
           "rouge_l": rouge_l(answers, references),
           "bleu": bleu(answers, references)}
    if references_are_json(references):
        out["json_valid"] = json_valid(answers)
    return out


def _check(answers: Sequence[str], references: Sequence[str]) -> None:
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
