"""`prepare()`: load, clean and split the data of a RunConfig into train / validation / test.

    python -m finetune train --data my.jsonl --dry-run    # shows the split counts it leads to
"""

from __future__ import annotations

import random

from finetune.data import checks, clean, mix
from finetune.data.formats import parse_mapping
from finetune.data.loader import load
from finetune.data.readers import sample_path
from finetune.data.types import Loaded, Splits
from finetune.errors import DataError

VAL_SHARE = 0.05  # rows held out for validation when no validation file is given (4 to 200)


def val_rows(n_rows: int) -> int:
    """Rows held out for validation from n_rows when no validation file is given: few, so
    checking often stays cheap; none below 20 rows (they are all needed for training)."""
    return 0 if n_rows < 20 else max(4, min(200, round(VAL_SHARE * n_rows)))


def load_usable(source: str, fmt: str, system_prompt: str, role: str,
                column_map: str = "") -> Loaded:
    """load(), then refuse data that still has errors (each named) before it reaches training."""
    loaded = load(source, fmt, mapping=parse_mapping(column_map) if column_map else None,
                  system_prompt=system_prompt)
    errors = loaded.errors
    if errors:
        lines = "\n  - ".join(p.message for p in errors[:8])
        more = f"\n  ... and {len(errors) - 8} more" if len(errors) > 8 else ""
        raise DataError(f"The {role} data {source} has {len(errors)} problem(s) to fix before "
                        f"training:\n  - {lines}{more}")
    return loaded


def holdout_sizes(n: int, fractions: list[float]) -> list[int]:
    """Rows to hold out for each fraction; at least one row when a fraction asks for some, but
    never so many that no training row is left."""
    sizes = []
    left = n
    for frac in fractions:
        k = int(round(n * frac)) if frac > 0 else 0
        if frac > 0 and k == 0 and n >= 3:
            k = 1
        k = min(k, max(0, left - 1))
        sizes.append(k)
        left -= k
    return sizes


def split_rows(rows: list[dict], fractions: list[float], seed: int) -> list[list[dict]]:
    """[held-out part per fraction..., rest]; a seeded shuffle picks the held-out rows, and the rest
    keeps the file order. The first fraction's rows depend only on the seed and its own size."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for k in holdout_sizes(len(rows), fractions):
        parts.append([rows[i] for i in order[start:start + k]])
        start += k
    taken = set(order[:start])
    parts.append([r for i, r in enumerate(rows) if i not in taken])
    return parts


def _fraction(value) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return VAL_SHARE  # "auto" that nobody resolved (a hand-written config)
    return float(value)


def prepare(cfg, val_fraction: float) -> Splits:
    """Train/val/test rows for a RunConfig; a DataError when the data cannot be trained on."""
    loaded = load_usable(cfg.data, cfg.data_format, cfg.system_prompt, "training",
                         cfg.column_map)
    return split(loaded, cfg, val_fraction)


def split(loaded: Loaded, cfg, val_fraction: float) -> Splits:
    """prepare() for data already loaded (the Data tab has it in hand)."""
    rows, duplicates = clean.dedupe(loaded.rows)
    val_fraction = _fraction(val_fraction)
    sources = {"train": cfg.data}
    holdouts = []  # fractions to take from the training rows, test first so it is stable
    if cfg.test_data:
        test = clean.dedupe(load_usable(cfg.test_data, "auto", cfg.system_prompt, "test",
                                                 cfg.column_map).rows)[0]
        sources["test"] = cfg.test_data
    elif cfg.data.startswith("sample:"):
        path = sample_path(cfg.data, "test")
        test = clean.dedupe(load_usable(str(path), "auto", cfg.system_prompt, "test").rows)[0]
        sources["test"] = f"{cfg.data} (its own test split)"
    else:
        test = None
        holdouts.append(float(cfg.test_fraction))
        sources["test"] = f"{cfg.test_fraction:.0%} held out from {cfg.data} (seed {cfg.seed})"
    if cfg.val_data:
        val = clean.dedupe(load_usable(cfg.val_data, "auto", cfg.system_prompt, "validation",
                                                cfg.column_map).rows)[0]
        sources["val"] = cfg.val_data
    else:
        val = None
        holdouts.append(val_fraction)
        sources["val"] = f"{val_fraction:.0%} held out from {cfg.data} (seed {cfg.seed})"
    balanced = None
    if getattr(cfg, "balance_labels", False):
        # Test rows first (the same rows as without balancing), then the rest balanced, then
        # the validation rows from what is left: validation watches the balanced mix.
        if test is None:
            test, rows = split_rows(rows, [holdouts.pop(0)], cfg.seed)
        rows, balanced = checks.balance(rows, cfg.seed)
        parts = split_rows(rows, holdouts, cfg.seed)
    else:
        parts = split_rows(rows, holdouts, cfg.seed)
    train = parts[-1]
    if test is None:
        test = parts.pop(0)
    if val is None:
        val = parts.pop(0)
    train, overlap = clean.remove_overlap(train, test + val)
    if not train:
        raise DataError(f"No training rows are left from {cfg.data} ({len(rows)} usable rows, "
                        f"{overlap} also in the validation/test data). Add rows, or lower "
                        "val_fraction/test_fraction.")
    mixed = None
    if getattr(cfg, "mix_general", 0):
        train, mixed = mix.add_general(train, float(cfg.mix_general), cfg.seed, cfg.mix_data,
                                       cfg.system_prompt)
    report = {
        "format": loaded.format,
        "counts": {"train": len(train), "val": len(val), "test": len(test)},
        "sources": sources,
        "cleaning": {"read": loaded.n_raw, "usable": len(loaded.rows), "duplicates": duplicates,
                     "empty": loaded.skipped.get("empty", 0),
                     "skipped": sum(n for k, n in loaded.skipped.items() if k != "empty"),
                     "in_val_or_test": overlap},
        "warnings": [p.message for p in loaded.problems if p.level == "warning"],
        "balanced": balanced,
        "mixed": mixed,
    }
    return Splits(train=train, val=val, test=test, report=report)
