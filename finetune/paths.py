"""Where things live: everything under $FINETUNE_HOME (default: the current directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


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


def make_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`target`, a folder that holds `marker` once made: `build(tmp)` fills a temporary folder,
    which then takes its place, under a file lock, so two processes never make it twice and no
    reader sees half of it."""
    import shutil

    from filelock import FileLock

    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / marker).is_file():  # another process made it while we waited
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target
