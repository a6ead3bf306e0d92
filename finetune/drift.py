"""After training, in every evaluation: answers that drift into a writing system the training
answers never use (a model that "returns Chinese characters from time to time"), answers that
ran to the token limit without stopping, and a chat template that changed since training.

    python -m finetune eval runs/NAME      # eval.json gets 'drift'; the Evaluate tab and the
                                           # model card say what it found, in words

Pure functions on strings (and a tokenizer to count tokens); `finetune.evaluate` calls
`assess` once base and tuned have answered. Writing systems come from the Unicode names of
the letters (unicodedata): Latin, CJK (Han, kana, hangul), Cyrillic, Arabic, Greek, ...
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path

EXAMPLES = 3  # answers shown per finding
CJK = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC", "BOPOMOFO", "HALFWIDTH",
       "FULLWIDTH"}
NAMES = {"CJK": "CJK"}  # the name people use; other systems: the first word, capitalized


@lru_cache(maxsize=65536)
def script_of(char: str) -> str | None:
    """The writing system of a letter ('Latin', 'CJK', 'Cyrillic', ...); None for anything
    that is not a letter (digits, punctuation, spaces, symbols, emoji)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    if not name:
        return None
    first = name.split()[0]
    if first in CJK:
        return "CJK"
    return NAMES.get(first, first.capitalize())


def scripts(text: str) -> set[str]:
    """Every writing system whose letters occur in `text`."""
    return {s for s in map(script_of, set(text or "")) if s}


def profile(texts: list[str]) -> dict[str, int]:
    """How many of the texts contain each writing system, most common first."""
    counts = Counter(s for t in texts for s in scripts(t))
    return dict(counts.most_common())


def foreign(answers: list[str], known: set[str]) -> dict[str, list[int]]:
    """Indices of the answers that contain each writing system outside `known`."""
    out: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        for s in sorted(scripts(answer) - known):
            out.setdefault(s, []).append(i)
    return out


def ran_out(answers: list[str], max_new_tokens: int, count_tokens) -> list[int]:
    """Indices of the answers that reached the token limit: generation gave up rather than the
    model stopping. `count_tokens(texts) -> [n]` counts as the model's tokenizer does; a
    decoded answer (end token and trailing space stripped) may re-encode one token shorter."""
    counts = count_tokens(answers) if answers else []
    return [i for i, n in enumerate(counts) if n >= max_new_tokens - 1]


def training_answers(cfg) -> list[str]:
    """The answers a run trained (and validated) on: what its answers are compared with."""
    from finetune import data

    vf = cfg.val_fraction if isinstance(cfg.val_fraction, (int, float)) else 0.0
    splits = data.prepare(cfg, float(vf))
    return [r["text"] if "text" in r else data.prompt_and_answer(r)[1]
            for r in splits.train + splits.val]


def _example(i: int, prompts: list[str], answers: list[str]) -> dict:
    return {"index": i, "prompt": prompts[i][:200] if i < len(prompts) else "",
            "answer": answers[i][:300]}


def assess(answers: dict[str, list[str]], training_answers: list[str], prompts: list[str],
           max_new_tokens: int, count_tokens, template_note: str = "",
           also_known: set[str] = frozenset(), runaway: bool = True) -> dict:
    """What eval.json keeps under 'drift': the training answers' writing systems, for each model
    the answers in another system and those that ran to the token limit (with examples), and
    `flags`, the findings about the tuned answers in words. `answers` maps 'base'/'tuned' to
    the answers. `also_known`: systems expected anyway (the probe's English); `runaway`: count
    answers that reached the token limit (off where the limit only keeps answers short)."""
    known_profile = profile(training_answers)
    known = set(known_profile) | set(also_known)
    n_train = len(training_answers)
    out: dict = {"training": {"answers": n_train, "scripts": known_profile}, "models": {},
                 "max_new_tokens": max_new_tokens, "flags": []}
    for kind, texts in answers.items():
        found = foreign(texts, known)
        limit = ran_out(texts, max_new_tokens, count_tokens) if runaway else []
        out["models"][kind] = {
            "answers": len(texts), "scripts": profile(texts),
            "foreign": {s: {"count": len(idx), "examples": [_example(i, prompts, texts)
                                                            for i in idx[:EXAMPLES]]}
                        for s, idx in found.items()},
            "ran_out": {"count": len(limit),
                        "examples": [_example(i, prompts, texts) for i in limit[:EXAMPLES]]}}
    out["flags"] = flags(out)
    if template_note:
        out["flags"].append(template_note)
    return out


def flags(drift: dict, subject: str = "tuned", other: str = "base", what: str = "") -> list[str]:
    """The findings about `subject`'s answers in words, each beside `other`'s (the base model's)
    figure: writing systems the training answers never use, answers that never stopped."""
    models = drift["models"]
    if subject not in models:
        return []
    mine, theirs = models[subject], models.get(other)
    n, n_train = mine["answers"], drift["training"]["answers"]
    what = f" {what}" if what else ""
    out = []
    for script, found in mine["foreign"].items():
        base = ""
        if theirs is not None:
            k = theirs["foreign"].get(script, {}).get("count", 0)
            base = f"; the base model's: {k} of {theirs['answers']}"
        out.append(f"{found['count']} of {n} {subject}{what} answers contain {script} "
                   f"characters; the {n_train} training answers contain none{base}.")
    k = mine["ran_out"]["count"]
    if k:
        base = (f"; the base model's: {theirs['ran_out']['count']} of {theirs['answers']}"
                if theirs is not None else "")
        out.append(f"{k} of {n} {subject}{what} answers ran to the token limit "
                   f"({drift['max_new_tokens']} new tokens) without stopping{base}.")
    return out


def example_lines(drift: dict | None, subject: str = "tuned") -> list[str]:
    """A few flagged answers of `subject`, one line each, for people."""
    if not drift or subject not in drift.get("models", {}):
        return []
    mine = drift["models"][subject]
    lines = []
    for script, found in mine["foreign"].items():
        lines += [f"{script}: {ex['prompt'][:80]!r} -> {ex['answer'][:120]!r}"
                  for ex in found["examples"]]
    lines += [f"no stop: {ex['prompt'][:80]!r} -> {ex['answer'][:120]!r}"
              for ex in mine["ran_out"]["examples"]]
    return lines


def template_note(result_dir: Path | None, template: str | None) -> str:
    """A flag when the chat template saved beside the tuned weights (the one training used,
    which export ships) differs from the one chat and evaluation render prompts with."""
    if result_dir is None or not template:
        return ""
    saved = _saved_template(Path(result_dir))
    if saved is None or saved == template:
        return ""
    return ("The chat template saved with the tuned weights differs from the one chat and "
            "evaluation use now (the base model's files changed since training): answers here "
            "follow a template the model did not train with, and an export ships the saved one.")


def _saved_template(folder: Path) -> str | None:
    import json

    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = settings.get("chat_template")
    return template if isinstance(template, str) else None


def findings(report: dict) -> list[str]:
    """What an evaluation found about trust, in words (the Evaluate tab, the terminal, the model
    card): each flag, or that nothing was found; [] for an eval.json older than these checks."""
    found = report.get("drift")
    if not found:
        return []
    if found["flags"]:
        return list(found["flags"])
    tuned = found["models"].get("tuned", {})
    systems = ", ".join(found["training"]["scripts"]) or "no letters"
    return [f"No tuned answer uses a writing system the training answers never use "
            f"({systems}); none of the {tuned.get('answers', 0)} ran to the token limit."]
