"""`python -m finetune data inspect PATH [--format F] [--json] [--max-length N]`

Prints the detected format, counts, token lengths and problems; exit code 0 when the data can be
trained on, 2 when it cannot. Never downloads: token counts use the bundled model's tokenizer if
it is prepared, and are estimated otherwise (the output says which).
"""

from __future__ import annotations

import json

from finetune.data.formats import parse_mapping
from finetune.data.report import analyze, error_summary, format_text
from finetune.data.stats import TokenCounter, default_tokenizer_dir
from finetune.errors import DataError


def inspect_summary(path: str, fmt: str = "auto", max_length: int | None = None,
                    column_map: str = "") -> dict:
    try:
        counter = TokenCounter(default_tokenizer_dir())
        mapping = parse_mapping(column_map) if column_map else None
        return analyze(path, fmt, mapping=mapping, max_length=max_length, counter=counter).summary
    except DataError as e:
        return error_summary(path, str(e))


def run_inspect(path: str, fmt: str = "auto", as_json: bool = False,
                max_length: int | None = None, column_map: str = "") -> int:
    summary = inspect_summary(path, fmt, max_length, column_map)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if as_json else format_text(summary))
    return 0 if summary["usable"] else 2
