"""The settings: `RunConfig` feeds the Train tab, the CLI and the training process;
`GenerationSettings` feeds the Chat tab, the chat command and evaluation.

Precedence: dataclass default < YAML file < CLI flag < UI. Settings whose default is "auto" are
decided from the data and the machine by `finetune.plan` before a run starts; the resolved,
concrete values are written to the run directory so the run can be repeated exactly.

    python -m finetune train --help      # every field below, as a flag
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from finetune.errors import ConfigError
from finetune.bundled import BUNDLED_NAME

AUTO = "auto"
DEFAULT_MODEL = BUNDLED_NAME
DEFAULT_DATA = "sample:contacts"
# Early stopping (finetune.stopping): the validation loss must fall by MIN_GAIN of itself per tenth
# of the run, or the answers on validation rows get better (chosen on the bundled tasks and two of
# our own: docs/BENCHMARKS.md; at 0.05 the dates task stopped at step 64 of 96 while its loss
# still fell 6% per validation, at 34% exact match).
MIN_GAIN = 0.02
SOLVED_LOSS = 0.01  # ... or once it is this low: the task is learned

Auto = Union[str, int, float]  # "auto" or a concrete value


def _f(default, help, group="basic", **meta):
    return field(default=default, metadata={"help": help, "group": group, **meta})


@dataclass
class RunConfig:
    # --- what to train on what
    model: str = _f(DEFAULT_MODEL, f"Base model: the bundled '{BUNDLED_NAME}', a local directory, "
                    "or a Hugging Face Hub id such as 'HuggingFaceTB/SmolLM2-360M-Instruct'.")
    data: str = _f(DEFAULT_DATA, "Training data: a file (JSONL, JSON, CSV, TSV, Parquet, TXT, MD, "
                   "PDF, DOCX), a folder or an archive (.zip, .tar, .tar.gz) of such files, "
                   "a bundled sample ('sample:contacts', 'sample:tickets', 'sample:rewrite') or a "
                   "Hub dataset id.")
    data_format: str = _f("auto", "How rows are read; 'auto' detects it from the columns.",
                          choices=["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"],
                          group="data")
    column_map: str = _f("", "Which of your columns hold what, for data in no known format "
                         "(common names such as question/answer are read without one): "
                         "e.g. 'prompt=ticket, completion=category'.", group="data")
    val_data: str = _f("", "Validation file. Empty: held out from the training data.", group="data")
    test_data: str = _f("", "Test file for evaluation. Empty: the sample's own test split, or "
                        "held out from the training data.", group="data")
    val_fraction: Auto = _f(AUTO, "Share of training rows held out for validation when no "
                            "validation file is given.", group="data", type=float, min=0.0, max=0.5)
    test_fraction: float = _f(0.1, "Share of training rows held out for the test split when no "
                              "test file is given.", group="data", type=float, min=0.0, max=0.5)
    system_prompt: str = _f("", "System message added to rows that have none.", group="data")
    balance_labels: bool = _f(False, "When the answers are a small set of labels (a "
                              "classification-like task): down-sample the training and "
                              "validation rows so every label has as many rows as the rarest "
                              "one (the test split keeps its own mix).", group="data")
    mix_general: float = _f(0.0, "Share of the training rows that are general instruction rows "
                            "mixed in against forgetting (e.g. 0.2); 0: none. Compare runs with "
                            "and without on the evaluation's general-knowledge probe.",
                            group="data", type=float, min=0.0, max=0.9)
    mix_data: str = _f("", "General instruction data for mix_general: a file or Hub dataset id. "
                       "Empty: the shipped general sample.", group="data")

    # --- how
    method: str = _f("lora", "full: train every weight; lora: train small adapters; qlora: "
                     "adapters on a 4-bit base model (least memory).", choices=["lora", "qlora", "full"])
    lora_r: Auto = _f(AUTO, "LoRA rank: adapter capacity.", group="lora", type=int, min=1, max=1024)
    lora_alpha: Auto = _f(AUTO, "LoRA alpha: adapter scale ('auto': twice the rank).", group="lora",
                          type=int, min=1, max=4096)
    lora_dropout: float = _f(0.0, "Dropout on the adapter inputs.", group="lora", type=float,
                             min=0.0, max=0.9)
    lora_target: str = _f("all-linear", "Which layers get adapters: 'all-linear' or a comma-"
                          "separated list of module names such as 'q_proj,v_proj'.", group="lora")
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA (slower, sometimes better).", group="lora")

    # --- schedule
    epochs: Auto = _f(AUTO, "Passes over the training data.", group="schedule", type=float,
                      min=0.01, max=100.0)
    max_steps: Auto = _f(AUTO, "Optimizer steps; 'auto' follows from epochs and batch size.",
                         group="schedule", type=int, min=1, max=10_000_000)
    batch_size: Auto = _f(AUTO, "Rows per forward pass.", group="schedule", type=int, min=1, max=4096)
    grad_accum: Auto = _f(AUTO, "Forward passes per optimizer step.", group="schedule", type=int,
                          min=1, max=1024)
    learning_rate: Auto = _f(AUTO, "Peak learning rate.", group="schedule", type=float,
                             min=1e-8, max=1.0)
    lr_scheduler: str = _f("cosine", "Learning-rate schedule after warm-up.", group="schedule",
                           choices=["cosine", "linear", "constant"])
    warmup_ratio: float = _f(0.05, "Share of steps spent warming up the learning rate.",
                             group="schedule", type=float, min=0.0, max=0.5)
    max_length: Auto = _f(AUTO, "Longest row in tokens; longer rows are truncated.",
                          group="schedule", type=int, min=8, max=1_000_000)
    packing: bool = _f(False, "Pack several short rows into one sequence (faster on many short rows).",
                       group="schedule")
    seed: int = _f(42, "Random seed for the split, the adapters and the data order.", group="schedule",
                   type=int, min=0, max=2**31 - 1)

    # --- machine
    precision: str = _f(AUTO, "Number format for training; 'auto' measures what this machine "
                        "runs fastest.", choices=[AUTO, "fp32", "bf16", "fp16"], group="machine")
    gradient_checkpointing: str = _f(AUTO, "Recompute activations to save memory at ~30% more time.",
                                     choices=[AUTO, "on", "off"], group="machine")
    liger_kernels: str = _f(AUTO, "Liger's fused RMSNorm, SwiGLU and RoPE kernels (NVIDIA GPUs); "
                            "'auto': on where `bench train --liger` measured them faster on "
                            "this GPU.", choices=[AUTO, "on", "off"], group="machine")

    # --- several GPUs, then several machines (launched through accelerate: finetune.launch)
    num_processes: Auto = _f(AUTO, "Training processes in all, one per GPU ('auto': one per "
                             "visible GPU, 1 on a CPU); above 1 the run is started with "
                             "`accelerate launch`.", group="distributed", type=int, min=1,
                             max=4096)
    strategy: str = _f("ddp", "How processes share the work: ddp (each GPU holds the whole "
                       "model), fsdp (weights, gradients and optimizer state sharded), zero2 "
                       "(DeepSpeed: gradients and optimizer state sharded), zero3 (DeepSpeed: "
                       "everything sharded). Used only with more than one process.",
                       choices=["ddp", "fsdp", "zero2", "zero3"], group="distributed")
    num_machines: int = _f(1, "Machines (nodes) taking part; each runs its share of the "
                           "processes.", group="cluster", type=int, min=1, max=1024)
    machine_rank: int = _f(0, "This machine's number among them (0: the main one, which "
                           "writes the run directory).", group="cluster", type=int, min=0,
                           max=1023)
    main_process_ip: str = _f("", "Address of machine 0, which the others connect to (needed "
                              "with more than one machine).", group="cluster")
    main_process_port: int = _f(29500, "Port on machine 0 for the processes to meet (0: any "
                                "free port, one machine only).", group="cluster", type=int,
                                min=0, max=65535)

    # --- evaluation and stopping
    eval_steps: Auto = _f(AUTO, "Validate every N steps.", group="evaluation", type=int, min=1,
                          max=10_000_000)
    save_steps: Auto = _f(AUTO, "Save a checkpoint every N steps (resume starts from the latest).",
                          group="evaluation", type=int, min=1, max=10_000_000)
    early_stopping: bool = _f(True, "Stop when neither the validation loss nor the answers on "
                              "validation rows improve any more, and keep the best checkpoint.",
                              group="evaluation")
    early_stopping_score: str = _f(
        AUTO, "How answers to validation rows are scored at each validation (greedy answers): "
        "exact_match, rouge_l (similarity, for long answers), or none (the validation loss "
        "alone); 'auto': exact match for short answers, ROUGE-L for longer ones, none for answers "
        "too long to generate cheaply.", choices=[AUTO, "exact_match", "rouge_l", "none"],
        group="evaluation")
    early_stopping_score_rows: Auto = _f(AUTO, "Validation rows answered at each validation "
                                         "('auto': the validation rows, at most 32, fewer when "
                                         "answering would take more than the validation budget).",
                                         group="evaluation", type=int, min=1, max=10_000)
    early_stopping_patience: Auto = _f(AUTO, "Validations in a row with neither a better score "
                                       "nor a lower loss before stopping ('auto': 1, or 3 when "
                                       "the validation set holds few answer tokens and jumps "
                                       "about by chance).",
                                       group="evaluation", type=int, min=1, max=1000)
    early_stopping_min_delta: float = _f(
        MIN_GAIN, "Share of itself the validation loss must fall by for every tenth of the run "
        "to count as an improvement (relative: 0.02 means 2%, so 0.078 -> 0.0764 counts as much "
        "as 0.78 -> 0.764); 0: any fall counts.",
        group="evaluation", type=float, min=0.0, max=1.0)
    early_stopping_loss: float = _f(
        SOLVED_LOSS, "Stop as soon as validation loss is this low: at 0.01 the model already gives "
        "each answer token ~99% probability; 0: never stop for this.", group="evaluation",
        type=float, min=0.0, max=10.0)
    report_to: str = _f("none", "Also log metrics to trackio (when installed).",
                        choices=["none", "trackio"], group="evaluation")

    name: str = _f("", "Run name (a folder under runs/); empty: made from the data and the time.",
                   group="basic")

    def validate(self) -> "RunConfig":
        """Raise ConfigError naming every bad value; return self when all are fine."""
        problems = [p for f in dataclasses.fields(self) if (p := _check(f, getattr(self, f.name)))]
        problems = problems or _distributed_problems(self)  # each value fine: how they combine
        if problems:
            raise ConfigError("Invalid settings:\n  - " + "\n  - ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return from_dict({**self.to_dict(), **changes})

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
AUTO_FIELDS = [n for n, f in FIELDS.items() if f.type == "Auto" or f.default == AUTO]


def _check(f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    name = f.name
    if "choices" in meta:
        if value not in meta["choices"]:
            return f"{name}: {value!r} is not one of {', '.join(map(str, meta['choices']))}"
        return None
    if f.type == "bool":
        return None if isinstance(value, bool) else f"{name}: expected true or false, got {value!r}"
    want = meta.get("type")
    if want is None:
        return None if isinstance(value, str) else f"{name}: expected text, got {value!r}"
    if value == AUTO and f.type == "Auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        auto = " or 'auto'" if f.type == "Auto" else ""
        return f"{name}: expected a number{auto}, got {value!r}"
    if want is int and int(value) != value:
        return f"{name}: expected a whole number, got {value!r}"
    if not meta.get("min", float("-inf")) <= value <= meta.get("max", float("inf")):
        return f"{name}: {value!r} is outside {meta.get('min')}..{meta.get('max')}"
    return None


def _distributed_problems(cfg: RunConfig) -> list[str]:
    """The settings of several processes that cannot work together, each with what to change."""
    problems = []
    if cfg.num_machines > 1:
        if not cfg.main_process_ip.strip():
            problems.append(f"main_process_ip: {cfg.num_machines} machines need the address of "
                            "machine 0 (e.g. --main-process-ip 10.0.0.1)")
        if cfg.main_process_port == 0:
            problems.append("main_process_port: 0 (any free port) works on one machine only; "
                            "give the port the other machines reach machine 0 on (e.g. 29500)")
    if cfg.machine_rank >= cfg.num_machines:
        problems.append(f"machine_rank: {cfg.machine_rank} is not below num_machines "
                        f"({cfg.num_machines}); machines are numbered from 0")
    if cfg.num_processes != AUTO and cfg.num_machines > 1 and \
            (isinstance(cfg.num_processes, bool) or not isinstance(cfg.num_processes, int)
             or cfg.num_processes % cfg.num_machines):
        problems.append(f"num_processes: {cfg.num_processes} processes cannot be shared evenly "
                        f"by {cfg.num_machines} machines (give the total: processes per machine "
                        "x machines)")
    if cfg.method == "qlora" and cfg.strategy != "ddp" and cfg.num_processes not in (AUTO, 1):
        problems.append(f"strategy: {cfg.strategy} does not shard a 4-bit (qlora) base model "
                        "here; use strategy 'ddp' with qlora, or method 'lora' with "
                        f"{cfg.strategy}")
    return problems


def coerce(name: str, value: Any) -> Any:
    """Turn text from a CLI flag or a UI textbox into the field's type ('auto' stays 'auto')."""
    f = FIELDS[name]
    if not isinstance(value, str):
        if f.metadata.get("type") is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    text = value.strip()
    if f.type == "bool":
        if text.lower() in ("true", "yes", "on", "1"):
            return True
        if text.lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    want = f.metadata.get("type")
    if want is None or "choices" in f.metadata or (f.type == "Auto" and text.lower() == AUTO):
        return text.lower() if text.lower() == AUTO else text
    try:
        number = float(text)
    except ValueError:
        auto = " or 'auto'" if f.type == "Auto" else ""
        raise ConfigError(f"{name}: expected a number{auto}, got {value!r}") from None
    return int(number) if want is int and number.is_integer() else number


