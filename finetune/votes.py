"""Blind A/B votes by people: a run's base and tuned models answer the same message, shown as
"A" and "B" in an order kept on the server; the person picks the better one or a tie. Votes are
saved with the run (votes.jsonl in its directory) and tallied with a confidence interval.

    python app.py      # the Chat tab's blind test asks; the Evaluate tab and the model card tally

The owner and visitors of the public link vote alike; visitors answer under the same limits as
chat (finetune.access.Gate, through `chat.converse`).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path

from finetune.errors import DataError, RunError

VOTES = "votes.jsonl"
PICKS = {"A": 0, "B": 1, "tie": None}
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
_lock = threading.Lock()  # one append at a time within this app


def ask(choice: str | None, message: str, system: str = "", settings=None, who=None, gate=None,
        client: str = "") -> dict:
    """Both answers of the picked run to `message`, in a random order: the pair a vote is about
    (kept on the server: the page gets the answers as 'A' and 'B', never which is which). Both are
    generated before either is shown, so the order of generation gives nothing away."""
    from finetune import chat, runinfo

    if not choice or choice.startswith(chat.MODEL_PREFIX):
        raise RunError("A blind test compares a run's base and tuned models: pick a run in the "
                       "list (train one in the Train tab if there is none).")
    if not (message or "").strip():
        raise DataError("Type a message first: the blind test answers it with both models.")
    left = right = None
    for _, shown_left, shown_right in chat.converse(choice, chat.BOTH, message, (None, [], []),
                                                    system, settings, who, gate, client):
        left, right = shown_left, shown_right
    answers = {"base": _last_answer(left), "tuned": _last_answer(right)}
    order = ["base", "tuned"]
    random.SystemRandom().shuffle(order)
    return {"run": runinfo.named_run(choice).name, "prompt": message, "order": order,
            "answers": answers}


def _last_answer(window) -> str:
    for m in reversed(window or []):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


def shown(pair: dict | None) -> tuple[str, str]:
    """The answers as the page shows them: (A, B)."""
    if not pair:
        return "", ""
    return pair["answers"][pair["order"][0]], pair["answers"][pair["order"][1]]


def record(pair: dict | None, pick: str, by: str = "owner") -> dict:
    """Save one vote on `pair` ('A', 'B' or 'tie') in its run's votes.jsonl; the vote as saved."""
    from finetune import runinfo

    if not pair:
        raise RunError("Ask a question first: each pair of answers takes one vote.")
    if pick not in PICKS:
        raise RunError(f"A vote is A, B or tie, not {pick!r}.")
    run_dir = runinfo.named_run(pair["run"])
    index = PICKS[pick]
    vote = {"time": round(time.time(), 1), "prompt": pair["prompt"][:500],
            "winner": "tie" if index is None else pair["order"][index],
            "order": pair["order"], "by": by}
    with _lock, open(run_dir / VOTES, "a", encoding="utf-8") as f:
        f.write(json.dumps(vote, ensure_ascii=False) + "\n")
    return vote


def read(run_dir: Path) -> list[dict]:
    from finetune import runinfo

    return runinfo.read_jsonl(Path(run_dir) / VOTES)


def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share wins/n (sound for small n and shares near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def tally(run_dir: Path) -> dict:
    """Wins (tuned picked), losses (base picked), ties, and the share of decided votes the tuned
    model won with its 95% Wilson interval; `text` says it in words."""
    votes = read(run_dir)
    wins = sum(v["winner"] == "tuned" for v in votes)
    losses = sum(v["winner"] == "base" for v in votes)
    ties = sum(v["winner"] == "tie" for v in votes)
    out = {"votes": len(votes), "wins": wins, "losses": losses, "ties": ties}
    decided = wins + losses
    if not votes:
        out["text"] = ("No blind votes yet: in the Chat tab, the blind test shows base and tuned "
                       "answers in a hidden order and asks which is better.")
        return out
    low, high = wilson(wins, decided)
    out.update(share=wins / decided if decided else None, low=low, high=high)
    share = (f"the tuned model won {100 * wins / decided:.0f}% of the {decided} decided votes "
             f"(95% interval {100 * low:.0f}-{100 * high:.0f}%)" if decided else
             "no vote picked a side yet")
    out["text"] = (f"Blind votes by people: {len(votes)} in all; tuned better {wins}, base "
                   f"better {losses}, tie {ties}: {share}.")
    return out
