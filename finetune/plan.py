"""The planner: measure the facts (data, model shape, machine) and decide every 'auto' setting,
with a reason for each.

    python -m finetune train --data my.jsonl --dry-run     # print what would be used and why

The resolved config holds only concrete values and is saved in the run directory, so the same
command on that config.yaml repeats the run exactly. Settings the user gave are kept as given.
The Data tab's auto max length is `length_cut` here, for the model the Train tab has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from finetune import liger
from finetune.config import AUTO, RunConfig
from finetune.data import percentile, val_rows
from finetune.errors import ConfigError, DataError

TARGET_STEPS = 30  # optimizer steps a small dataset gets at least (repeating it as needed)
MAX_AUTO_EPOCHS = 10
ANSWER_SAMPLE = 5000  # rows whose answers are measured for big datasets
VALIDATION_COST = 1 / 3  # a validation row costs about a third of a training row (forward only)
VALIDATION_BUDGET = 0.15  # share of the training time validation may take
MIN_VALIDATIONS, MAX_VALIDATIONS = 3, 10  # per run, so the best checkpoint can be kept
STEADY_ANSWER_TOKENS = 100  # answer tokens a validation pass needs for a steady loss
# The answers scored at each validation (finetune.stopping): exact match while answers are short,
# ROUGE-L up to LONG_ANSWER tokens (90th percentile), none beyond (too slow to generate).
SCORE_ROWS, MIN_SCORE_ROWS = 32, 8
SHORT_ANSWER, LONG_ANSWER = 48, 128
SCORED_VALIDATIONS = 6  # answer no more rows than lets this many validations fit the budget
# A generated answer token costs about 2.5 training tokens (forward and backward) on a CPU: greedy
# answers are decoded a token at a time. Measured on the bundled model, LoRA, fp32, AMD EPYC family
# 25 model 17 (docs/BENCHMARKS.md): answering 8 validation rows took 1.05x a training step of 8
# rows on dates (24 new tokens at most) and 2.2-2.5x on contacts (56).
GEN_TOKEN_COST = 2.5
# Passes: a small dataset is repeated (up to MAX_PASSES) while the estimated training time stays
# within FIRST_RUN_S, so a first run on a CPU stays short; validation ends the run earlier
# when the answers stop improving.
MAX_PASSES, SMALL_DATA = 3, 2000
FIRST_RUN_S = 15 * 60
MATMUL_EFFICIENCY = 0.6  # share of the measured matmul speed training reaches (LoRA, fp32, CPU)


@dataclass
class Facts:
    """What the resolvers look at, gathered once (measured, not assumed)."""

    n_rows: int  # rows available for training and validation (the test split already removed)
    lengths: list[int]  # token lengths of those rows (some estimated for big datasets)
    has_val_file: bool
    n_params: int
    hidden: int
    layers: int
    vocab: int
    context: int  # the model's maximum positions
    device: str
    memory_gb: float
    precision: str
    precision_reason: str
    data_format: str = "messages"  # what finetune.data detected
    answer_lengths: list[int] | None = None  # tokens that carry loss, per measured row
    n_val_file: int = 0  # rows in the validation file, when one was given
    estimated_rows: int = 0  # rows whose length is estimated from a sample (big datasets)
    free_gb: float | None = None  # GPU memory free when planned (None: a CPU, budget the RAM)
    gflops: float = 0.0  # measured matmul speed in the chosen precision (0: not measured)
    gpus: int = 0  # GPUs visible to this machine (each machine of the run has as many)
    model_type: str = ""  # the model config's model_type ('llama', ...)
    liger_installed: bool = False  # liger-kernel importable here
    liger_measured: dict | None = None  # what `bench train --liger` measured on this GPU
    # for the checks before training (data.checks): the rows, the counter that renders them as
    # training will, the model's folder (its generation config), what balancing did
    rows: list | None = None
    counter: object = None
    model_folder: str | None = None
    balanced: dict | None = None
    mixed: dict | None = None  # general rows mix_general added (data.mix)


@dataclass
class Plan:
    """What the planner decided: the concrete config and the reason for each value; `run_dir`
    once a run directory holds it (jobs.prepare_run)."""

    config: RunConfig
    reasons: dict[str, str]
    run_dir: Path | None = None
    checks: list[dict] = field(default_factory=list)  # data.checks before training, in words

    @property
    def warnings(self) -> list[str]:
        """What people should read before training: the memory warning, the data checks'."""
        return ([self.memory_warning] if self.memory_warning else []) + \
            [c["message"] for c in self.checks if c["level"] == "warning"]

    @property
    def memory_warning(self) -> str:
        """The reason, when the run is not expected to fit in memory; '' when it fits."""
        why = self.reasons.get("memory", "")
        return why if why.startswith("WILL NOT FIT") else ""


