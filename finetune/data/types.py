"""The data package's result types, the known formats, and a collector that keeps problem lists short.

    python -m finetune data inspect my.jsonl     # prints what these hold
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

FORMATS = ["messages", "sharegpt", "alpaca", "prompt_completion", "text"]

# The fields each format reads; any other column is ignored (and listed as such in the summary).
FORMAT_FIELDS = {
    "messages": ["messages", "system"],
    "sharegpt": ["conversations", "system"],
    "alpaca": ["instruction", "input", "output", "system", "history"],
    "prompt_completion": ["prompt", "completion", "system"],
    "text": ["text"],
}
FORMAT_HELP = {
    "messages": "column 'messages': a list of {role, content} (OpenAI)",
    "sharegpt": "column 'conversations': a list of {from, value} (ShareGPT: human/gpt/system)",
    "alpaca": "columns instruction, input (optional), output (Alpaca)",
    "prompt_completion": "columns prompt, completion",
    "text": "column 'text' (raw text; one document per line in a .txt file)",
}
MAPPABLE = sorted({f for fields in FORMAT_FIELDS.values() for f in fields})

ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user",
         "assistant": "assistant", "gpt": "assistant", "model": "assistant"}

MAX_EXAMPLES = 5  # individual messages per kind of problem before they are summarized


def prompt_and_answer(row: dict) -> tuple[list[dict], str] | None:
    """(prompt messages, answer) of a chat row: the loss is on the last assistant turn, everything
    before it is context. None when the row has no assistant turn after some context."""
    messages = row.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
    if last == 0:
        return None
    return messages[:last], messages[last]["content"]


@dataclass
class Problem:
    level: str  # "error" (data unusable as is) | "warning"
    message: str  # names file, line/row and field, and what was expected


@dataclass
class Loaded:
    rows: list[dict]  # {"messages": [{"role", "content"}, ...]} or {"text": str}
    format: str
    source: str
    columns: list[str]
    problems: list[Problem]
    n_raw: int  # rows read before normalization/cleaning
    detected: bool = True  # False when the format was forced
    skipped: dict = field(default_factory=dict)  # reason -> rows left out while normalizing
    mapping: dict = field(default_factory=dict)  # field this tool reads -> the user's column
    mapping_guessed: bool = False  # True when `mapping` was chosen from common column names
    files: dict | None = None  # a folder or archive: {"read": {kind: n}, "read_total", "not_read"}

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def ignored_columns(self) -> list[str]:
        used = {self.mapping.get(f, f) for f in FORMAT_FIELDS.get(self.format, [])}
        return [c for c in self.columns if c not in used]


@dataclass
class Splits:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    report: dict  # counts per split, what cleaning removed, the source of each split


class ProblemLog:
    """Collects problems by kind; a kind seen in many rows becomes a few examples plus a count."""

    def __init__(self, source: str):
        self.source = source
        self.joiner = " "  # between the source and a message; "/" for a file in a folder or archive
        self._by_kind: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._order: list[tuple[str, str]] = []
        self._summary: dict[tuple[str, str], str] = {}

    def add(self, level: str, kind: str, message: str, summary: str = "") -> None:
        key = (level, kind)
        if key not in self._by_kind:
            self._order.append(key)
        self._by_kind[key].append(message)
        if summary:
            self._summary[key] = summary

    def count_kind(self, kind: str) -> int:
        return sum(len(v) for (_, k), v in self._by_kind.items() if k == kind)

    def problems(self) -> list[Problem]:
        out = []
        for key in sorted(self._order, key=lambda k: k[0] != "error"):  # errors first, stable
            level, kind = key
            messages = self._by_kind[key]
            shown = messages if len(messages) <= MAX_EXAMPLES else messages[:MAX_EXAMPLES - 1]
            out += [Problem(level, f"{self.source}{self.joiner}{m}") for m in shown]
            rest = len(messages) - len(shown)
            if rest:
                what = self._summary.get(key, kind)
                out.append(Problem(level, f"{self.source}: {rest} more rows with the same problem "
                                          f"({what}); {len(messages)} in all."))
        return out
