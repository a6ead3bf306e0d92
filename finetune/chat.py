"""Chat with a run's tuned model (adapter merged) or any model, streaming through its chat template.

    python -m finetune chat runs/NAME --prompt "..."            # the tuned model
    python -m finetune chat runs/NAME --prompt "..." --base     # the model it started from
    python -m finetune chat bundled --prompt "..."

Loaded models stay in a small cache (at most two: base and tuned, for side-by-side chat), so
the Chat tab does not reload on every message; a retrained run is reloaded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from finetune import fastdecode, hardware, isolate
from finetune.config import GenerationSettings
from finetune.errors import RunError

MODEL_PREFIX = "model:"  # a picked choice that names a model, so no run is mistaken for it
TUNED, BASE, BOTH = "tuned", "base", "both"  # what answers: a run's tuned model, its base, both


@dataclass(frozen=True)
class Target:
    """What answers: `kind` 'tuned' (a run's merged model) or 'base' (a plain model)."""

    kind: str
    path: str  # the run directory (tuned) or the model's from_pretrained path (base)
    label: str
    source: Any = None  # models.ModelSource of a base model
    four_bit: bool = False  # the base of a QLoRA run answers in 4 bits, as it trained


def resolve_target(target: str | Path, base: bool = False) -> Target:
    """A run (by directory or name) -> its tuned model, or its base model with base=True;
    anything else -> a model (bundled name, local directory, Hub id)."""
    from finetune import models, paths, runinfo

    try:
        run_dir = runinfo.run_path(target)
    except RunError:
        folder = paths.runs_dir() / str(target)  # a run folder without its config (a name,
        if folder.is_dir() and folder.parent == paths.runs_dir():  # not a model's own path)
            raise
        source = models.resolve(str(target))
        return Target("base", source.path, source.name, source)
    cfg = runinfo.load_config(run_dir)
    if base:
        source = models.resolve(cfg.model)
        return Target("base", source.path, f"{source.name} (base of {run_dir.name})", source,
                      four_bit=cfg.method == "qlora")
    if runinfo.result_dir(run_dir) is None:
        state = runinfo.read_status(run_dir).get("state", "not started")
        raise RunError(f"Run {run_dir.name} has no trained model yet (state: {state}): wait "
                       "until it finishes, or chat with its base model.")
    return Target("tuned", str(run_dir), f"{run_dir.name} (tuned)")


class ModelCache:
    """Loaded (model, tokenizer) pairs keyed by (kind, path); the least recently used goes first.

    A tuned entry remembers when its weights were written, so a retrained or resumed run is
    loaded afresh."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[tuple[str, str], tuple[float, Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, target: Target, log=print) -> tuple[Any, Any]:
        key = (target.kind, target.path)
        stamp = _weights_stamp(target)
        with self._lock:  # one load at a time: two users asking at once share one copy
            hit = self._items.get(key)
            if hit and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1], hit[2]
            if key in self._items:
                fastdecode.forget(self._items.pop(key)[1])
            while len(self._items) >= self.size:
                fastdecode.forget(self._items.popitem(last=False)[1][1])
            hardware.empty_cache()
            log(f"Loading {target.label}...")
            model, tokenizer = isolate.run(_load, target)
            fastdecode.prepare(model, log)
            self._items[key] = (stamp, model, tokenizer)
            return model, tokenizer

    def keys(self) -> list[tuple[str, str]]:
        return list(self._items)

    def clear(self) -> None:
        with self._lock:
            for _, model, _ in self._items.values():
                fastdecode.forget(model)
            self._items.clear()
            hardware.empty_cache()


CACHE = ModelCache(size=2)


@hardware.on_release
def _release_cache() -> None:
    """A training starting on this machine's GPU gets the memory the chat models held."""
    CACHE.clear()


def _weights_stamp(target: Target) -> float:
    if target.kind != "tuned":
        return 0.0
    from finetune import runinfo

    result = runinfo.result_dir(Path(target.path))
    if result is None:
        return 0.0
    return max((p.stat().st_mtime for p in result.iterdir() if p.is_file()), default=0.0)


def _load(target: Target):
    from finetune import jobs, models, runinfo

    device, dtype = hardware.inference_settings()
    four_bit = target.four_bit
    if target.kind == "tuned":
        cfg = runinfo.load_config(Path(target.path))
        source, four_bit = models.resolve(cfg.model), cfg.method == "qlora"
    else:
        source = target.source or models.resolve(target.path)
    training = jobs.training_run_name() if device == "cuda" else None
    if device == "cuda":
        need = hardware.inference_need_gb(models.model_shape(source)["n_params"], dtype, four_bit)
        hardware.check_room(need, target.label, training)
    with hardware.memory_errors(f"Loading {target.label}", _CHAT_TIPS, training):
        if target.kind == "tuned":
            return models.load_tuned(Path(target.path), dtype=dtype, device=device, merge=True)
        model = models.load_model(source, dtype=dtype, device=device, quantize_4bit=four_bit)
        model.eval()
        return model, models.load_tokenizer(source)


_CHAT_TIPS = ["a shorter conversation (Clear) or fewer new tokens", "one model instead of side by "
              "side", "a smaller model, or a QLoRA run (it answers with a 4-bit base)"]


def finished_runs() -> list[Path]:
    """Runs that have trained weights to answer with, newest first."""
    from finetune import runinfo

    return [r for r in runinfo.list_runs() if runinfo.result_dir(r) is not None]


def offered_runs(owner: bool = True) -> list[Path]:
    """The runs a caller may chat with, newest first: every finished run for the owner; for
    visitors the runs the owner offered (`set_offered`), or when none was, the newest completed
    run that was not withdrawn."""
    from finetune import runinfo

    runs = finished_runs()
    if owner:
        return runs
    status = {r: runinfo.read_status(r) for r in runs}
    chosen = [r for r in runs if status[r].get("offered") is True]
    if chosen:
        return chosen
    completed = [r for r in runs if status[r].get("offered") is None
                 and status[r].get("state") == "completed"]
    return completed[:1]


def set_offered(run_dir: Path, offered: bool) -> None:
    """Offer a run to visitors for chat (True), or withdraw it (False)."""
    from finetune import runinfo

    runinfo.update_status(run_dir, offered=bool(offered))


def targets(choice: str | None, mode: str = TUNED, owner: bool = True) -> tuple[Target, ...]:
    """What answers for a choice from the page: a run's name, or `MODEL_PREFIX` + a model (the
    owner may name any model; a visitor the default one, or a run offered to visitors). One
    target, or (base, tuned) for BOTH."""
    from finetune import runinfo
    from finetune.config import DEFAULT_MODEL
    from finetune.errors import AccessError

    if not choice:
        raise RunError("Pick a run or a model first (train a run in the Train tab if there is "
                       "none).")
    if choice.startswith(MODEL_PREFIX):
        model = choice[len(MODEL_PREFIX):]
        if mode == BOTH:
            raise RunError("Side by side compares a run's base and tuned models: pick a run in "
                           "the list (train one in the Train tab if there is none).")
        if not owner and model != DEFAULT_MODEL:
            raise AccessError(f"Visitors may chat with {DEFAULT_MODEL} and the runs the owner "
                              "offers, not with other models.")
        return (resolve_target(model),)
    run_dir = runinfo.named_run(choice)
    if not owner and run_dir not in offered_runs(owner=False):
        raise AccessError(f"Run '{choice}' is not offered to visitors: pick one in the list.")
    if mode == BOTH:
        return resolve_target(run_dir, base=True), resolve_target(run_dir)
    return (resolve_target(run_dir, base=(mode == BASE)),)


def suggested_system(run_dir: str | Path) -> str:
    """The system prompt the run trained with: its `system_prompt`, else the one most common in
    its first training rows (local files and samples only; '' when there is none)."""
    from collections import Counter

    from finetune import runinfo
    from finetune.errors import FinetuneError

    cfg = runinfo.load_config(Path(run_dir))
    if cfg.system_prompt:
        return cfg.system_prompt
    if not (cfg.data.startswith("sample:") or Path(cfg.data).is_file()):
        return ""
    try:
        from finetune import data

        rows = data.load(cfg.data).rows[:50]
    except (FinetuneError, OSError, ValueError):
        return ""
    found = Counter(m["content"] for r in rows for m in r.get("messages", [])[:1]
                    if m.get("role") == "system")
    return found.most_common(1)[0][0] if found else ""


# Measured on the bundled model (docs/BENCHMARKS.md, "Chat defaults"): greedy answers of the model
# as it is ran into loops on 3 of 10 plain chat prompts at 1.0 and on none at 1.1 (1.2 and 1.3
# rambled to the token limit more often); on the demo run's tuned model 1.1 cut held-out exact
# match from 86% to 38%, because the answers copy words from the prompt. So a model answering as
# it is gets 1.1, and a tuned model answers as it trained and as evaluation scores it (1.0).
BASE_REPETITION_PENALTY = 1.1


def repetition_penalty_for(choice: str | None, mode: str = TUNED) -> float:
    """The repetition penalty the Chat tab suggests for what answers: a plain model alone, or a
    run's base model alone, gets BASE_REPETITION_PENALTY; a tuned model (also side by side) the
    default of GenerationSettings."""
    plain = bool(choice) and choice.startswith(MODEL_PREFIX)
    return BASE_REPETITION_PENALTY if plain or mode == BASE else \
        GenerationSettings().repetition_penalty


def system_for(choice: str | None, owner: bool = True) -> str | None:
    """The system prompt to suggest for a picked run (the model answers best with the one it
    trained with); None for a model, a run that cannot be read or (for a visitor) one that is
    not offered, so the current prompt stays."""
    from finetune import runinfo
    from finetune.errors import FinetuneError

    if not choice or choice.startswith(MODEL_PREFIX):
        return None
    try:
        run_dir = runinfo.named_run(choice)
        if not owner and run_dir not in offered_runs(owner=False):
            return None
        return suggested_system(run_dir)
    except FinetuneError:
        return None


def stream_reply(target: Target, history: Iterable[Any], system: str = "",
                 settings: GenerationSettings | None = None, cache: ModelCache = CACHE,
                 log=print) -> Iterator[str]:
    """Pieces of the next assistant message after `history` (dicts as Gradio 6 sends them:
    content may be a list of blocks)."""
    from finetune import generation, jobs

    settings = (settings or GenerationSettings()).validate()
    messages = generation.to_messages(history, system)
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the history must end with the user's message")
    model, tokenizer = cache.get(target, log=log)
    training = jobs.training_run_name()
    hardware.use_inference_threads(training_active=training is not None)
    with hardware.memory_errors("This answer", _CHAT_TIPS, training):
        yield from generation.stream(model, tokenizer, messages, settings)


# A chat window is redrawn at most this often while an answer streams in: the browser redraws
# the whole message each time, and per token (a small model on a GPU, or the tests' tiny one:
# ~1,000 a second) a long answer kept a busy page from taking a click (Stop) for seconds. Fifty
# updates a second still shows every word of a CPU's ~20-50 tokens a second as it comes.
SHOW_EVERY_S = 0.02


def chat_turn(target: Target, history: Iterable[Any] | None, message: str, system: str = "",
              settings: GenerationSettings | None = None, cache: ModelCache = CACHE,
              log=print) -> Iterator[list[dict]]:
    """What a chat window shows after `message` is sent: the history as plain text messages
    with the message (first), then with the answer as it grows."""
    from finetune.generation import to_messages

    history = [m for m in to_messages(history or []) if m["role"] in ("user", "assistant")]
    history.append({"role": "user", "content": message})
    yield history
    text, shown, last = "", None, 0.0
    for piece in stream_reply(target, history, system, settings, cache, log):
        text += piece
        if time.monotonic() - last >= SHOW_EVERY_S:
            yield history + [{"role": "assistant", "content": text}]
            shown, last = text, time.monotonic()
    if not text.strip():
        yield history + [{"role": "assistant", "content": text + "(empty answer)"}]
    elif text != shown:
        yield history + [{"role": "assistant", "content": text}]


def side_by_side(base: Target, tuned: Target, left: Iterable[Any] | None,
                 right: Iterable[Any] | None, message: str, system: str = "",
                 settings: GenerationSettings | None = None, cache: ModelCache = CACHE,
                 log=print) -> Iterator[tuple[list[dict], list[dict]]]:
    """Both windows after `message` is sent to a run's base (left) and tuned (right) model.

    The two answer one after the other: on a CPU two at once would each run at half speed."""
    lefts = chat_turn(base, left, message, system, settings, cache, log)
    rights = chat_turn(tuned, right, message, system, settings, cache, log)
    shown_left, shown_right = next(lefts), next(rights)  # the message shows in both at once
    yield shown_left, shown_right
    for shown_left in lefts:
        yield shown_left, shown_right
    for shown_right in rights:
        yield shown_left, shown_right


def converse(choice: str | None, mode: str, message: str, histories: tuple, system: str = "",
             settings: GenerationSettings | None = None, who=None, gate=None, client: str = "",
             cache: ModelCache = CACHE, log=print) -> Iterator[tuple]:
    """One message sent from the Chat tab (or the API): yields (single, left, right) windows as
    they grow, None for the ones that do not change. `who` and `gate` (finetune.access) apply
    the visitor rules: what they may pick, their limits and their place in the queue; without
    them (the owner's own tools) there are none."""
    import contextlib

    from finetune.generation import flatten_content

    single, left, right = histories
    owner = who is None or who.owner
    picked = targets(choice, mode, owner=owner)
    settings = (settings or GenerationSettings()).validate()
    if gate is not None:
        shown = single if mode != BOTH else left
        chars = len(message) + len(system or "") + sum(
            len(flatten_content(m.get("content") if isinstance(m, dict) else m))
            for m in shown or [])
        settings = gate.admit(who, client, chars, settings)
    with gate.slot(who) if gate is not None else contextlib.nullcontext():
        if mode == BOTH:
            for shown_left, shown_right in side_by_side(*picked, left, right, message, system,
                                                        settings, cache, log):
                yield None, shown_left, shown_right
        else:
            for shown in chat_turn(picked[0], single, message, system, settings, cache, log):
                yield shown, None, None


def answer_once(target: str | Path, prompt: str, system: str = "",
                settings: GenerationSettings | None = None, base: bool = False) -> Iterator[str]:
    """Pieces of one answer to `prompt` (for the CLI)."""
    import sys

    resolved = resolve_target(target, base=base)
    yield from stream_reply(resolved, [{"role": "user", "content": prompt}], system, settings,
                            log=lambda *a: print(*a, file=sys.stderr))
