"""Token-length statistics and their histogram with the cut-off marked (the counting itself is
`finetune.data.tokens.TokenCounter`).

    python -m finetune data inspect my.jsonl --max-length 512
"""

from __future__ import annotations

import math
from collections import Counter

FITS, TRUNCATED = "fits", "longer than max length (truncated)"  # histogram bar colours


def percentile(values: list[int], q: float) -> int:
    """The smallest value with at least a share q of the values at or below it."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def length_stats(lengths: list[int], max_length: int | None) -> dict:
    if not lengths:
        return {}
    s = sorted(lengths)
    out = {"min": s[0], "median": percentile(s, 0.5), "p95": percentile(s, 0.95), "max": s[-1],
           "mean": round(sum(s) / len(s), 1), "total": sum(s)}
    if max_length:
        out["max_length"] = max_length
        out["longer"] = sum(1 for n in s if n > max_length)
    return out


def histogram(lengths: list[int], max_length: int | None = None, bins: int = 24):
    """A DataFrame for gr.BarPlot: one row per bin ('tokens' label, 'rows' count) in order, and
    'part' saying whether the bin fits within max_length or would be truncated. The cut-off is
    always a bin edge; bins above it have the same width, the far tail folded into the last.
    Labels start with the bin's lowest count, padded with spaces so that text order is bin order."""
    import pandas as pd

    if not lengths:
        return pd.DataFrame({"tokens": [], "rows": [], "part": []})
    low, top = min(lengths), max(lengths)
    edge = max_length if max_length and max_length < top else top
    width = max(1, math.ceil((edge - low + 1) / bins))
    first = math.ceil((low - edge) / width)
    last = min(math.ceil((top - edge) / width), bins)
    counts = Counter(min(math.ceil((n - edge) / width), last) for n in lengths)
    labels, rows, parts = [], [], []
    for k in range(first, last + 1):
        lo, hi = edge + (k - 1) * width + 1, edge + k * width
        label = f"{lo}+" if k == last and top > hi else (str(hi) if lo == hi else f"{lo}-{hi}")
        # Leading spaces (not drawn) make the labels sort as numbers: the plot sorts them as text.
        labels.append(" " * (len(str(top)) - len(str(lo))) + label)
        rows.append(counts.get(k, 0))
        parts.append(TRUNCATED if k > 0 else FITS)
    return pd.DataFrame({"tokens": labels, "rows": rows, "part": parts})
