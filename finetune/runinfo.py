"""The run directory: the one place a run's state lives, read by the UI, the CLI and other runs.

runs/<name>/
  config.yaml     the resolved config (every 'auto' replaced): `python -m finetune train` repeats it
  resolved.json   each resolved setting with the reason for its value
  status.json     state, pid, step, total steps, error, why it ended, best step
  metrics.jsonl   one JSON object per log/eval event
  train.log       the training process's output
  accelerate.yaml how its processes are launched, when it has several (finetune.launch)
  run.slurm       the Slurm batch script, when `train --slurm` wrote one
  checkpoints/    trainer checkpoints (resume starts from the latest)
  adapter/        the LoRA adapter (lora, qlora)   |   model/  the full model (full)
  eval.json       base vs tuned (vs exported) evaluation
  votes.jsonl     blind A/B votes by people (finetune.votes), one per line
  export/         what the Share tab / `export` command wrote (export.json says what and checks)
  hub.json        where it was pushed
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from finetune import paths
from finetune.errors import RunError

def run_path(name_or_path: str | Path | None) -> Path:
    """A run given by name (under runs/) or by path; RunError when there is none."""
    if not name_or_path or not str(name_or_path).strip():
        raise RunError("No run picked: pick one in the list of runs (train one first if there "
                       "is none).")
    p = Path(name_or_path)
    for candidate in (p, paths.runs_dir() / str(name_or_path)):
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    raise RunError(f"No run '{name_or_path}': expected a run directory holding config.yaml "
                   f"(runs are under {paths.runs_dir()}).")


def named_run(name: str | None) -> Path:
    """A run given by its name alone, as the browser sends it: never a path, so nothing outside
    the runs folder can be reached (the CLI's run_path also takes paths: its user owns the
    machine)."""
    name = (name or "").strip()
    if not name:
        return run_path(name)  # the "no run picked" message
    if name in (".", "..") or "/" in name or "\\" in name or name.startswith("~") or "\0" in name:
        raise RunError(f"'{name}' is not a run name: pick a run in the list (names only, no "
                       "paths).")
    path = paths.runs_dir() / name
    if not (path / "config.yaml").is_file():
        raise RunError(f"No run '{name}' (runs are under {paths.runs_dir()}).")
    return path.resolve()


def new_run_dir(hint: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", hint).strip("-")[:40] or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = paths.runs_dir() / f"{slug}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def load_config(run_dir: Path):
    from finetune import config

    return config.load(Path(run_dir) / "config.yaml")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_status(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / "status.json", {}) or {}


def update_status(run_dir: Path, **fields) -> dict:
    status = read_status(run_dir)
    status.update(fields, updated=time.time())
    write_json(Path(run_dir) / "status.json", status)
    return status


def write_resolved(run_dir: Path, reasons: dict[str, str]) -> None:
    write_json(Path(run_dir) / "resolved.json", reasons)


def read_resolved(run_dir: Path) -> dict[str, str]:
    return read_json(Path(run_dir) / "resolved.json", {}) or {}


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file of the run (metrics, votes); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    return out


def curves(run_dir: Path) -> dict:
    """What the live view plots: {"loss": [(step, value, "train"|"validation")], "lr": [(step,
    value)], "score": [(step, share right or ROUGE-L, rows answered)] of the validation answers,
    "score_metric": "exact_match" | "rouge_l" | None, "tokens_per_s": median of the last 5 steps
    or None}."""
    import statistics

    metrics = read_metrics(run_dir)
    loss = [(m["step"], m["loss"], "train") for m in metrics if "loss" in m]
    loss += [(m["step"], m["eval_loss"], "validation") for m in metrics if "eval_loss" in m]
    speed = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    scored = [m for m in metrics if "eval_score" in m]
    return {"loss": loss, "lr": [(m["step"], m["lr"]) for m in metrics if m.get("lr") is not None],
            "score": [(m["step"], m["eval_score"], m.get("eval_score_rows", 0)) for m in scored],
            "score_metric": scored[-1].get("eval_score_metric") if scored else None,
            "tokens_per_s": statistics.median(speed[-5:]) if speed else None}


def result_dir(run_dir: Path) -> Path | None:
    """Where the trained weights are: adapter/ (LoRA, QLoRA) or model/ (full)."""
    for sub in ("adapter", "model"):
        d = Path(run_dir) / sub
        if (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
            return d
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def log_tail(run_dir: Path, lines: int = 40) -> str:
    path = Path(run_dir) / "train.log"
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def list_runs() -> list[Path]:
    root = paths.runs_dir()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)
