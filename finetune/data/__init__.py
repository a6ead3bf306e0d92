"""Data: load (files, samples, Hub), detect the format, validate, clean, split, count tokens, stats.

    python -m finetune data inspect my.jsonl [--format F] [--json] [--max-length N]
    python -m finetune data inspect examples.zip       # a folder or an archive of many files

Rows come out normalized: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
(ending with an assistant reply) or {"text": str}. Nothing here imports torch or transformers at
module level.
"""

from finetune.data.clean import dedupe, mask_rows, mask_text
from finetune.data.formats import parse_mapping
from finetune.data.loader import load
from finetune.data.readers import ARCHIVE_TYPES, FILE_TYPES, sample_names, sample_path, write_jsonl
from finetune.data.report import (Analysis, analyze, export, files_line, format_text,
                                  inspect_summary)
from finetune.data.splits import VAL_SHARE, prepare, split, val_rows
from finetune.data.stats import FITS, TRUNCATED, histogram, length_stats, percentile
from finetune.data.tokens import TokenCounter
from finetune.data.types import (FORMAT_HELP, FORMATS, MAPPABLE, Loaded, Problem, Splits,
                                 prompt_and_answer)

__all__ = ["ARCHIVE_TYPES", "FILE_TYPES", "FITS", "FORMAT_HELP", "FORMATS", "MAPPABLE", "TRUNCATED", "VAL_SHARE",
           "Analysis", "Loaded", "Problem", "Splits", "TokenCounter", "analyze", "dedupe", "export",
           "files_line", "format_text", "histogram", "inspect_summary", "length_stats", "load", "mask_rows",
           "mask_text", "parse_mapping", "percentile", "prepare", "prompt_and_answer",
           "sample_names", "sample_path", "split", "val_rows", "write_jsonl"]
