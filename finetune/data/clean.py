"""Cleaning: exact duplicates, rows also held out, optional masking of e-mail addresses and phone
numbers (rows longer than the max length are dropped in report.analyze, where lengths are known).

Empty rows are left out while normalizing (see formats.py); their count travels in Loaded.skipped.

    python -m finetune data inspect my.jsonl --max-length 512   # counts what cleaning would do
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digits in groups (optionally +country, (area)), 7 to 15 digits in all; dates are left alone.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}(?![\w-])")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{2}[./-]\d{2}[./-]\d{4}$")
EMAIL_MASK, PHONE_MASK = "[EMAIL]", "[PHONE]"


def row_key(row: dict):
    """Equal for rows with the same text and turns (the system prompt included)."""
    if "text" in row:
        return row["text"]
    return tuple((m["role"], m["content"]) for m in row["messages"])


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    """Rows without exact repeats (first one kept), and how many repeats were removed."""
    seen: set = set()
    out = []
    for row in rows:
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)


def remove_overlap(rows: list[dict], held_out: list[dict]) -> tuple[list[dict], int]:
    """Training rows that also appear in a held-out split would inflate its scores: remove them."""
    if not held_out:
        return rows, 0
    keys = {row_key(r) for r in held_out}
    out = [r for r in rows if row_key(r) not in keys]
    return out, len(rows) - len(out)


def _mask_phone(match: re.Match) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    return PHONE_MASK if 7 <= digits <= 15 and not DATE.match(text) else text


def mask_text(text: str, emails: bool = True, phones: bool = True) -> tuple[str, int, int]:
    n_email = n_phone = 0
    if emails:
        text, n_email = EMAIL.subn(EMAIL_MASK, text)
    if phones:
        before = text.count(PHONE_MASK)
        text = PHONE.sub(_mask_phone, text)
        n_phone = text.count(PHONE_MASK) - before
    return text, n_email, n_phone


def mask_rows(rows: list[dict], emails: bool = True, phones: bool = True) -> tuple[list[dict], dict]:
    """Copies of the rows with e-mail addresses and phone numbers replaced; counts of each."""
    counts = {"emails": 0, "phones": 0, "rows": 0}
    out = []
    for row in rows:
        changed = False
        if "text" in row:
            text, e, p = mask_text(row["text"], emails, phones)
            new = {"text": text}
            changed = bool(e or p)
            counts["emails"] += e
            counts["phones"] += p
        else:
            messages = []
            for m in row["messages"]:
                text, e, p = mask_text(m["content"], emails, phones)
                messages.append({"role": m["role"], "content": text})
                changed |= bool(e or p)
                counts["emails"] += e
                counts["phones"] += p
            new = {"messages": messages}
        counts["rows"] += changed
        out.append(new)
    return out, counts