def max_length(f: Facts) -> tuple[int, str]:
    return length_cut(f.lengths, f.context, f.estimated_rows)


def length_cut(lengths: list[int], context: int, estimated_rows: int = 0) -> tuple[int, str]:
    """The auto max length for rows of these token lengths (the Data tab shows the same cut)."""
    if not lengths:
        return min(512, context), "no rows measured; a common default"
    longest, p995 = max(lengths), percentile(lengths, 0.995)
    # Cover every row unless a few outliers would stretch every batch: then cut at 99.5%.
    cut = longest if longest <= 1.25 * p995 else p995
    cut = min(context, int(math.ceil(cut / 8) * 8))
    truncated = sum(1 for n in lengths if n > cut)
    share = 100 * (len(lengths) - truncated) / len(lengths)
    sampled = (f" ({estimated_rows:,} of {len(lengths):,} rows estimated from a sample)"
               if estimated_rows else "")
    if cut == context and longest > context:
        return cut, (f"the model's context is {context}: {truncated} of {len(lengths)} rows "
                     f"are longer and will be truncated{sampled}")
    return cut, (f"covers {share:.1f}% of rows (longest {longest} tokens), {truncated} "
                 f"truncated{sampled}")


def auto_val_fraction(n_rows: int) -> float:
    """The share of n_rows (training + validation) that 'auto' holds out for validation."""
    return round(val_rows(n_rows) / n_rows, 4) if n_rows else 0.0


def val_fraction(f: Facts) -> tuple[float, str]:
    if f.has_val_file:
        return 0.0, "a validation file was given"
    n_val = val_rows(f.n_rows)
    if not n_val:
        return 0.0, (f"only {f.n_rows} rows: all kept for training (no validation, so no early "
                     "stopping)")
    return auto_val_fraction(f.n_rows), (f"{n_val} of {f.n_rows} rows held out to watch the "
                                         "validation loss (few, so checking it often stays cheap)")


GPU_STEP_TOKENS = 16_384  # tokens per optimizer step that keep a GPU busy (big datasets only)


def effective_batch(n_train: int, device: str = "cpu", row_tokens: float = 0.0) -> tuple[int, str]:
    """Rows per optimizer step: 8 keeps a CPU busy and learns fast; 16 for big datasets, and on a
    GPU as many rows as make ~GPU_STEP_TOKENS tokens (at most 128), since a GPU takes them in
    about the time a CPU takes 8 rows."""
    if n_train >= 5000:
        rows = 16
        while device == "cuda" and row_tokens and rows < 128 and \
                2 * rows * row_tokens <= GPU_STEP_TOKENS:
            rows *= 2
        if rows > 16:
            return rows, (f"a large dataset on a GPU: {rows} rows of ~{row_tokens:.0f} tokens "
                          f"(~{rows * row_tokens:,.0f} tokens) a step keep it busy")
        return 16, "a large dataset: bigger steps learn as well and run faster"
    if n_train >= 64:
        return 8, f"{n_train} training rows make {math.ceil(n_train / 8)} steps of 8 per pass"
    eff = max(1, min(4, n_train))
    return eff, f"only {n_train} training rows: small steps, so there are enough of them"


def model_size(n_params: int) -> str:
    return f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.3g}M"


