"""Detect the format of raw rows and normalize them to chat `messages` (or `text`).

Formats: messages (OpenAI role/content), sharegpt (conversations with from/value), alpaca
(instruction/input/output), prompt_completion, text. A column mapping renames the user's columns
to these names first, e.g. {"prompt": "question", "completion": "answer"}.

    python -m finetune data inspect my.jsonl --format alpaca
"""

from __future__ import annotations

import math
from collections import Counter

import orjson

from finetune.data.readers import RawTable
from finetune.data.types import FORMAT_HELP, FORMATS, MAPPABLE, ROLES, ProblemLog
from finetune.errors import DataError

# Column names people often use, read without a mapping: the first entry whose columns all exist
# (compared without case) wins. Each is {field this tool reads: the user's column}; optional
# columns are added when present. Instruction data with a context column (Dolly) reads as Alpaca.
COMMON_MAPPINGS = [
    {"instruction": "instruction", "input": "context", "output": "response"},
    {"instruction": "instruction", "output": "response"},
    {"instruction": "instruction", "output": "answer"},
    {"prompt": "question", "completion": "answer"},
    {"prompt": "question", "completion": "response"},
    {"prompt": "query", "completion": "response"},
    {"prompt": "query", "completion": "answer"},
    {"prompt": "prompt", "completion": "response"},
    {"prompt": "prompt", "completion": "answer"},
    {"prompt": "prompt", "completion": "output"},
    {"prompt": "input", "completion": "output"},
    {"prompt": "input", "completion": "target"},
    {"prompt": "input", "completion": "response"},
    {"prompt": "source", "completion": "target"},
    {"prompt": "user", "completion": "assistant"},
    {"prompt": "human", "completion": "assistant"},
    {"prompt": "human", "completion": "gpt"},
    {"prompt": "q", "completion": "a"},
]
_OPTIONAL = {"system": ("system", "system_prompt")}


MAP_HOW = ("column mapping in the Data tab, --map in `data inspect`, --column-map in `train`")


def parse_mapping(text: str) -> dict[str, str]:
    """'prompt=question, completion=answer' -> {'prompt': 'question', 'completion': 'answer'}."""
    mapping = {}
    for part in (text or "").replace("\n", ",").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise DataError(f"Column mapping '{part.strip()}': write it as field=your_column, "
                            "e.g. prompt=ticket, completion=category.")
        key, _, value = part.partition("=")
        mapping[key.strip()] = value.strip()
    return mapping


def mapping_text(mapping: dict[str, str]) -> str:
    """The inverse of parse_mapping: {'prompt': 'question'} -> 'prompt=question'."""
    return ", ".join(f"{field}={column}" for field, column in mapping.items())


REQUIRED = {"messages": ("messages",), "sharegpt": ("conversations",),
            "alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
            "text": ("text",)}


def row_format(row: dict, forced: str | None = None) -> str | None:
    """The format a row is in: the forced one when the row has its fields, else the first match."""
    if forced and all(f in row for f in REQUIRED[forced]):
        return forced
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def common_mapping(columns: list[str], fmt: str = "auto") -> dict[str, str]:
    """The mapping that reads common column names (question/answer, query/response, ...) as one
    of our formats, {} when none fits; with a forced format only a mapping to that format."""
    lower = {}
    for column in columns:
        lower.setdefault(str(column).strip().lower(), column)
    for candidate in COMMON_MAPPINGS:
        target = row_format(dict.fromkeys(candidate))
        if fmt not in ("auto", target) or not all(c in lower for c in candidate.values()):
            continue
        mapping = {field: lower[c] for field, c in candidate.items()}
        for field, names in _OPTIONAL.items():
            found = next((lower[n] for n in names if n in lower), None)
            if found is not None and found != field:
                mapping[field] = found
        return mapping
    return {}


