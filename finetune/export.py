"""Export a finished run: the adapter alone, the merged model, and GGUF for llama.cpp, Ollama and
LM Studio. Every export is checked on the run's held-out rows before it is offered.

    python -m finetune export runs/NAME --out DIR                  # the LoRA adapter (PEFT)
    python -m finetune export runs/NAME --merge --out DIR          # plain transformers loads it
    python -m finetune export runs/NAME --gguf q8_0 --out DIR      # GGUF + an Ollama Modelfile
    python -m finetune export runs/NAME --merge --gguf f16 --gguf q8_0 --out DIR

DIR is laid out as a Hub repository (`finetune.hub.push` uploads it as it is):
  config.json, model.safetensors, tokenizer files, chat_template.jinja, generation_config.json
                    the merged model (its generation config stops at the end-of-turn token)
  adapter_config.json, adapter_model.safetensors, tokenizer files
                    the adapter, at the top when it is the only model, else in adapter/
  NAME-q8_0.gguf, NAME-f16.gguf, Modelfile
                    GGUF files and an Ollama Modelfile with the run's template and stop token
  export.json       what was exported, from which run, and how each export fared in its check
The checks (exact match and agreement with the tuned answers) are saved in the run's eval.json
beside base and tuned, where the Evaluate tab and the model card read them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from finetune import gguf, isolate, runinfo
from finetune.errors import ConfigError, RunError

MERGED = "merged"
ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                 "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def base_model_id(model: str) -> str:
    """The base model as others can load it: the Hub id of the bundled model, else as given."""
    from finetune.bundled import BUNDLED_NAME, is_bundled

    return f"HuggingFaceTB/{BUNDLED_NAME}" if is_bundled(model) else model


def plan(run_dir: str | Path, adapter: bool | None = None, merge: bool = False,
         gguf_types=()) -> dict:
    """What an export of this run will hold: {'adapter': bool, 'merge': bool, 'gguf': [types]};
    ConfigError/RunError when it cannot be made. Nothing asked for means the adapter (or, for a
    full fine-tune, the model itself)."""
    run_dir = runinfo.run_path(run_dir)
    result = runinfo.result_dir(run_dir)
    if result is None:
        state = runinfo.read_status(run_dir).get("state", "not started")
        raise RunError(f"Run {run_dir.name} has no trained weights yet (state: {state}): wait "
                       "until it finishes, or resume it, then export.")
    types = gguf.check_types(gguf_types)
    has_adapter = (result / "adapter_config.json").is_file()
    if adapter and not has_adapter:
        raise ConfigError(f"Run {run_dir.name} trained every weight (method 'full'): there is no "
                          "adapter to export; export the model itself with --merge.")
    if adapter is None:
        adapter = has_adapter and not merge and not types
    merge = merge or not adapter and not types  # a full run with nothing asked: the model
    return {"adapter": bool(adapter), "merge": bool(merge), "gguf": types}


@isolate.off_main  # a Gradio worker asks, and its chat answers stay fast
def export_run(run_dir: str | Path, out: str | Path, adapter: bool | None = None,
               merge: bool = False, gguf_types=(), check: bool = True, limit: int | None = None,
               progress: Callable[[float, str], Any] | None = None, log=print) -> dict:
    """Write the exports of a finished run into `out` (laid out as a Hub repository), check each
    on the run's held-out rows, and return the manifest (also saved as out/export.json).

    `progress(fraction, text)` hears about every long step (merge, convert, check)."""
    started = time.time()
    run_dir = runinfo.run_path(run_dir)
    what = plan(run_dir, adapter, merge, gguf_types)
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise ConfigError(f"{out} is not empty: give a new or empty folder for the export (an "
                          "earlier export there is replaced).")
    if out.is_relative_to(run_dir.resolve() / runinfo.result_dir(run_dir).name):
        raise ConfigError("Export into a folder outside the run's adapter/ or model/ folder.")
    _clear(out)
    cfg = runinfo.load_config(run_dir)
    steps = _steps(what, check)
    done = [0.0]

    def step(weight: float, label: str):
        """progress for one step that takes `weight` of the whole."""
        start = done[0]
        done[0] += weight

        def tell(fraction: float, desc: str = "") -> None:
            if progress is not None:
                progress(min(1.0, (start + weight * fraction) / steps), desc or label)
        tell(0.0, label)
        return tell

    manifest: dict = {"run": run_dir.name, "base_model":
                      base_model_id(cfg.model), "method": cfg.method, "exports": [],
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    result = runinfo.result_dir(run_dir)
    tmp = None
    try:
        merged_dir = None
        if what["merge"] or what["gguf"]:
            merged_dir = out if what["merge"] else Path(tempfile.mkdtemp(prefix="finetune-merge-"))
            tmp = None if what["merge"] else merged_dir
            tell = step(1, "Merging the adapter into the base model")
            log(f"Merging {run_dir.name} into a full model "
                f"({'kept' if what['merge'] else 'for GGUF'})...")
            manifest["end_of_turn"] = write_merged(run_dir, merged_dir)
            manifest["dtype"] = saved_dtype(str(merged_dir))
            tell(1.0, "merged")
        if what["adapter"]:
            target = out / ADAPTER if what["merge"] else out
            write_adapter(result, target, base_model_id(cfg.model))
            manifest["exports"].append({"name": ADAPTER, "kind": ADAPTER, "path": _rel(target, out),
                                        "check": "the run's own adapter files, unchanged"})
        if what["merge"]:
            manifest["exports"].append({"name": MERGED, "kind": MERGED, "path": "."})
        files = []
        for t in what["gguf"]:
            tell = step(1, f"GGUF {t}")
            target = out / f"{_slug(run_dir.name)}-{t}.gguf"
            gguf.convert(merged_dir, target, t, name=run_dir.name, progress=tell, log=log)
            files.append(target.name)
            manifest["exports"].append({"name": f"gguf {t}", "kind": t, "path": target.name})
        if files:
            from finetune import chat, models

            tokenizer = models.load_tokenizer(
                models.ModelSource("local", str(merged_dir), "merged"))
            preferred = sorted(files, key=lambda f: ("q8_0" not in f, f))
            (out / "Modelfile").write_text(gguf.modelfile(
                preferred[0], tokenizer, chat.suggested_system(run_dir), preferred[1:]),
                encoding="utf-8")
            manifest["modelfile"] = "Modelfile"
        if check:
            from finetune import evaluate

            for entry in manifest["exports"]:
                if entry["kind"] == ADAPTER:
                    continue
                tell = step(2, f"Checking {entry['name']} on held-out rows")
                scored = evaluate.evaluate_export(
                    run_dir, entry["name"], entry["kind"], out / entry["path"], limit=limit,
                    precision=manifest.get("dtype") if entry["kind"] == MERGED else None,
                    progress=lambda f, d, t=tell: t(f, d), log=log)
                entry["check"] = {k: scored[k] for k in ("flagged", "verdict", "metrics")}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest["flagged"] = [e["name"] for e in manifest["exports"]
                           if isinstance(e.get("check"), dict) and e["check"]["flagged"]]
    manifest["checked"] = check
    manifest["seconds"] = round(time.time() - started, 1)
    runinfo.write_json(out / "export.json", manifest)
    if progress is not None:
        progress(1.0, "done")
    log(f"Exported {', '.join(e['name'] for e in manifest['exports'])} to {out} "
        f"({manifest['seconds']} s)")
    return manifest


def _steps(what: dict, check: bool) -> float:
    n = (1 if what["merge"] or what["gguf"] else 0) + len(what["gguf"])
    if check:
        n += 2 * ((1 if what["merge"] else 0) + len(what["gguf"]))
    return max(1, n)


def _clear(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else "."


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def write_adapter(result: Path, target: Path, base_id: str) -> None:
    """The run's adapter with its tokenizer and chat template; its base model named so others can
    load it (the Hub id of the bundled model instead of a path on this machine)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (result / name).is_file():
            shutil.copy2(result / name, target / name)
    config_path = target / "adapter_config.json"
    settings = json.loads(config_path.read_text(encoding="utf-8"))
    settings["base_model_name_or_path"] = base_id
    config_path.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def write_merged(run_dir: Path, out: Path) -> list[str]:
    """The tuned model as one full model in `out`: safetensors in the base model's dtype, the
    tokenizer and chat template the run trained with, and a generation config that stops at the
    end-of-turn token. Returns the end-of-turn tokens."""
    import torch

    from finetune import models

    result = runinfo.result_dir(run_dir)
    model, base_tokenizer = models.load_tuned(run_dir, dtype="fp32", device="cpu", merge=True,
                                                four_bit=False)
    # the tokenizer training saved beside the weights is the one it used (same chat template)
    tokenizer = models.load_tokenizer(models.ModelSource("local", str(result), run_dir.name)) \
        if (result / "tokenizer_config.json").is_file() else base_tokenizer
    dtype = saved_dtype(models.resolve(runinfo.load_config(run_dir).model).path)
    model.to(getattr(torch, dtype))
    eot = gguf.end_of_turn(tokenizer)
    gen = model.generation_config
    gen.eos_token_id = eot if len(eot) > 1 else eot[0]
    gen.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = gen.eos_token_id
    for attr in ("_name_or_path", "name_or_path"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, run_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return [tokenizer.convert_ids_to_tokens(i) for i in eot]


def saved_dtype(base_path: str) -> str:
    """The dtype the base model's weights were published in (float32 unless it says bf16/fp16)."""
    try:
        settings = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    text = settings.get("text_config") or settings
    name = str(text.get("dtype") or text.get("torch_dtype") or settings.get("dtype")
               or settings.get("torch_dtype") or "float32")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def read_manifest(folder: str | Path) -> dict:
    """An export folder's export.json; RunError when the folder holds no export."""
    data = runinfo.read_json(Path(folder) / "export.json")
    if not data:
        raise RunError(f"{folder} holds no export (no export.json): export the run first.")
    return data


def default_out(run_dir: str | Path) -> Path:
    """Where the Share tab exports a run: export/ inside the run directory."""
    return Path(run_dir) / "export"
