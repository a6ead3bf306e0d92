"""The traps the fine-tuning guides warn about, caught before training: too little data, answers
out of balance, a model that will not learn to stop, rows that carry no loss.

    python -m finetune data inspect my.jsonl          # the Data tab says the same
    python -m finetune train --data my.jsonl --dry-run   # and the Train tab's Check settings

Shared by `data.analyze` (Data tab, `data inspect`) and `plan.plan` (Check settings, dry run,
Start), so every place says the same words. Rows are rendered with `TokenCounter`, the way
training (TRL's prompt/completion masking) will see them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from finetune.data.mix import GENERAL
from finetune.data.types import prompt_and_answer

# The guides' rule of thumb: under ~100 good rows a better prompt usually does as well; under
# ~500 a model learns a narrow, consistent task (a format, a label set) but little more.
PROMPT_RULE, TEACH_RULE = 100, 500
MAX_LABELS = 20  # at most this many distinct answers ...
LABEL_SHARE = 0.2  # ... making up at most this share of the rows: a classification-like task
MIN_LABEL_ROWS = 20  # fewer rows say nothing about balance
IMBALANCE = 4.0  # the most common answer has at least 4x the rows of the rarest: out of balance
STOP_SAMPLE = 5  # rows rendered to see that the end-of-turn token carries loss
NO_LOSS_SCAN = 2000  # rows longer than the max length rendered to find those without loss


@dataclass
class Check:
    name: str  # "data size", "label balance", "will it stop", "loss on every row"
    level: str  # "ok" | "warning" | "error"
    message: str

    def as_dict(self) -> dict:
        return {"name": self.name, "level": self.level, "message": self.message}


# --- how much data ------------------------------------------------------------------------------


def size_check(n_rows: int) -> Check:
    if n_rows < PROMPT_RULE:
        return Check("data size", "warning", (
            f"Only {n_rows} rows. With fewer than ~{PROMPT_RULE} examples, fine-tuning "
            "rarely beats a better prompt (a clear instruction and a few examples in the system "
            f"prompt): try that first, or collect more rows (~{TEACH_RULE}+)."))
    if n_rows < TEACH_RULE:
        return Check("data size", "warning", (
            f"{n_rows} rows: fewer than ~{TEACH_RULE} rarely teach a model much. That is "
            "enough for a narrow, consistent task (a fixed format or a set of labels), not for "
            "new knowledge or a broad style; compare base and tuned in the Evaluate tab."))
    return Check("data size", "ok", f"{n_rows} rows")


# --- label balance ------------------------------------------------------------------------------


def answer_labels(rows: list[dict]) -> Counter | None:
    """How often each answer occurs, when the answers come from a small set of distinct values
    (a classification-like task); None otherwise (free text, or too few rows to tell)."""
    answers = [pa[1].strip() for r in rows if "messages" in r and (pa := prompt_and_answer(r))]
    if len(answers) < MIN_LABEL_ROWS or len(answers) < len(rows):
        return None
    counts = Counter(answers)
    if not 2 <= len(counts) <= MAX_LABELS or len(counts) > LABEL_SHARE * len(answers):
        return None
    return counts


def _shares(counts: Counter, total: int, top: int = 6) -> str:
    parts = [f"'{label[:40]}' {n} ({100 * n / total:.0f}%)" for label, n in counts.most_common(top)]
    more = len(counts) - top
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def balance_check(rows: list[dict], balanced: dict | None = None) -> Check:
    """Whether a classification-like task's answers are out of balance; `balanced` is what
    down-sampling did (split report), when it was asked for."""
    if balanced:
        return Check("label balance", "ok", balanced["message"])
    counts = answer_labels(rows)
    if counts is None:
        return Check("label balance", "ok", "the answers are free text, not a small set of labels")
    total = sum(counts.values())
    (top, most), fewest = counts.most_common(1)[0], min(counts.values())
    if most < IMBALANCE * fewest:
        return Check("label balance", "ok", f"{len(counts)} distinct answers, in balance: "
                     + _shares(counts, total))
    return Check("label balance", "warning", (
        f"The answers are {len(counts)} distinct values (a classification-like task) out of "
        f"balance: {_shares(counts, total)}. A model trained on this learns to answer "
        f"'{top[:40]}' when unsure. Add rows of the rare answers, or turn on balance_labels "
        f"(Train tab, Data group) to down-sample every answer to the rarest one's {fewest} rows "
        f"({fewest * len(counts)} rows in all)."))


def balance(rows: list[dict], seed: int) -> tuple[list[dict], dict | None]:
    """Down-sample a classification-like task's rows so every answer has as many rows as the
    rarest one (a seeded choice, file order kept). (rows, what was done or None when the answers
    are not a small set of labels)."""
    counts = answer_labels(rows)
    if counts is None:
        return rows, None
    fewest = min(counts.values())
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(prompt_and_answer(row)[1].strip(), []).append(i)
    rng = random.Random(seed)
    keep = {i for idx in by_label.values() for i in rng.sample(idx, fewest)}
    out = [r for i, r in enumerate(rows) if i in keep]
    return out, {"before": len(rows), "after": len(out), "per_label": fewest,
                 "message": (f"balanced by down-sampling (balance_labels): {len(counts)} answers, "
                             f"{fewest} rows each; {len(rows)} -> {len(out)} rows (was "
                             f"{_shares(counts, len(rows), 3)})")}


# --- will it stop? ------------------------------------------------------------------------------


def stop_ids(counter, model_folder: str | Path | None) -> list[int]:
    """The tokens that end an answer in chat and evaluation (`generation.stop_token_ids`): the
    model's generation config's end tokens and the tokenizer's EOS."""
    ids = []
    if model_folder is not None:
        for name in ("generation_config.json", "config.json"):
            try:
                eos = json.loads((Path(model_folder) / name).read_text(encoding="utf-8")) \
                    .get("eos_token_id")
            except (OSError, ValueError):
                continue
            if eos is not None:
                ids += eos if isinstance(eos, list) else [eos]
                break
    eos_id = counter.token_id(counter.eos)
    return [int(i) for i in dict.fromkeys(ids + ([eos_id] if eos_id is not None else []))]