def normalize(table: RawTable, fmt: str, mapping: dict | None, system_prompt: str,
              log: ProblemLog) -> tuple[list[dict], str, dict, dict]:
    """(normalized rows, format, skipped counts, the mapping chosen from common column names or
    {}); row problems go to `log`."""
    if fmt not in ["auto"] + FORMATS:
        raise DataError(f"Unknown data format '{fmt}'; choose auto or one of {', '.join(FORMATS)}.")
    mapping = {k: v for k, v in (mapping or {}).items() if v}
    rows = _apply_mapping(table, mapping)
    forced = None if fmt == "auto" else fmt
    kinds = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            kinds.append(row_format(row, forced))
        else:
            kinds.append("not-an-object")
            log.add("error", "not an object", f"{table.where(i)}: expected a JSON object "
                    f"({{\"messages\": [...]}}), got {_kind(row)}. Row skipped.")
    # Rows in no known format may use common column names: read those as the names they stand for.
    guessed = common_mapping(table.columns, fmt) if not mapping and None in kinds else {}
    if guessed:
        rows = list(rows)
        for i, kind in enumerate(kinds):
            if kind is None:
                rows[i] = _rename(rows[i], guessed)
                kinds[i] = row_format(rows[i], forced)
    counts = Counter(k for k in kinds if k in FORMATS)
    if not any(k != "not-an-object" for k in kinds):
        return [], fmt, {"invalid": len(kinds)} if kinds else {}, guessed  # the log says why
    if fmt == "auto":
        if not counts:
            raise DataError(_unknown_columns(table))
        fmt = counts.most_common(1)[0][0]
    elif fmt not in counts:
        raise DataError(_unknown_columns(table, forced=fmt))
    convert = _CONVERTERS[fmt]
    out, skipped = [], Counter()
    for i, (row, kind) in enumerate(zip(rows, kinds)):
        if kind != fmt:
            if kind == "not-an-object":
                skipped["invalid"] += 1
                continue
            skipped["other format"] += 1
            found = ", ".join(map(str, row)) or "no fields"
            what = f"is {kind} ({FORMAT_HELP[kind]})" if kind else f"has no known fields (found: {found})"
            log.add("error", "mixed formats",
                    f"{table.where(i)}: this row {what}, but the data is {fmt} ({FORMAT_HELP[fmt]}). "
                    "Rows must all have one format: convert or remove this row.",
                    summary=f"rows that are not {fmt}")
            continue
        where = table.where(i)
        try:
            result = convert(row, where, log)
        except _Skip:
            skipped["unusable"] += 1
            continue
        if result is None:
            skipped["empty"] += 1
            continue
        if "messages" in result:
            _add_system(result["messages"], row.get("system"), system_prompt)
        out.append(result)
    return out, fmt, dict(skipped), guessed


# --- per-format converters: return a normalized row, None for an empty row, or raise _Skip ------


class _Skip(Exception):
    """The row was reported to the log and is left out."""


def _from_messages(row, where, log, field="messages"):
    return _conversation(row[field], where, field, log)


def _from_sharegpt(row, where, log):
    return _from_messages(row, where, log, field="conversations")


def _from_alpaca(row, where, log):
    instruction = _text(row.get("instruction"), where, "instruction", log)
    extra = _text(row.get("input"), where, "input", log)
    output = _text(row.get("output"), where, "output", log)
    user = "\n\n".join(p for p in (instruction, extra) if p.strip())
    messages = []
    history = row.get("history") or []
    if not isinstance(history, list):
        _fail(log, "bad history", f"{where}, field 'history': expected a list of "
              f"[instruction, answer] pairs, got {_kind(history)}. Row skipped.")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            _fail(log, "bad history", f"{where}, field 'history[{j}]': expected an "
                  f"[instruction, answer] pair, got {_kind(pair)}. Row skipped.")
        messages += [{"role": "user", "content": _text(pair[0], where, f"history[{j}][0]", log)},
                     {"role": "assistant", "content": _text(pair[1], where, f"history[{j}][1]", log)}]
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return _finish(messages, where, "output", log)


def _from_prompt_completion(row, where, log):
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL conversational form
        turns = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + \
                (completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}])
        return _conversation(turns, where, "prompt+completion", log)
    messages = [{"role": "user", "content": _text(prompt, where, "prompt", log)},
                {"role": "assistant", "content": _text(completion, where, "completion", log)}]
    return _finish(messages, where, "completion", log)


def _from_text(row, where, log):
    text = _text(row.get("text"), where, "text", log)
    return {"text": text} if text.strip() else None


_CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
               "prompt_completion": _from_prompt_completion, "text": _from_text}


def _conversation(turns, where, field, log):
    if isinstance(turns, str):  # a JSON string in a CSV cell or a stringified column
        try:
            turns = orjson.loads(turns)
        except orjson.JSONDecodeError:
            pass
    if isinstance(turns, dict):
        _fail(log, "object instead of list", f"{where}, field '{field}': a JSON object where a list "
              f"of messages was expected (got keys {', '.join(map(str, turns))[:80]}); write "
              f"[{{\"role\": \"user\", \"content\": ...}}, ...].")
    if turns is None or (isinstance(turns, list) and not turns):
        return None
    if not isinstance(turns, list):
        _fail(log, "not a list", f"{where}, field '{field}': expected a list of messages, got "
              f"{_kind(turns)}. Row skipped.")
    try:  # fast path for well-formed rows; `+ ""` raises TypeError unless the content is text
        messages = [{"role": ROLES[t["role"]], "content": t["content"] + ""} for t in turns]
    except (KeyError, TypeError):
        messages = [_turn(turn, where, f"{field}[{j}]", log) for j, turn in enumerate(turns)]
    return _finish(messages, where, f"{field}[{len(messages) - 1}].content", log, field)


