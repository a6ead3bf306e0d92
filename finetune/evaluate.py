"""Did the fine-tune help? Base vs tuned on held-out rows: loss, perplexity and task metrics.

    python -m finetune eval runs/NAME                 # the run's own test split
    python -m finetune eval runs/NAME --data my.jsonl --limit 50 --json

Loss is the mean negative log-likelihood of the answer tokens only (the last assistant turn,
end-of-turn token included; prompt tokens are not scored), over the whole test split.
Generation metrics use greedy answers to the first `limit` rows. The report is saved as
eval.json in the run directory, which the Evaluate tab shows.

Exported models (`python -m finetune export`) are scored on the same rows by `evaluate_export`
and shown beside base and tuned (`metric_rows(report, exported=True)`): exact match, and
agreement with the tuned model's answers; one that disagrees beyond rounding noise is flagged.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from finetune import drift, isolate, metrics, probe, runinfo
from finetune.errors import ConfigError, DataError, RunError

DEFAULT_LIMIT = 200  # generation metrics on at most this many rows unless asked for more
MAX_LOSS_ROWS = 2000  # loss is one forward pass a row; more rows add little certainty
ANSWER_ROOM = 1.5  # answers may run to 1.5x the longest reference (+8 tokens) before they are cut

METRIC_LABELS = {  # key -> (label, format)
    "exact_match": ("exact match", "pct"),
    "json_valid": ("valid JSON", "pct"),
    "rouge_l": ("ROUGE-L F1", "ratio"),
    "bleu": ("BLEU", "bleu"),
    "loss": ("loss (answer tokens)", "loss"),
    "perplexity": ("perplexity", "loss"),
    "agreement": ("agreement with tuned", "pct"),  # exported models only
    "probe": ("general knowledge (probe)", "pct"),  # finetune.probe: forgetting
}
LOWER_IS_BETTER = {"loss", "perplexity"}

FILTERS = {  # label in the Evaluate tab -> (base correct?, tuned correct?); None: either
    "all": (None, None),
    "tuned right, base wrong": (False, True),
    "base right, tuned wrong": (True, False),
    "both right": (True, True),
    "both wrong": (False, False),
    "tuned wrong": (None, False),
}


def evaluate_run(run_dir: str | Path, data: str | None = None, limit: int | None = None,
                 progress: Callable[[float, str], Any] | None = None, log=print) -> dict:
    """Evaluate a run's base and tuned models on its test split (or `data`); save eval.json."""
    started = time.time()
    run_dir = Path(run_dir)
    cfg = runinfo.load_config(run_dir)
    if runinfo.result_dir(run_dir) is None:
        state = runinfo.read_status(run_dir).get("state", "not started")
        raise RunError(f"Run {run_dir.name} has no trained model yet (state: {state}): wait "
                       "until it finishes, or resume it, then evaluate.")
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"limit must be at least 1 (got {limit}); leave it out to use the "
                          f"whole test split (at most {DEFAULT_LIMIT} rows).")
    rows, described = _rows(cfg, data, log)
    try:  # read before any model loads: a missing file must not cost the answers
        trained = drift.training_answers(cfg)
    except DataError as e:
        trained = [reference for _, reference in rows]
        log(f"The training data cannot be read ({e}); the answers' writing systems are compared "
            "with the reference answers instead.")
    n_gen = min(len(rows), int(limit) if limit else DEFAULT_LIMIT)
    loss_rows = rows[:MAX_LOSS_ROWS]
    gen_rows = rows[:n_gen]

    from finetune import data as datamod
    from finetune import hardware, jobs, models

    device, dtype = hardware.inference_settings()
    training = jobs.training_run_name()
    hardware.use_inference_threads(training_active=training is not None)
    source = models.resolve(cfg.model)
    four_bit = cfg.method == "qlora"  # base and tuned answer on the 4-bit base it trained on
    tokenizer = models.load_tokenizer(source)
    counter = datamod.TokenCounter.from_tokenizer(tokenizer, source.name)
    longest = max(counter.encode_lengths([ref for _, ref in gen_rows]))
    max_new = min(2048, int(ANSWER_ROOM * longest) + 8)
    max_length = _scored_length(cfg)
    batch = _batch(device)
    log(f"Evaluating {run_dir.name} on {described}: loss on {len(loss_rows)} rows, answers to "
        f"{n_gen} (greedy, up to {max_new} new tokens), {device} {dtype}")

    # progress: each model does one loss pass and one generation pass; generation costs more
    loss_batches = math.ceil(len(loss_rows) / batch)
    gen_batches = math.ceil(n_gen / batch) * 4
    per_model = 1 + loss_batches + gen_batches

    def tell(model_index: int, units: float, desc: str) -> None:
        if progress is not None:
            progress(min(1.0, (model_index * per_model + units) / (2 * per_model)), desc)

    def load(kind: str):
        if device == "cuda":
            need = hardware.inference_need_gb(models.model_shape(source)["n_params"], dtype,
                                              four_bit, max_length)
            hardware.check_room(need, f"evaluating the {kind} model", training)
        if kind == "base":
            return models.load_model(source, dtype=dtype, device=device,
                                     quantize_4bit=four_bit).eval()
        return models.load_tuned(run_dir, dtype=dtype, device=device, merge=True)[0]

    report_metrics: dict[str, dict] = {}
    answers: dict[str, list[str]] = {}
    probed: dict[str, list[str]] = {}  # the forgetting probe's answers (finetune.probe)
    for index, kind in enumerate(("base", "tuned")):
        tell(index, 0, f"Loading the {kind} model")
        log(f"Loading the {kind} model...")
        # loaded inline: once the call returns nothing holds it, and empty_cache frees it
        with hardware.memory_errors(f"Evaluating the {kind} model", EVAL_TIPS, training):
            loss, answers[kind] = _loss_and_answers(
                load(kind), tokenizer, loss_rows, gen_rows, max_new, max_length, device,
                on_loss=lambda done, total, i=index: tell(
                    i, 1 + loss_batches * done / total, f"{kind}: loss {done}/{total}"),
                on_answers=lambda done, total, i=index: tell(
                    i, 1 + loss_batches + gen_batches * done / total,
                    f"{kind}: answers {done}/{total}"),
                after=lambda model, k=kind: probed.__setitem__(k, probe.answer(model, tokenizer)))
        hardware.empty_cache()
        scores = metrics.compute(answers[kind], [r for _, r in gen_rows])
        scores["loss"] = loss
        scores["perplexity"] = math.exp(min(loss, 700)) if loss is not None else None
        report_metrics[kind] = scores
        log(f"{kind}: " + ", ".join(f"{k} {_fmt(k, v)}" for k, v in scores.items()))

    examples = []
    for i, (prompt, reference) in enumerate(gen_rows):
        base, tuned = answers["base"][i], answers["tuned"][i]
        examples.append({"prompt": prompt_text(prompt), "reference": reference, "base": base,
                         "tuned": tuned, "base_correct": metrics.is_exact(base, reference),
                         "tuned_correct": metrics.is_exact(tuned, reference)})
    writing = drift.assess(answers, trained, [ex["prompt"] for ex in examples],
                           max_new, counter.encode_lengths,
                           drift.template_note(runinfo.result_dir(run_dir), tokenizer.chat_template))
    probed_report = probe.report(probed, trained, counter.encode_lengths,
                                 mixed=float(cfg.mix_general or 0))
    for kind, scores in report_metrics.items():
        scores["probe"] = probed_report["models"][kind]["score"]
    report = {
        "run": run_dir.name,
        "model": cfg.model,
        "data": described,
        "n_examples": n_gen,
        "n_loss_examples": len(loss_rows),
        "n_available": len(rows),
        "max_new_tokens": max_new,
        "device": device,
        "dtype": dtype,
        "metrics": report_metrics,
        "examples": examples,
        "drift": writing,  # writing systems, answers that never stopped (finetune.drift)
        "probe": probed_report,  # general knowledge: the forgetting probe (finetune.probe)
        "seconds": round(time.time() - started, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _keep_exports(load_report(run_dir), report)
    runinfo.write_json(run_dir / "eval.json", report)
    tell(1, per_model, "done")
    log(f"Saved {run_dir / 'eval.json'} ({report['seconds']} s)")
    return report


def _batch(device: str) -> int:
    return 16 if device == "cuda" else 8


def _scored_length(cfg) -> int:
    """Rows are cut where training cut them (a hand-written config may still say 'auto')."""
    return cfg.max_length if isinstance(cfg.max_length, int) else 2048


def _loss_and_answers(model, tokenizer, loss_rows, gen_rows, max_new: int, max_length: int,
                      device: str, on_loss=None, on_answers=None,
                      after=None) -> tuple[float | None, list[str]]:
    """One model's mean loss on the answer tokens of `loss_rows` and its greedy answers to
    `gen_rows`; `after(model)` asks the same loaded model more (the forgetting probe). Pass the
    model inline and call `hardware.empty_cache` after: nothing else then holds it."""
    from finetune import generation

    batch = _batch(device)
    nll, tokens = generation.completion_nll(model, tokenizer, loss_rows, max_length=max_length,
                                            batch_size=batch, on_batch=on_loss)
    answers = generation.generate_batch(model, tokenizer, [p for p, _ in gen_rows], max_new,
                                        batch_size=batch, on_batch=on_answers)
    if after is not None:
        after(model)
    return (nll / tokens if tokens else None), answers


EVAL_TIPS = ["fewer rows for answers (--limit, or the rows box)", "a test file with shorter rows",
             "a QLoRA run (it evaluates on a 4-bit base)"]


@isolate.off_main  # a Gradio worker asks, and its chat answers stay fast
def evaluate_choice(run: str | None, test_file: str | None = None, on_file: bool = False,
                    limit: float | None = None, progress: Callable[[float, str], Any] | None = None,
                    log=print) -> dict:
    """`evaluate_run` for what a user picked: a run (None when none was picked) and, with
    `on_file`, an uploaded test file instead of the run's test split."""
    if not run:
        raise RunError("Pick a finished run first (train one in the Train tab).")
    if on_file and not test_file:
        raise DataError("Upload a test file first, or evaluate on the run's test split.")
    return evaluate_run(runinfo.named_run(run), data=test_file if on_file else None, limit=limit,
                        progress=progress, log=log)


def load_report(run_dir: str | Path) -> dict | None:
    """The run's saved evaluation, or None."""
    return runinfo.read_json(Path(run_dir) / "eval.json")


def saved_report(name: str) -> dict | None:
    """The saved evaluation of the run of that name (as the page names runs), or None."""
    try:
        return load_report(runinfo.named_run(name))
    except RunError:
        return None


def _rows(cfg, data: str | None, log) -> tuple[list[tuple[list[dict], str]], str]:
    """(prompt messages, reference) pairs to evaluate on, and where they came from."""
    from finetune import data as datamod
    from finetune import generation

    if data:
        raw = datamod.load(str(data)).rows
        described = str(data)
    else:
        # a run's config.yaml holds resolved values; 'auto' only in a hand-written config
        vf = cfg.val_fraction if isinstance(cfg.val_fraction, (int, float)) else 0.0
        splits = datamod.prepare(cfg, float(vf))  # the same split the run held out
        raw = splits.test
        source = (getattr(splits, "report", None) or {}).get("sources", {}).get("test")
        described = f"test split ({source or cfg.test_data or cfg.data})"
    pairs, skipped = [], 0
    for row in raw:
        split = datamod.prompt_and_answer(row)
        if split is None:
            skipped += 1
            continue
        prompt, reference = split
        pairs.append((generation.with_system(prompt, cfg.system_prompt), reference))
    if skipped:
        log(f"Left out {skipped} rows without an assistant answer to compare with.")
    if not pairs:
        where = f"{data}" if data else described
        hint = ("give a file with chat rows (messages ending in an assistant answer)" if data
                else "set test_data to a file, or evaluate on a file (--data / upload)")
        raise DataError(f"Nothing to evaluate in {where}: no rows with an assistant answer "
                        f"({len(raw)} rows read). To evaluate, {hint}.")
    return pairs, described


def prompt_text(prompt: list[dict]) -> str:
    """What a reader needs of the prompt: the user's message, or the turns after the system
    prompt when there are several."""
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


# --- presenting a report ------------------------------------------------------------------------


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    kind = METRIC_LABELS.get(key, (key, "ratio"))[1]
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "bleu":
        return f"{value:.1f}"
    if kind == "loss":
        return f"{value:.3f}" if value < 1000 else f"{value:.3g}"
    return f"{value:.3f}"


def _change(key: str, base: float | None, tuned: float | None) -> str:
    if base is None or tuned is None:
        return ""
    kind = METRIC_LABELS.get(key, (key, "ratio"))[1]
    diff = tuned - base
    if kind == "pct":
        text = f"{100 * diff:+.1f} pts"
    elif kind == "bleu":
        text = f"{diff:+.1f}"
    else:
        text = f"{diff:+.3f}" if abs(diff) < 1000 else f"{diff:+.3g}"
    better = diff < 0 if key in LOWER_IS_BETTER else diff > 0
    return text + (" better" if better and diff else " worse" if diff else "")


def metric_headers(report: dict | None = None, exported: bool = False) -> list[str]:
    """Column names of `metric_rows`: one more per exported model with `exported`."""
    names = list((report or {}).get("exported", {})) if exported else []
    return ["metric", "base", "tuned", "change"] + names


def metric_rows(report: dict, exported: bool = False) -> list[list[str]]:
    """[metric, base, tuned, change] rows, in a fixed order; with `exported`, a column for each
    checked export (and its agreement with the tuned answers)."""
    base, tuned = report["metrics"]["base"], report["metrics"]["tuned"]
    exports = list(report.get("exported", {}).values()) if exported else []
    rows = []
    for key, (label, _) in METRIC_LABELS.items():
        if key not in base and key not in tuned and not any(key in e["metrics"] for e in exports):
            continue
        b, t = base.get(key), tuned.get(key)
        rows.append([label, _fmt(key, b), _fmt(key, t), _change(key, b, t)]
                    + [_fmt(key, e["metrics"].get(key)) for e in exports])
    return rows


def example_rows(report: dict, which: str = "all") -> list[list[str]]:
    """[prompt, reference, base, tuned, base ✓/✗, tuned ✓/✗] rows matching a FILTERS label."""
    want_base, want_tuned = FILTERS.get(which, (None, None))
    out = []
    for ex in report.get("examples", []):
        if want_base is not None and ex["base_correct"] != want_base:
            continue
        if want_tuned is not None and ex["tuned_correct"] != want_tuned:
            continue
        out.append([ex["prompt"], ex["reference"], ex["base"], ex["tuned"],
                    "✓" if ex["base_correct"] else "✗", "✓" if ex["tuned_correct"] else "✗"])
    return out


def outcome_counts(report: dict) -> dict[str, int]:
    counts = {label: 0 for label in FILTERS if label not in ("all", "tuned wrong")}
    for ex in report.get("examples", []):
        for label in counts:
            b, t = FILTERS[label]
            if ex["base_correct"] == b and ex["tuned_correct"] == t:
                counts[label] += 1
    return counts


def format_report(report: dict) -> str:
    """A plain-text table, base vs tuned, for the terminal."""
    head = (f"Evaluation of {report.get('run', '?')} ({report.get('model', '?')}) on "
            f"{report.get('data', '?')}\n"
            f"{report['n_examples']} examples for answers, {report['n_loss_examples']} for loss; "
            f"{report.get('seconds', '?')} s on {report.get('device', '?')} "
            f"{report.get('dtype', '')}".rstrip())
    rows = [["metric", "base", "tuned", "change"]] + metric_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                           zip(r[1:3], widths[1:3])] + [r[3]]))
        if n == 0:
            lines.append("-" * len(lines[0]))
    counts = outcome_counts(report)
    tally = ", ".join(f"{label}: {n}" for label, n in counts.items())
    text = f"{head}\n\n" + "\n".join(line.rstrip() for line in lines) + \
        f"\n\nExact match per example: {tally}"
    lines = probe.findings(report) + drift.findings(report) + \
        [f"  {x}" for x in drift.example_lines(report.get("drift"))]
    if lines:
        text += "\n\nTrust:\n" + "\n".join(lines)
    if report.get("exported"):
        text += "\n\nExported models on the same rows:\n" + "\n".join(
            f"  {name}: exact match {em}, agreement with tuned {agree}, loss {loss}. {verdict}"
            for name, em, agree, loss, verdict in export_rows(report))
    return text


