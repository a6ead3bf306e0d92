"""The forgetting probe: a few dozen general-knowledge questions with short known answers that
the project ships (finetune/samples/probe/questions.jsonl), answered by the base and the tuned
model in every evaluation. A drop means the tuned model lost some of what it knew (catastrophic
forgetting); mixing general instruction data into training (`mix_general`) is the usual remedy,
and a run with and one without can be compared on this probe.

    python -m finetune eval runs/NAME      # eval.json gets 'probe'; the Evaluate tab and the
                                           # model card show base vs tuned on it

An answer counts as right when it contains one of the accepted answers as a whole word (case
ignored): "The capital of France is Paris." is right for Paris.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PROBE_FILE = Path(__file__).resolve().parent / "samples" / "probe" / "questions.jsonl"
MAX_NEW_TOKENS = 32  # a short answer and a little more: room to name it, not to ramble on
ASK = "{question} Answer in a few words."
FORGOT = 3  # the tuned model answers at least this many fewer questions: flagged


def questions() -> list[dict]:
    """[{'question': str, 'answers': [accepted, ...]}] in file order."""
    return [json.loads(line) for line in PROBE_FILE.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def prompts(items: list[dict] | None = None) -> list[list[dict]]:
    """The chat prompts: the question alone, with no system prompt (general use, not the task)."""
    return [[{"role": "user", "content": ASK.format(question=q["question"])}]
            for q in (items or questions())]


def is_right(answer: str, accepted: list[str]) -> bool:
    text = (answer or "").lower()
    return any(re.search(r"(?<!\w)" + re.escape(a.lower()) + r"(?!\w)", text) for a in accepted)


def answer(model, tokenizer) -> list[str]:
    """One model's greedy answers to the probe (what evaluation calls with each loaded model).
    One batch: the prompts are short, and a few dozen rows at once cost a CPU little more than
    eight (memory: ~50 rows x ~80 tokens of cache)."""
    from finetune import generation

    items = prompts()
    return generation.generate_batch(model, tokenizer, items, MAX_NEW_TOKENS,
                                     batch_size=len(items))


def report(answers: dict[str, list[str]], training_answers: list[str] | None = None,
           count_tokens=None, mixed: float = 0.0) -> dict:
    """What eval.json keeps under 'probe': per model the right answers and the score, the drop
    from base to tuned, each question with both answers, the writing systems of the answers
    against the training answers' (`finetune.drift`), and `flags` in words; `mixed`: the share of
    general rows the run mixed in (the advice then differs)."""
    items = questions()
    out: dict = {"questions": len(items), "max_new_tokens": MAX_NEW_TOKENS, "models": {},
                 "items": [], "flags": []}
    for kind, texts in answers.items():
        right = [is_right(a, q["answers"]) for a, q in zip(texts, items)]
        out["models"][kind] = {"right": sum(right), "score": sum(right) / len(items)}
    for i, q in enumerate(items):
        item = {"question": q["question"], "expected": q["answers"][0]}
        for kind, texts in answers.items():
            item[kind] = texts[i]
            item[f"{kind}_right"] = is_right(texts[i], q["answers"])
        out["items"].append(item)
    base, tuned = out["models"].get("base"), out["models"].get("tuned")
    if base and tuned:
        out["drop"] = base["score"] - tuned["score"]
        out["lost"] = sum(1 for x in out["items"] if x["base_right"] and not x["tuned_right"])
        out["gained"] = sum(1 for x in out["items"] if x["tuned_right"] and not x["base_right"])
        if base["right"] - tuned["right"] >= FORGOT:
            out["flags"].append(
                f"The tuned model forgot general knowledge: it answers {tuned['right']} of "
                f"{len(items)} probe questions right, the base model {base['right']} (lost "
                f"{out['lost']}, gained {out['gained']}). " + (
                    f"{mixed:.0%} general rows were mixed in already: try a larger share, a "
                    "lower learning rate or fewer passes, and compare on this probe."
                    if mixed else "Mix general instruction data into training (mix_general, "
                    "e.g. 0.2) and compare the two runs on this probe."))
    if training_answers is not None and count_tokens is not None:
        from finetune import drift

        # the probe's own answers are English: Latin letters are expected whatever the task
        found = drift.assess(answers, training_answers, [q["question"] for q in items],
                             MAX_NEW_TOKENS, count_tokens, also_known={"Latin"}, runaway=False)
        out["drift"] = found
        out["flags"] += [f.replace("tuned answers", "tuned answers to the probe")
                         for f in found["flags"]]
    return out


def findings(report: dict) -> list[str]:
    """The probe in words: base vs tuned, and each flag; [] for an eval.json without it."""
    probe = report.get("probe")
    if not probe or "drop" not in probe:
        return []
    base, tuned = probe["models"]["base"], probe["models"]["tuned"]
    n = probe["questions"]
    line = (f"General knowledge (the probe's {n} questions): base {base['right']} of {n} "
            f"({100 * base['score']:.0f}%), tuned {tuned['right']} of {n} "
            f"({100 * tuned['score']:.0f}%); lost {probe['lost']}, gained {probe['gained']}.")
    return [line] + list(probe.get("flags", []))