def _turn(turn, where, field, log) -> dict:
    if not isinstance(turn, dict):
        _fail(log, "bad message", f"{where}, {field}: expected an object with role and "
              f"content, got {_kind(turn)}. Row skipped.")
    role = turn.get("role", turn.get("from"))
    if role is None:
        _fail(log, "no role", f"{where}, {field}: no 'role' (or ShareGPT 'from') field; "
              f"found {', '.join(map(str, turn)) or 'no fields'}. Row skipped.")
    mapped = ROLES.get(str(role).strip().lower())
    if mapped is None:
        _fail(log, f"unknown role {role!r}",
              f"{where}, {field}.{'role' if 'role' in turn else 'from'}: unknown role "
              f"{role!r}; expected system, user or assistant (ShareGPT: system, human, gpt). "
              "Row skipped.", summary=f"unknown role {role!r}")
    content = turn.get("content", turn.get("value", turn.get("text")))
    return {"role": mapped, "content": _text(content, where, f"{field}.content", log)}


def _finish(messages, where, answer_field, log, field=None):
    """Empty rows -> None; the row must end with a non-empty assistant reply."""
    last = messages[-1]
    if last["role"] == "assistant" and last["content"].strip():
        return {"messages": messages}
    if not any(m["content"].strip() for m in messages):
        return None
    if last["role"] != "assistant":
        _fail(log, "no final answer", f"{where}, field '{field}': the last message is from "
              f"'{last['role']}'; a training row must end with an assistant reply (what the model "
              "learns to write). Row skipped.", summary="conversation does not end with an assistant reply")
    if not last["content"].strip():
        _fail(log, "empty response", f"{where}, field '{answer_field}': the assistant reply is "
              "empty; there is nothing to learn from this row. Row skipped.", summary="empty response")
    return {"messages": messages}


def _text(value, where, field, log) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, float, bool)):
        return str(value)
    if isinstance(value, list) and all(isinstance(b, dict) for b in value):  # content blocks
        if all(b.get("type", "text") == "text" for b in value):
            return "".join(str(b.get("text", "")) for b in value)
        kinds = sorted({str(b.get("type")) for b in value} - {"text"})
        _fail(log, "non-text content", f"{where}, field '{field}': holds {', '.join(kinds)} "
              "content; only text can be trained here. Row skipped.")
    _fail(log, "not text", f"{where}, field '{field}': expected text, got {_kind(value)}. Row skipped.")


def _add_system(messages, column, system_prompt):
    if messages and messages[0]["role"] == "system":
        return
    system = column if isinstance(column, str) and column.strip() else system_prompt
    if system and system.strip():
        messages.insert(0, {"role": "system", "content": system})


def _fail(log, kind, message, summary=""):
    log.add("warning", kind, message, summary=summary or kind)
    raise _Skip


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "text", type(None): "null", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), f"a {type(value).__name__}")


# --- mapping and the unknown-columns message ---------------------------------------------------


def _apply_mapping(table: RawTable, mapping: dict) -> list:
    if not mapping:
        return table.rows
    bad = [k for k in mapping if k not in MAPPABLE]
    if bad:
        raise DataError(f"Column mapping: {', '.join(map(repr, bad))} is not a field this tool "
                        f"reads; map your columns to {', '.join(MAPPABLE)}.")
    missing = [v for v in mapping.values() if v not in table.columns]
    if missing:
        raise DataError(f"Column mapping: {', '.join(map(repr, missing))} is not a column of "
                        f"{table.label}; its columns are {', '.join(table.columns) or 'none'}.")
    return [_rename(row, mapping) if isinstance(row, dict) else row for row in table.rows]


def _rename(row: dict, mapping: dict) -> dict:
    row = dict(row)
    for field, column in mapping.items():
        if column in row:
            row[field] = row.pop(column)
    return row


def _unknown_columns(table: RawTable, forced: str | None = None) -> str:
    found = ", ".join(table.columns) or "no named columns"
    if forced:
        head = (f"{table.label}: format '{forced}' needs the field(s) {', '.join(REQUIRED[forced])}, "
                f"but the columns are: {found}.")
    else:
        head = f"{table.label}: no known data format in the columns found ({found})."
    expected = "; ".join(FORMAT_HELP[f] for f in FORMATS)
    text = f"{head} Expected one of: {expected}."
    return (f"{text} Map your columns to these names ({MAP_HOW}), e.g. prompt=ticket, "
            "completion=category.")
