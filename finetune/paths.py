"""Where things live: everything under $FINETUNE_HOME (default: the current directory)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("FINETUNE_HOME") or ".").resolve()


def runs_dir() -> Path:
    return home() / "runs"


def models_dir() -> Path:
    """Prepared models (the bundled one); $FINETUNE_MODELS shares them between homes (tests do)."""
    override = os.environ.get("FINETUNE_MODELS")
    return Path(override).resolve() if override else home() / "models"


def cache_dir() -> Path:
    """Downloaded packages that models are made from."""
    return models_dir() / "_downloads"