def _check_keys(data: Any, fields: dict, source: str) -> None:
    """ConfigError unless data is a mapping of known settings; unknown ones are named, with the
    closest known name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of setting: value, got {type(data).__name__}")
    unknown = [k for k in data if k not in fields]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), fields, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(hints)}. "
                          f"Known settings: {', '.join(fields)}.")


def _build(cls, data: Any, fields: dict, coerce_one, check_one, source: str):
    """An instance of the dataclass `cls` from text or values: unknown keys named, each value
    coerced and checked, every problem in one ConfigError."""
    _check_keys(data, fields, source)
    values, problems = {}, []
    for k, v in data.items():
        try:
            values[k] = coerce_one(k, v)
        except ConfigError as e:
            problems.append(str(e))
    obj = cls(**values)
    problems += [p for name in values if (p := check_one(fields[name], getattr(obj, name)))]
    if problems:
        raise ConfigError(f"{source}: invalid settings:\n  - " + "\n  - ".join(problems))
    return obj


def from_dict(data: dict[str, Any], source: str = "settings") -> RunConfig:
    """Build a validated config; unknown keys are an error that names them."""
    return _build(RunConfig, data, FIELDS, coerce, _check, source).validate()


def load(path: str | Path) -> RunConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}).") from None
    return from_dict(data or {}, source=str(path))


def groups() -> dict[str, list[str]]:
    """Field names by UI group, in declaration order."""
    out: dict[str, list[str]] = {}
    for name, f in FIELDS.items():
        out.setdefault(f.metadata["group"], []).append(name)
    return out


# --- generation -----------------------------------------------------------------------------------


def _g(default, label, help, **meta):
    return field(default=default, metadata={"label": label, "help": help, **meta})


@dataclass
class GenerationSettings:
    """How an answer is generated: the chat command's flags, the Chat tab's generation widgets,
    and evaluation (which keeps the greedy defaults and sets its own max_new_tokens).

        python -m finetune chat --help      # every field below, as a flag
    """

    max_new_tokens: int = _g(256, "Max new tokens", "The answer stops here at the latest.",
                             type=int, min=1, max=2048, step=1)
    temperature: float = _g(0.0, "Temperature", "0: always the most likely next word (greedy, "
                            "repeatable). Higher: more varied.", type=float, min=0.0, max=2.0,
                            step=0.05)
    top_p: float = _g(1.0, "Top-p", "With temperature > 0: sample only from the most likely words "
                      "that make up this share.", type=float, min=0.05, max=1.0, step=0.05)
    repetition_penalty: float = _g(1.0, "Repetition penalty", "Above 1: words already in the "
                                   "prompt or answer become less likely (against loops); 1: off.",
                                   type=float, min=1.0, max=2.0, step=0.05)
    stop: list[str] = field(default_factory=list, metadata={
        "label": "Stop strings", "type": list,
        "help": "The answer ends before the first of these (one per line; write \\n for a line "
                "break)."})

    def validate(self) -> "GenerationSettings":
        """Raise ConfigError naming every bad value; return self when all are fine."""
        problems = [p for f in dataclasses.fields(self)
                    if (p := _check_generation(f, getattr(self, f.name)))]
        if problems:
            raise ConfigError("Invalid generation settings:\n  - " + "\n  - ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "generation settings"
                  ) -> "GenerationSettings":
        """Validated settings from text or numbers (CLI flags, widgets); unknown keys are an
        error that names them."""
        return _build(cls, data, GENERATION_FIELDS, _coerce_generation, _check_generation,
                      source)


GENERATION_FIELDS = {f.name: f for f in dataclasses.fields(GenerationSettings)}


def parse_stops(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Stop strings from a textbox (one per line, blank lines left out) or a list; '\\n' written
    out means a newline."""
    if not value:
        return []
    items = [s for s in value.splitlines() if s.strip()] if isinstance(value, str) else value
    return [s.replace("\\n", "\n") for s in items if s]


def _coerce_generation(name: str, value: Any) -> Any:
    f = GENERATION_FIELDS[name]
    if name == "stop":
        if value is None or isinstance(value, str) or (
                isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value)):
            return parse_stops(value)
        raise ConfigError(f"stop: expected text or a list of strings, got {value!r}")
    want = f.metadata["type"]
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_generation(f: dataclasses.Field, value: Any) -> str | None:
    if f.name == "stop":
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return None
        return f"stop: expected a list of strings, got {value!r}"
    return _check(f, value)