def _names(counter, ids) -> str:
    return ", ".join(repr(counter.decode([i])) for i in ids) or "none"


def stop_check(rows: list[dict], counter, max_length: int | None, stops: list[int],
               model: str = "the model", lengths: list[int] | None = None) -> list[Check]:
    """Render a few rows exactly as training will: the end-of-turn token that chat and
    evaluation stop at must be among the tokens that carry loss, and the prompt chat sends must
    be the context training saw. Also every row must keep some loss-carrying token within
    `max_length` (an 'error' Check names the rows that do not)."""
    if counter.tokenizer is None or not counter.template:
        return [Check("will it stop", "ok", "not checked yet: the model's tokenizer is not at "
                      "hand (Check settings in the Train tab renders the rows exactly)")]
    if not rows:
        return []
    if "text" in rows[0]:
        return [Check("will it stop", "ok", "text rows: training appends the end-of-sequence "
                      f"token {_names(counter, [counter.token_id(counter.eos)])} to each, in the "
                      "loss")] + _no_loss(rows, counter, max_length, lengths)
    fits = []  # rows that fit: a truncated row loses its end-of-turn token for another reason
    for row in rows[:200]:
        if max_length is None or len(counter.token_ids(row)[0]) <= max_length:
            fits.append(row)
        if len(fits) == STOP_SAMPLE:
            break
    fits = fits or rows[:STOP_SAMPLE]
    out = []
    missing, differs = [], []
    ends = Counter()
    for row in fits:
        ids, prompt_ids, start = counter.token_ids(row)
        loss = ids[start:]
        if not any(i in stops for i in loss):
            missing.append(row)
        ends[counter.decode(loss[-3:])] += 1
        if start < len(prompt_ids):
            differs.append(counter.decode(prompt_ids[start:]))
    shown = ", ".join(repr(e) for e, _ in ends.most_common(2))
    if missing:
        out.append(Check("will it stop", "error", (
            f"The tuned model would not learn to stop. Rendered as training will with "
            f"{model}'s chat template, {len(missing)} of {len(fits)} rows have none of the "
            f"tokens that end an answer in chat and evaluation ({_names(counter, stops)}) among "
            f"the tokens that carry loss (their answers end with {shown}): the loss curve "
            "would look healthy and every answer would run to the token limit. Use a chat "
            "model whose template closes the assistant turn with its end-of-turn token, or "
            "fix the model's generation_config.json eos_token_id.")))
    else:
        out.append(Check("will it stop", "ok", (
            f"yes: in {len(fits)} rows rendered as training will, the answer's end-of-turn token "
            f"({_names(counter, [i for i in stops if i in set(counter.token_ids(fits[0])[0])])}) "
            "carries loss; chat, evaluation and export use this same chat template (the "
            "adapter folder keeps a copy)")))
    if differs:
        out.append(Check("same template", "warning", (
            f"The prompt chat and evaluation send ends differently from the context training "
            f"sees in {len(differs)} of {len(fits)} rows ({differs[0][:60]!r} is left out of "
            "training): the chat template renders a prompt alone differently from a whole "
            "conversation, so the tuned model answers after a context it never trained on.")))
    return out + _no_loss(rows, counter, max_length, lengths)


def _no_loss(rows: list[dict], counter, max_length: int | None,
             lengths: list[int] | None = None) -> list[Check]:
    """An 'error' Check naming the rows whose loss-carrying tokens all fall beyond max_length."""
    if not max_length:
        return []
    candidates = [i for i, r in enumerate(rows) if lengths is None or lengths[i] > max_length]
    bad = []
    for i in candidates[:NO_LOSS_SCAN]:
        ids, _, start = counter.token_ids(rows[i])
        if min(len(ids), max_length) <= start:
            bad.append((i, start))
    if not bad:
        return []
    listed = ", ".join(str(i + 1) for i, _ in bad[:8]) + (" ..." if len(bad) > 8 else "")
    longest = max(n for _, n in bad)
    return [Check("loss on every row", "error", (
        f"{len(bad)} rows would carry no loss: their prompt alone fills the max length of "
        f"{max_length} tokens (the longest prompt is {longest} tokens), so training would cut "
        f"off every token of their answer. Rows {listed} (counted after cleaning). Raise "
        "max_length, shorten those prompts, or drop those rows."))]


def before_training(rows: list[dict], counter, max_length: int | None,
                    model_folder: str | Path | None, lengths: list[int] | None = None,
                    balanced: dict | None = None, model: str = "the model",
                    mixed: dict | None = None) -> list[Check]:
    """Every check, in the order people read them. Size and balance look at the user's own rows
    (not the general rows `mix_general` adds: `mixed` says what it did)."""
    folder = model_folder if model_folder is not None else counter.folder
    stops = stop_ids(counter, folder) if counter.tokenizer is not None else []
    own = [r for r in rows if not r.get(GENERAL)]
    general = [Check("general data", "ok", mixed["message"])] if mixed else []
    return [size_check(len(own)), balance_check(own, balanced)] + general + \
        stop_check(rows, counter, max_length, stops, model, lengths)
