"""Data: load (files, samples, Hub), detect the format, validate, clean, split, stats, preview.

    python -m finetune data inspect my.jsonl [--format F] [--json] [--max-length N]

Rows come out normalized: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
(ending with an assistant reply) or {"text": str}. Nothing here imports torch or transformers at
module level.
"""

from finetune.data.clean import dedupe, drop_long, mask_rows, mask_text
from finetune.data.formats import parse_mapping
from finetune.data.loader import load
from finetune.data.readers import FILE_TYPES, sample_names, sample_path, write_jsonl
from finetune.data.report import Analysis, analyze, format_text
from finetune.data.splits import prepare, split
from finetune.data.stats import (FITS, TRUNCATED, TokenCounter, default_tokenizer_dir, histogram,
                                 length_stats, load_preview_tokenizer, render_example)
from finetune.data.types import FORMAT_HELP, FORMATS, MAPPABLE, Loaded, Problem, Splits

__all__ = ["FILE_TYPES", "FITS", "FORMAT_HELP", "FORMATS", "MAPPABLE", "TRUNCATED", "Analysis",
           "Loaded", "Problem", "Splits", "TokenCounter", "analyze", "dedupe",
           "default_tokenizer_dir", "drop_long", "format_text", "histogram", "length_stats", "load",
           "load_preview_tokenizer", "mask_rows", "mask_text", "parse_mapping", "prepare",
           "render_example", "sample_names", "sample_path", "split", "write_jsonl"]
