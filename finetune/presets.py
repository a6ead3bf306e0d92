"""Named starting points for a run; a preset is a partial config, every other setting stays auto."""

from __future__ import annotations

from finetune.config import DEFAULT_DATA, DEFAULT_MODEL
from finetune.errors import ConfigError

PRESETS: dict[str, dict] = {
    # Bundled model + bundled contacts sample: one epoch, finishes in minutes on a 2-core CPU.
    "demo": {"model": DEFAULT_MODEL, "data": DEFAULT_DATA, "method": "lora"},
    # Least memory: a 4-bit base model with adapters.
    "qlora": {"method": "qlora"},
    # Every weight trained: best for tiny models and large shifts in behaviour, most memory.
    "full": {"method": "full"},
    # A quick check that everything works end to end: a handful of steps.
    "smoke": {"max_steps": 5, "eval_steps": 5, "save_steps": 5, "early_stopping": False},
}


def get(name: str) -> dict:
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ConfigError(f"Unknown preset '{name}': choose one of {', '.join(PRESETS)}.") from None
