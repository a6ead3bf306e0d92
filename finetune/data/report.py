"""One pass over a source for people: load, clean, measure, and a summary of what was understood.

Shared by `python -m finetune data inspect`, `data export` and the Data tab, so all say the same.

    python -m finetune data inspect my.jsonl --json
    python -m finetune data export my_files.zip --out cleaned.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from finetune.data import checks, clean
from finetune.data.loader import load
from finetune.data.readers import write_jsonl
from finetune.data.formats import mapping_text, parse_mapping
from finetune.data.stats import length_stats
from finetune.data.tokens import TokenCounter
from finetune.data.types import FORMAT_HELP, Loaded, Problem
from finetune.errors import DataError


@dataclass
class Analysis:
    loaded: Loaded
    rows: list[dict]  # after cleaning: duplicates removed, masked, long rows dropped if asked
    lengths: list[int]  # tokens per row of `rows`
    summary: dict  # JSON-ready: see summarize()


def analyze(source: str, fmt: str = "auto", mapping: dict | None = None, system_prompt: str = "",
            max_length: int | None = None, mask_emails: bool = False, mask_phones: bool = False,
            drop_long: bool = False, counter: TokenCounter | None = None,
            choose_cut: Callable[[list[int]], int] | None = None) -> Analysis:
    """Raises DataError when the source cannot be read at all. `choose_cut`, when given, picks
    the max length from the counted lengths (the Train tab's 'auto' cut) instead of max_length."""
    loaded = load(source, fmt, mapping=mapping, system_prompt=system_prompt)
    rows, duplicates = clean.dedupe(loaded.rows)
    masked = None
    if mask_emails or mask_phones:
        rows, masked = clean.mask_rows(rows, emails=mask_emails, phones=mask_phones)
    counter = counter or TokenCounter(None)
    if choose_cut is not None and rows:
        lengths, max_length = counter.lengths_and_cut(rows, choose_cut)
    else:
        lengths = counter.lengths(rows, max_length)
    problems = list(loaded.problems)
    tokens = {**length_stats(lengths, max_length), "counted_with": counter.note,
              "exact": counter.exact}
    dropped = 0
    longer = tokens.get("longer", 0)
    if max_length and drop_long and longer:
        kept = [(r, n) for r, n in zip(rows, lengths) if n <= max_length]
        dropped = len(rows) - len(kept)
        rows, lengths = [r for r, _ in kept], [n for _, n in kept]
    elif longer:
        problems.append(Problem("warning", long_rows_message(longer, len(rows), max_length,
                                                             tokens["max"])))
    if not rows:
        problems.append(Problem("error", f"{source}: no rows are left after cleaning "
                                         f"({dropped} longer than {max_length} tokens dropped)."))
    found = checks.before_training(rows, counter, max_length, None, lengths) if rows else []
    problems += [Problem(c.level, c.message) for c in found if c.level != "ok"]
    summary = {
        "source": source,
        "format": loaded.format,
        "format_detected": loaded.detected,
        "format_help": FORMAT_HELP[loaded.format],
        "columns": loaded.columns,
        "files": loaded.files,
        "mapping": mapping_text(loaded.mapping),
        "mapping_detected": loaded.mapping_guessed,
        "ignored_columns": loaded.ignored_columns,
        "rows": {"read": loaded.n_raw, "usable": len(loaded.rows), "duplicates": duplicates,
                 "empty": loaded.skipped.get("empty", 0),
                 "skipped": sum(n for k, n in loaded.skipped.items() if k != "empty"),
                 "long_dropped": dropped, "kept": len(rows)},
        "masked": masked,
        "tokens": tokens,
        "problems": [{"level": p.level, "message": p.message} for p in problems],
        "checks": [c.as_dict() for c in found],
        "usable": bool(rows) and not any(p.level == "error" for p in problems),
    }
    return Analysis(loaded, rows, lengths, summary)


def long_rows_message(longer: int, total: int, max_length: int, longest: int) -> str:
    return (f"{longer} of {total} rows are longer than the max length of {max_length} tokens "
            f"(longest: {longest}). Training truncates them to {max_length} tokens, which cuts "
            "the end of the reply. Choose: raise max_length, or drop these rows (Data tab: "
            "'Drop rows longer than the max length').")


def files_line(files: dict) -> str:
    """'10000 read (9998 .json, 2 .txt), 3 not read (listed under problems)'."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in files["read"].items())
    line = f"{files['read_total']} read" + (f" ({kinds})" if kinds else "")
    if files["not_read"]:
        line += f", {len(files['not_read'])} not read (each listed under problems)"
    return line


def error_summary(source: str, message: str) -> dict:
    return {"source": source, "usable": False,
            "problems": [{"level": "error", "message": message}]}


def inspect_summary(path: str, fmt: str = "auto", max_length: int | None = None,
                    column_map: str = "", counter: TokenCounter | None = None) -> dict:
    """What `data inspect` prints: the summary of analyze(), or the reason nothing could be read.
    Never downloads: without a `counter`, the default model's tokenizer counts when it is already
    prepared, and counts are estimated otherwise (the summary says which)."""
    try:
        mapping = parse_mapping(column_map) if column_map else None
        return analyze(path, fmt, mapping=mapping, max_length=max_length,
                       counter=counter or default_counter()).summary
    except DataError as e:
        return error_summary(path, str(e))


def default_counter() -> TokenCounter:
    """The default model's tokenizer when it is already prepared, an estimate otherwise."""
    from finetune import models
    from finetune.config import DEFAULT_MODEL

    return TokenCounter(models.model_files(DEFAULT_MODEL))


def export(source: str, out: str, fmt: str = "auto", column_map: str = "",
           mask_emails: bool = False, mask_phones: bool = False, max_length: int | None = None,
           drop_long: bool = False) -> dict:
    """`data export`: the rows of `source`, normalized ({"messages": [...]} or {"text": ...}) and
    cleaned as inspect and the Data tab show them, written to `out` as JSONL. Returns the
    summary with the path written; DataError when the data still has errors (each named)."""
    if drop_long and not max_length:
        raise DataError("Dropping long rows needs a max length (--max-length N).")
    mapping = parse_mapping(column_map) if column_map else None
    analysis = analyze(source, fmt, mapping=mapping, max_length=max_length,
                       mask_emails=mask_emails, mask_phones=mask_phones, drop_long=drop_long,
                       counter=default_counter() if max_length else TokenCounter(None))
    errors = [p["message"] for p in analysis.summary["problems"] if p["level"] == "error"]
    if errors:
        listed = "\n  - ".join(errors[:8])
        raise DataError(f"{source} has {len(errors)} problem(s) to fix before it can be exported "
                        f"(nothing was written):\n  - {listed}")
    write_jsonl(analysis.rows, Path(out).expanduser())
    return {**analysis.summary, "written": str(out)}


def format_text(summary: dict) -> str:
    """The summary as plain text for a terminal."""
    lines = [f"source:   {summary['source']}"]
    if "format" in summary:
        how = "detected" if summary["format_detected"] else "as requested"
        lines.append(f"format:   {summary['format']} ({how}: {summary['format_help']})")
        ignored = summary["ignored_columns"]
        lines.append(f"columns:  {', '.join(summary['columns'])}"
                     + (f"  (ignored: {', '.join(ignored)})" if ignored else ""))
        if summary.get("mapping"):
            how = ("recognised from the column names; --map changes it"
                   if summary["mapping_detected"] else "as given with --map")
            lines.append(f"mapping:  {summary['mapping']} ({how})")
        if summary.get("files"):
            lines.append(f"files:    {files_line(summary['files'])}")
        r = summary["rows"]
        lines.append(f"rows:     {r['read']} read, {r['usable']} usable, {r['kept']} after cleaning")
        lines.append(f"cleaning: {r['duplicates']} exact duplicates removed, {r['empty']} empty "
                     f"rows, {r['skipped']} rows skipped for problems"
                     + (f", {r['long_dropped']} too long dropped" if r["long_dropped"] else ""))
        if summary.get("masked"):
            m = summary["masked"]
            lines.append(f"masked:   {m['emails']} e-mail addresses, {m['phones']} phone numbers "
                         f"in {m['rows']} rows")
        t = summary["tokens"]
        if "max" in t:
            lines.append(f"tokens:   min {t['min']}, median {t['median']}, 95% {t['p95']}, "
                         f"max {t['max']} per row; counted with {t['counted_with']}")
        if "max_length" in t:
            lines.append(f"          {t['longer']} rows longer than --max-length {t['max_length']}")
        else:
            lines.append("          (--max-length N counts the rows that would be truncated)")
    for c in summary.get("checks", []):
        if c["level"] == "ok":
            lines.append(f"check:    {c['name']}: {c['message']}")
    problems = summary["problems"]
    lines.append(f"problems: {len(problems) or 'none'}")
    lines += [f"  {p['level'].upper()}: {p['message']}" for p in problems]
    lines.append("usable:   " + ("yes" if summary["usable"] else
                                 "no - fix the errors above, then inspect again"))
    return "\n".join(lines)
