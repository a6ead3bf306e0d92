"""Mixing general instruction data into training, against catastrophic forgetting (the usual
remedy: "mix in general data"): `mix_general` sets the share of the training rows that are
general rows, from the shipped sample (finetune/samples/general/) or `mix_data`.

    python -m finetune train --data my.jsonl --mix-general 0.2 --dry-run

Compare a run with mixing and one without on the forgetting probe (`python -m finetune eval`).
Only the training rows get general rows: validation and test keep measuring the task.
"""

from __future__ import annotations

import random
from pathlib import Path

from finetune.errors import DataError

GENERAL_FILE = Path(__file__).resolve().parent.parent / "samples" / "general" / "instructions.jsonl"
GENERAL = "general"  # the key that marks a mixed-in row (the checks leave such rows out)


def add_general(train: list[dict], share: float, seed: int, source: str = "",
                system_prompt: str = "") -> tuple[list[dict], dict]:
    """`train` with general rows added so that they make up `share` of the result (as many as
    the general data has, at most), and what was done, in words."""
    from finetune.data.loader import load

    if train and "text" in train[0]:
        raise DataError("mix_general mixes chat rows into chat data; this training data is "
                        "plain text. Set mix_general to 0, or train on chat rows.")
    where = source or str(GENERAL_FILE)
    general = [r for r in load(where, system_prompt=system_prompt).rows if "messages" in r]
    if not general:
        raise DataError(f"mix_data {where} holds no chat rows to mix in: give chat rows "
                        "(messages, ShareGPT, Alpaca or prompt/completion).")
    wanted = round(share / (1 - share) * len(train))
    picked = random.Random(seed).sample(general, min(wanted, len(general)))
    rows = train + [{**r, GENERAL: True} for r in picked]
    random.Random(seed).shuffle(rows)
    short = f" (all it has; {wanted} asked for)" if len(picked) < wanted else ""
    name = source or "the shipped general sample"
    return rows, {"rows": len(picked), "share": round(len(picked) / len(rows), 3),
                  "source": name,
                  "message": (f"{len(picked)} general instruction rows from {name}{short} mixed "
                              f"into {len(train)} training rows ({100 * len(picked) / len(rows):.0f}"
                              "% of them), against forgetting")}