# --- exported models ----------------------------------------------------------------------------

# An export must give the tuned model's greedy answer on at least this share of the rows: merged
# weights are the same numbers (only the order of additions differs); 16-bit and 8-bit files round
# every weight, which flips a near-tie now and then.
AGREEMENT_FLOOR = {"merged": 0.98, "f32": 0.98, "f16": 0.90, "bf16": 0.85, "q8_0": 0.85}
EXACT_SLACK = 0.02  # ... and lose at most 2 points of exact match (one row, on a small test set)


def evaluate_export(run_dir: str | Path, name: str, kind: str, path: str | Path,
                    limit: int | None = None, precision: str | None = None,
                    progress: Callable[[float, str], Any] | None = None, log=print) -> dict:
    """Score an exported model on the rows eval.json's base and tuned models answered (they are
    evaluated first when eval.json is missing, older than the weights, or on other rows).

    `kind` is 'merged' (`path` a folder loaded with plain transformers) or a GGUF type (`path`
    the .gguf file, loaded back through transformers' GGUF reader with its own tokenizer and
    chat template). `precision` is the dtype a merged model was saved in ('bfloat16' rounds the
    merged weights, so it is held to the bf16 floor). The entry is saved in eval.json under
    'exported'[name] and returned: its metrics (with 'agreement': the share of answers equal to
    the tuned model's), 'flagged' and a 'verdict' in words."""
    started = time.time()
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    if not _current(run_dir, report, limit):
        log("Evaluating base and tuned first, so the export is compared on the same rows...")
        report = evaluate_run(run_dir, limit=limit, log=log, progress=None if progress is None
                              else lambda f, d: progress(0.6 * f, d))
        span = (0.6, 0.4)
    else:
        span = (0.0, 1.0)

    def tell(fraction: float, desc: str) -> None:
        if progress is not None:
            progress(span[0] + span[1] * fraction, f"{name}: {desc}")

    from finetune import hardware, jobs

    cfg = runinfo.load_config(run_dir)
    rows, _ = _rows(cfg, None, log)
    gen_rows, loss_rows = rows[:report["n_examples"]], rows[:report["n_loss_examples"]]
    device, dtype = hardware.inference_settings()
    training = jobs.training_run_name()
    hardware.use_inference_threads(training_active=training is not None)
    tell(0.0, "loading")
    log(f"Checking {name} ({path}) on {len(gen_rows)} held-out rows...")
    with hardware.memory_errors(f"Checking {name}", EVAL_TIPS, training):
        loss, answers = _loss_and_answers(
            *_load_exported(kind, Path(path), dtype, device), loss_rows, gen_rows,
            report["max_new_tokens"], _scored_length(cfg), device,
            on_loss=lambda done, total: tell(0.2 + 0.2 * done / total, f"loss {done}/{total}"),
            on_answers=lambda done, total: tell(0.4 + 0.6 * done / total,
                                                f"answers {done}/{total}"))
    hardware.empty_cache()
    entry = {"kind": kind, "path": str(path), "precision": precision, "answers": answers,
             "loss": loss, "seconds": round(time.time() - started, 1),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _score(entry, report)
    report.setdefault("exported", {})[name] = entry
    runinfo.write_json(run_dir / "eval.json", report)
    log(f"{name}: {entry['verdict']}")
    return entry


def _current(run_dir: Path, report: dict | None, limit: int | None) -> bool:
    """eval.json answers the run's own test split with the weights there are now."""
    if not report or not str(report.get("data", "")).startswith("test split"):
        return False
    if limit is not None and report["n_examples"] != min(int(limit), report["n_available"]):
        return False
    result = runinfo.result_dir(run_dir)
    newest = max((p.stat().st_mtime for p in result.iterdir() if p.is_file()), default=0.0)
    return (run_dir / "eval.json").stat().st_mtime >= newest


def _score(entry: dict, report: dict) -> None:
    """Metrics, agreement with the tuned answers, and the verdict of an export's answers."""
    examples = report["examples"]
    answers = entry["answers"]
    scores = metrics.compute(answers, [ex["reference"] for ex in examples])
    scores["loss"] = entry.get("loss")
    scores["perplexity"] = math.exp(min(entry["loss"], 700)) if entry.get("loss") is not None \
        else None
    same = sum(metrics.is_exact(a, ex["tuned"]) for a, ex in zip(answers, examples))
    scores["agreement"] = same / len(examples) if examples else None
    entry["metrics"] = scores
    n = len(examples)
    rounded = {"bfloat16": "bf16", "float16": "f16"}.get(entry.get("precision") or "")
    floor = AGREEMENT_FLOOR.get(rounded or entry["kind"], 0.85)
    tuned_em = report["metrics"]["tuned"].get("exact_match") or 0.0
    drop = tuned_em - (scores["exact_match"] or 0.0)
    slack = max(EXACT_SLACK, 1.0 / n) if n else EXACT_SLACK
    said = (f"gives the tuned model's answer on {same} of {n} rows; exact match "
            f"{_fmt('exact_match', scores['exact_match'])} vs "
            f"{_fmt('exact_match', tuned_em)} tuned")
    problems = []
    if scores["agreement"] is not None and scores["agreement"] < floor:
        problems.append(f"agreement below the {floor:.0%} expected of {entry['kind']}")
    if drop > slack + 1e-9:
        problems.append(f"exact match {100 * drop:.1f} points under the tuned model (more than "
                        f"{100 * slack:.1f})")
    entry["flagged"] = bool(problems)
    entry["verdict"] = (f"FLAGGED: {said}: " + "; ".join(problems) + ". Do not use it as is: "
                        "export again, or use a less quantized type.") if problems else \
        f"OK: {said} (within rounding noise)."


def _keep_exports(old: dict | None, new: dict) -> None:
    """Exports checked on the same rows stay in a new eval.json, scored against the new tuned
    answers."""
    if not old or not old.get("exported") or old.get("data") != new.get("data"):
        return
    prompts = [ex["prompt"] for ex in new["examples"]]
    if [ex["prompt"] for ex in old.get("examples", [])] != prompts:
        return
    for name, entry in old["exported"].items():
        _score(entry, new)
        new.setdefault("exported", {})[name] = entry


def export_rows(report: dict) -> list[list[str]]:
    """[export, exact match, agreement with tuned, loss, verdict] for each checked export."""
    return [[name] + [_fmt(k, e["metrics"].get(k)) for k in ("exact_match", "agreement", "loss")]
            + [e["verdict"]] for name, e in (report or {}).get("exported", {}).items()]


def _load_exported(kind: str, path: Path, dtype: str, device: str):
    """An exported model as a user loads it: a merged folder with plain transformers; a GGUF file
    through transformers' GGUF reader, alone in a folder so only its own tokenizer is read."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with tempfile.TemporaryDirectory(prefix="finetune-gguf-") as tmp:
        kwargs: dict = {}
        folder = path
        if kind != "merged":
            folder = Path(tmp)
            try:
                (folder / path.name).symlink_to(path.resolve())
            except OSError:  # no symlinks here: a copy
                import shutil

                shutil.copy2(path, folder / path.name)
            kwargs["gguf_file"] = path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