def learning_rate(method: str, n_params: int) -> tuple[float, str]:
    size = f"{model_size(n_params)} parameters"
    if method in ("lora", "qlora"):
        lr = 4e-4 if n_params < 1e9 else 2e-4 if n_params < 3e9 else 1e-4
        return lr, f"{method} adapters on a model of {size}: smaller models take larger steps"
    lr = 5e-5 if n_params < 5e8 else 2e-5 if n_params < 3e9 else 1e-5
    return lr, f"full fine-tuning of {size}: small steps keep what the model knows"


def lora_rank(n_params: int) -> tuple[int, str]:
    if n_params < 1e10:
        return 16, f"enough capacity for one task on a {model_size(n_params)} model"
    return 8, f"a {model_size(n_params)} model needs little extra capacity per task"


def eval_interval(steps: int, n_val: int, rows_per_step: int, scored: int = 0,
                  score_cost: float = 0.0) -> tuple[int, str]:
    """Validate often enough to stop when the loss flattens, rarely enough to cost ~15% at most.
    `scored` rows are also answered at each validation, each costing `score_cost` training rows."""
    if n_val <= 0:
        return (max(1, min(500, math.ceil(steps / 10))),
                "no validation rows: sets how often a checkpoint is saved (about 10 per run)")
    # A validation pass costs about n_val * VALIDATION_COST training rows, plus the answers.
    per_pass = n_val * VALIDATION_COST + scored * score_cost
    cheap = math.ceil(per_pass / (VALIDATION_BUDGET * rows_per_step))
    every = max(1, math.ceil(steps / MAX_VALIDATIONS), cheap)
    every = min(every, max(1, math.ceil(steps / MIN_VALIDATIONS)), 10_000)
    times = max(1, steps // every)  # the trainer validates at every, 2 x every, ... <= steps
    share = 100 * times * per_pass / max(1, steps * rows_per_step)
    answers = f", {scored} of them answered" if scored else ""
    return every, (f"{times} validation(s) of {n_val} rows{answers} over {steps} steps: about "
                   f"{share:.0f}% of the training time")


def answer_score(n_val: int, f: Facts, early: bool, procs: int = 1) -> tuple[str, str]:
    """How answers to validation rows are scored at each validation, or 'none'."""
    if not early or n_val <= 0:
        return "none", "no early stopping" if not early else "no validation rows"
    if procs > 1:  # finetune.stopping scores answers in a one-process run only
        return "none", (f"{procs} processes: the validation loss gathered from all of them "
                        "decides, so every process stops at the same step")
    if f.data_format == "text" or not f.answer_lengths:
        return "none", "plain text rows have no answers to score: the validation loss alone"
    p90 = percentile(f.answer_lengths, 0.9)
    if p90 > LONG_ANSWER:
        return "none", (f"answers are long (90% up to {p90} tokens): too slow to generate at "
                        "every validation, so the validation loss alone decides")
    if p90 > SHORT_ANSWER:
        return "rouge_l", (f"answers are longish (90% up to {p90} tokens): greedy answers to "
                           "validation rows are scored by ROUGE-L (word overlap)")
    return "exact_match", (f"answers are short (90% up to {p90} tokens): greedy answers to "
                           "validation rows are scored by exact match; the run goes on while "
                           "more come out right")


def score_cost(f: Facts) -> float:
    """Training rows' worth of work to answer one validation row greedily."""
    if not f.answer_lengths or not f.lengths:
        return VALIDATION_COST
    answer = 1.25 * percentile(f.answer_lengths, 0.9) + 4
    return VALIDATION_COST + GEN_TOKEN_COST * answer / (sum(f.lengths) / len(f.lengths))


def score_rows(n_val: int, steps: int, rows_per_step: int, cost: float) -> tuple[int, str]:
    """Validation rows answered at each validation: all of them up to SCORE_ROWS, fewer (but at
    least MIN_SCORE_ROWS) when answering them SCORED_VALIDATIONS times would pass the budget."""
    rows = min(n_val, SCORE_ROWS)
    room = (VALIDATION_BUDGET * steps * rows_per_step / SCORED_VALIDATIONS
            - n_val * VALIDATION_COST)
    fit = max(0, int(room / cost))
    if fit < rows:
        rows = max(min(fit, rows), min(MIN_SCORE_ROWS, n_val))
        return rows, (f"{rows} of {n_val} validation rows: answering more would take over "
                      f"{VALIDATION_BUDGET:.0%} of the training time")
    whole = "all" if rows == n_val else f"{rows} of"
    return rows, f"{whole} {n_val} validation rows, each answered in ~{cost:.1f} training rows' time"


def passes(n_train: int, steps_per_epoch: int, tokens_per_row: float, f: Facts,
           method: str, can_stop: bool, parallel: int = 1) -> tuple[float, str]:
    """Passes over the training rows: enough for ~TARGET_STEPS steps; a small dataset more (up
    to MAX_PASSES) when early stopping can end the run once the answers stop improving, as long
    as the estimated training time stays within FIRST_RUN_S (`parallel` devices share the
    work: GPUs of the run, or machines of a CPU run)."""
    if steps_per_epoch < TARGET_STEPS:
        n = float(min(MAX_AUTO_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
        why = (f"{n_train} rows are only {steps_per_epoch} steps per pass: repeated to reach "
               f"~{TARGET_STEPS} steps" + (" (at most 10 passes)" if n == MAX_AUTO_EPOCHS else ""))
    else:
        n, why = 1.0, f"one pass over {n_train} rows is {steps_per_epoch} steps"
    if not can_stop or n_train > SMALL_DATA or n >= MAX_PASSES:
        extra = "" if n > 1 else (": enough for a large dataset" if n_train > SMALL_DATA else
                                  ": no early stopping to end extra passes")
        return n, why + extra
    flops_per_token = (6 if method == "full" else 4) * f.n_params
    if not f.gflops:
        return n, why + ": this machine's speed is not measured, so no extra passes"
    pass_s = n_train * tokens_per_row * flops_per_token / (
        f.gflops * 1e9 * MATMUL_EFFICIENCY * max(1, parallel))
    fit = int(FIRST_RUN_S // max(pass_s, 1e-9))
    more = max(n, float(min(MAX_PASSES, fit)))
    if more <= n:
        return n, (why + f" (~{pass_s / 60:.0f} min estimated at {f.gflops:.0f} GFLOP/s): a "
                   f"second would take a first run past {FIRST_RUN_S // 60} min")
    return more, (f"{more:g} passes over {n_train} rows ({steps_per_epoch} steps each, ~"
                  f"{more * pass_s / 60:.0f} min estimated at {f.gflops:.0f} GFLOP/s, within "
                  f"{FIRST_RUN_S // 60} min): a small dataset learns more from repeats, and "
                  "validation ends the run when the answers stop improving")


def usable_memory(f: Facts) -> tuple[float, str]:
    """(GB a training may use, how to say it): on a GPU what is free now (the app's own models
    are released before a training starts; another process's are not), less a margin for the
    allocator; on a CPU 60% of the RAM (the app, chat and the OS keep the rest)."""
    if f.device == "cuda":
        free = f.memory_gb if f.free_gb is None else min(f.free_gb, f.memory_gb)
        return free * 0.95, f"{free:.1f} GB free on this GPU"
    return f.memory_gb * 0.6, f"{f.memory_gb:.0f} GB"


def patience(n_val: int, f: Facts) -> tuple[int, str]:
    """One flat validation (neither a better score nor a lower loss) stops the run, unless so few
    answer tokens are validated that both jump about by chance (a labelling task validated on 13
    one-word answers: one answer flipping moves the loss by 0.05 and the score by 8%)."""
    if n_val <= 0:
        return 1, "no validation rows: no early stopping"
    per_row = (sum(f.answer_lengths) / len(f.answer_lengths)) if f.answer_lengths else 0
    tokens = round(n_val * per_row)
    if per_row and tokens < STEADY_ANSWER_TOKENS:
        return 3, (f"validation holds only ~{tokens} answer tokens: its loss and score jump "
                   "about, so three flat validations in a row are needed")
    return 1, (f"validation holds ~{tokens} answer tokens: its loss is steady, one flat "
               "validation is enough" if per_row else "one flat validation is enough")


STRATEGY_WORDS = {"ddp": "each GPU holds the whole model and the processes average their "
                          "gradients",
                  "fsdp": "the weights, gradients and optimizer state are sharded among the "
                          "processes (PyTorch FSDP)",
                  "zero2": "the gradients and optimizer state are sharded among the processes "
                           "(DeepSpeed ZeRO-2)",
                  "zero3": "the weights, gradients and optimizer state are sharded among the "
                           "processes (DeepSpeed ZeRO-3)"}


def processes(f: Facts, machines: int) -> tuple[int, str]:
    """'auto' processes: one per visible GPU on each machine, one on a machine without."""
    if f.gpus <= 0:
        return machines, ("no GPU: one process on the CPU" if machines == 1 else
                          f"no GPU here: one process on each of the {machines} machines")
    if machines > 1:
        return f.gpus * machines, (f"one per GPU: {f.gpus} visible here, on each of the "
                                   f"{machines} machines")
    return f.gpus, ("one GPU visible" if f.gpus == 1 else f"one per visible GPU ({f.gpus})")


def resolve(cfg: RunConfig, f: Facts, lora_params_per_rank: int = 0) -> tuple[RunConfig, dict]:
    """Return (config with concrete values, {setting: reason}) for every auto setting."""
    from finetune import hardware

    reasons: dict[str, str] = {}
    values: dict = {}

    def decide(name, value, reason):
        if getattr(cfg, name) == AUTO:
            values[name], reasons[name] = value, reason
        else:
            values[name], reasons[name] = getattr(cfg, name), "set by you"
        return values[name]

    decide("data_format", f.data_format, "detected from the data's columns")
    decide("precision", f.precision, f.precision_reason)
    decide("liger_kernels", *liger.choose(f.device, f.model_type, f.liger_installed,
                                          f.liger_measured))
    vf = decide("val_fraction", *val_fraction(f))
    n_train = f.n_rows - round(float(vf) * f.n_rows)
    length = decide("max_length", *max_length(f))
    rank = decide("lora_r", *lora_rank(f.n_params)) if cfg.method != "full" else cfg.lora_r
    if cfg.method != "full":
        decide("lora_alpha", 2 * rank, f"twice the rank ({rank})")
    decide("learning_rate", *learning_rate(cfg.method, f.n_params))

    # Processes: each takes its share of every step's rows (the global batch stays the same).
    procs = int(decide("num_processes", *processes(f, cfg.num_machines)))
    if procs > 1:
        reasons["strategy"] = f"{cfg.strategy}: {STRATEGY_WORDS[cfg.strategy]}"

    # Batch: the effective batch the data calls for, as processes x micro-batch x accumulation
    # that fits.
    row_tokens = min(sum(f.lengths) / len(f.lengths), int(length)) if f.lengths else 0.0
    eff, eff_reason = effective_batch(n_train, f.device, row_tokens)
    if procs > eff:
        eff, eff_reason = procs, f"at least one row for each of the {procs} processes"
    if cfg.batch_size != AUTO and cfg.grad_accum == AUTO and int(cfg.batch_size) * procs > eff:
        eff, eff_reason = int(cfg.batch_size) * procs, "your batch size, without accumulation"
    avail, room = usable_memory(f)
    # Processes on a machine without GPUs share its memory; on GPUs each has its own.
    sharing = 1 if f.device == "cuda" else max(1, procs // cfg.num_machines)
    lora_params = (lora_params_per_rank * int(rank)) if cfg.method != "full" else 0

    def need(batch, ckpt):
        return sharing * hardware.estimate_memory_gb(
            f.n_params, f.hidden, f.layers, f.vocab, cfg.method, values["precision"], batch,
            int(length), ckpt, lora_params, f.device, procs, cfg.strategy)["total"]

    micro = math.ceil(eff / procs) if cfg.batch_size == AUTO else int(cfg.batch_size)
    while cfg.batch_size == AUTO and micro > 1 and need(micro, False) > avail:
        micro //= 2
    ckpt_auto = cfg.gradient_checkpointing == AUTO
    use_ckpt = cfg.gradient_checkpointing == "on" or (ckpt_auto and need(micro, False) > avail)
    if cfg.batch_size == AUTO and use_ckpt:  # with checkpointing a bigger micro-batch may fit
        while micro < math.ceil(eff / procs) and need(micro * 2, True) <= avail:
            micro *= 2
    gb = need(micro, use_ckpt)
    where = f" on each GPU, in each of {procs} processes" if procs > 1 and sharing == 1 else \
        f" for {procs} processes" if procs > 1 else ""
    mem = f"needs ~{gb:.1f} of {room}{where}"
    decide("batch_size", micro, f"{mem} at max length {length}")
    accum = max(1, math.ceil(eff / (int(values["batch_size"]) * procs)))
    times = f"{procs} processes x " if procs > 1 else ""
    decide("grad_accum", accum, f"{times}{values['batch_size']} x {accum} = "
                                f"{procs * int(values['batch_size']) * accum} rows per step: "
                                + eff_reason)
    if ckpt_auto:
        values["gradient_checkpointing"] = "on" if use_ckpt else "off"
        reasons["gradient_checkpointing"] = (
            f"needed to fit: {mem} with it" if use_ckpt else
            f"off: fits without it ({mem}), and recomputing would cost ~30% more time")
    else:
        values["gradient_checkpointing"] = cfg.gradient_checkpointing
        reasons["gradient_checkpointing"] = "set by you"

    final_gb = need(int(values["batch_size"]), values["gradient_checkpointing"] == "on")
    busy = "" if f.free_gb is None or f.free_gb >= 0.9 * f.memory_gb else \
        f" ({f.free_gb:.1f} of {f.memory_gb:.0f} GB free: other programs hold the rest)"
    if final_gb > avail:
        tips = [t for t, ok in (("method 'qlora' (4-bit base model)", cfg.method != "qlora"),
                                ("a smaller batch size with more accumulation",
                                 int(values["batch_size"]) > 1),
                                ("gradient checkpointing 'on'",
                                 values["gradient_checkpointing"] != "on"),
                                ("a shorter max length", True)) if ok]
        if procs > 1 and cfg.strategy != "zero3" and cfg.method != "qlora":
            tips.insert(0, "strategy 'zero3' (weights sharded among the processes)")
        reasons["memory"] = (f"WILL NOT FIT: needs ~{final_gb:.1f} GB{where}, {avail:.1f} GB "
                             f"usable on this {f.device}{busy}. Try " + ", or ".join(tips) + ".")
    else:
        reasons["memory"] = (f"fits: needs ~{final_gb:.1f} GB of {avail:.1f} GB usable on this "
                             f"{f.device}" + (f"{where} ({cfg.strategy})" if procs > 1 else ""))

    per_step = int(values["batch_size"]) * int(values["grad_accum"]) * procs
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    n_val = f.n_val_file if f.has_val_file else round(float(vf) * f.n_rows)
    can_stop = cfg.early_stopping and n_val > 0
    parallel = procs if f.device == "cuda" else int(cfg.num_machines)
    epochs = decide("epochs", *passes(n_train, steps_per_epoch, row_tokens or int(length), f,
                                      cfg.method, can_stop, parallel))
    total = max(1, math.ceil(float(epochs) * steps_per_epoch))
    steps = decide("max_steps", total, f"{float(epochs):g} epoch(s) x {steps_per_epoch} steps")

    metric = decide("early_stopping_score", *answer_score(n_val, f, can_stop, procs))
    cost = score_cost(f)
    scored = 0
    if metric != "none" and can_stop:
        scored = int(decide("early_stopping_score_rows",
                            *score_rows(n_val, int(steps), per_step, cost)))
    else:
        decide("early_stopping_score_rows", max(1, min(n_val, SCORE_ROWS)),
               "no answers are scored (see early stopping score)" if can_stop else
               "no early stopping, so no answers are scored")
    every, every_reason = eval_interval(int(steps), n_val, per_step, scored, cost)
    decide("eval_steps", every, every_reason)
    decide("early_stopping_patience", *patience(n_val, f))
    # Saving at every evaluation lets the best checkpoint be restored at the end.
    decide("save_steps", values["eval_steps"], "with every validation, so the best one is kept")

    out = cfg.replace(**values)
    for name in ("method", "model", "data"):
        reasons.setdefault(name, "set by you" if getattr(cfg, name) != getattr(
            RunConfig(), name) else "default")
    return out, reasons


# --- measuring the facts -------------------------------------------------------------------------


def measure(cfg: RunConfig):
    """(Facts, model source, LoRA parameters per rank): the data's size and token lengths as
    training will see them, the model's shape from its config, the machine's measured speed."""
    import random

    from finetune import hardware, models
    from finetune.data import TokenCounter, prepare

    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source)  # also refuses a model without a chat template
    counter = TokenCounter.from_tokenizer(tokenizer, source.name)
    shape = models.model_shape(source)
    splits = prepare(cfg, 0.0)  # training + validation rows: the test split is already out
    rows = splits.train
    lengths, _ = counter.lengths_and_cut(rows, lambda ns: length_cut(ns, shape["context"])[0])
    sample = rows if len(rows) <= ANSWER_SAMPLE else \
        random.Random(cfg.seed).sample(rows, ANSWER_SAMPLE)
    hw = hardware.detect()
    precision, why = hardware.choose_precision(hw, hardware.probe())
    speed = hardware.probe().get(precision if cfg.precision == "auto" else cfg.precision, 0.0)
    facts = Facts(n_rows=len(rows), lengths=lengths, has_val_file=bool(cfg.val_data),
                  n_val_file=len(splits.val), answer_lengths=counter.answer_lengths(sample),
                  data_format=splits.report["format"], estimated_rows=counter.estimated_rows,
                  precision=precision, precision_reason=why, device=hw.device,
                  memory_gb=hw.memory_gb, free_gb=hardware.free_memory_gb(), gflops=speed,
                  gpus=hardware.gpu_count(), rows=rows, counter=counter,
                  liger_installed=liger.installed(),
                  liger_measured=liger.measured(hw.name) if hw.device == "cuda" else None,
                  model_folder=source.path if Path(source.path).is_dir() else
                  models.model_files(cfg.model),  # a Hub model: its cached config files
                  balanced=splits.report.get("balanced"), mixed=splits.report.get("mixed"),
                  **{k: v for k, v in shape.items() if k != "lora_per_rank"})
    return facts, source, shape["lora_per_rank"]


def plan(cfg: RunConfig) -> Plan:
    """Every 'auto' setting of a validated config made concrete, with the reason for each."""
    from finetune import hardware

    cfg.validate()
    if cfg.precision == "fp16" and hardware.detect().device == "cpu":
        raise ConfigError("precision fp16 needs a GPU (CPUs run it at ~2 GFLOP/s, and training "
                          "refuses it there): use 'auto', 'fp32' or 'bf16' on this machine.")
    facts, source, lora_per_rank = measure(cfg)
    liger.check(cfg.liger_kernels, facts.device, facts.model_type)
    resolved, reasons = resolve(cfg, facts, lora_per_rank)
    resolved.validate()  # what auto chose must work together too (processes x strategy x method)
    reasons["model"] = source.describe()
    found = data_checks(facts, int(resolved.max_length), source.name)
    errors = [c.message for c in found if c.level == "error"]
    if errors:
        raise DataError("Cannot train on this data: " + "\n".join(errors))
    for c in found:
        reasons[c.name] = ("WARNING: " if c.level == "warning" else "") + c.message
    return Plan(resolved, reasons, checks=[c.as_dict() for c in found])


def data_checks(f: Facts, max_length: int, model: str) -> list:
    """The traps before training (data.checks) on the rows and the max length of this plan."""
    from finetune.data import checks

    if f.rows is None:
        return []
    return checks.before_training(f.rows, f.counter, max_length, f.model_folder, f.lengths,
                                  f.balanced, model, f.mixed)
