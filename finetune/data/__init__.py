"""Data: load (files, samples, Hub), detect the format, validate, clean, split, stats, preview.

    python -m finetune data inspect my.jsonl [--format F] [--json] [--max-length N]

Rows come out normalized: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
(ending with an assistant reply) or {"text": str}.
"""

from finetune.data.formats import parse_mapping
from finetune.data.loader import load
from finetune.data.readers import FILE_TYPES, sample_names, sample_path
from finetune.data.splits import prepare
from finetune.data.types import FORMATS, Loaded, Problem, Splits

__all__ = ["FILE_TYPES", "FORMATS", "Loaded", "Problem", "Splits", "load", "parse_mapping",
           "prepare", "sample_names", "sample_path"]
