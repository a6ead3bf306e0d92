"""When training stops: the validation loss in relative terms and, where answers are short enough to
generate cheaply, the task's own score on a few validation rows (greedy answers), checked at
every validation; the run goes on while either still improves. A run told to stop while its
learning rate is still high first takes a few steps with the rate falling to 0 (`plan_anneal`).

    python -m pytest tests/test_stopping.py -q

`Stopper` is the rule (pure logic, no torch); `callback()` hooks it into TRL's trainer: it
answers the scored rows, writes the score to metrics.jsonl and adds it to the trainer's metrics,
so the checkpoint kept at the end (`load_best_model_at_end`) is the one the rule calls best.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The trainer keeps the checkpoint with the highest rank: the score first, then (between equal
# scores) the lower validation loss. The loss term stays below one answer in 64 while the loss is
# under 10, so it only ever breaks ties.
RANK_METRIC = "eval_answer_rank"
SCORE_METRIC = "eval_answer_score"
_LOSS_WEIGHT = 1e-3
SCORES = ("exact_match", "rouge_l")
# A run stopped while its learning rate is still above ANNEAL_ABOVE of the peak goes on for
# ANNEAL_SHARE of the steps it made, the rate falling to 0, before it ends: weights left at a
# high rate are noisy. Measured on sample:rewrite (docs/BENCHMARKS.md): stopped at step 44 of 129
# (the rate at ~3/4 of its peak) it answered 70% of the held-out rows; the same 44 steps
# with the rate decayed to 0 answered 76%.
ANNEAL_ABOVE = 0.5
ANNEAL_SHARE = 0.2
# Exact-match answers: a right answer can be seen without writing it (one forward pass over
# prompt + reference, `generation.greedy_answers`); only the wrong ones are then generated, which
# costs about as much as generating all. It pays when most rows are right, so it is used once the
# last validation had SEEN_FROM of them right. Measured on the demo's 8 rows (2 cores): 2.2 s
# with all right, 5.9 s with 1 wrong, 9.6 s with 2 wrong, against 7.5-9 s generating all 8.
SEEN_FROM = 0.75


def rank(score: float | None, loss: float) -> float:
    """The value the trainer keeps the best checkpoint by (higher is better)."""
    return (score or 0.0) - _LOSS_WEIGHT * min(float(loss), 10.0)


@dataclass
class Validation:
    step: int
    loss: float
    score: float | None = None  # 0..1: share right (exact match) or mean ROUGE-L
    n: int = 0  # answers scored


@dataclass
class Stopper:
    """Stops once, `patience` validations in a row, neither signal improved:
    - the validation loss did not fall by `min_gain` of itself per tenth of the run (relative,
      so 0.078 -> 0.073 counts as much as 0.78 -> 0.73);
    - the answer score (when there is one) did not beat its best so far.
    Both must be flat: a score on a few rows jumps about by chance, and while the loss still
    falls steadily the model is still learning. It also stops at once when the loss is below
    `solved_loss` (the task is learned). `reason` says what stopped it."""

    patience: int
    min_gain: float
    max_steps: int
    solved_loss: float = 0.0
    metric: str | None = None  # "exact_match", "rouge_l" or None (the loss alone)
    history: list[Validation] = field(default_factory=list)
    reason: str | None = None
    flat: int = 0
    kept: Validation | None = None  # the annealed weights, when they are kept

    def best(self) -> Validation | None:
        """The validation the trainer keeps: the annealed weights (`annealed`), else the highest
        score, then lowest loss (earliest on ties)."""
        if self.kept is not None:
            return self.kept
        return max(self.history, key=lambda v: rank(v.score, v.loss), default=None)

    def check(self, step: int, loss: float, score: float | None = None, n: int = 0) -> bool:
        """Record one validation; True when the run should stop (then `reason` says why)."""
        before = list(self.history)
        now = Validation(step, float(loss), score, n)
        self.history.append(now)
        if loss < self.solved_loss:
            self.reason = (f"validation loss {loss:.4f} at step {step} of {self.max_steps} is "
                           f"below {self.solved_loss:g}: the model gives the answer tokens ~"
                           f"{100 * math.exp(-loss):.0f}% probability on average; the task is "
                           "learned")
            return True
        if not before:
            return False
        prev = before[-1]
        best_loss = min(v.loss for v in before)
        gain = (best_loss - loss) / best_loss if best_loss > 0 else 0.0
        need = self.min_gain * (step - prev.step) / (max(1, self.max_steps) / 10)
        loss_better = gain > 0 and gain >= need
        scored = [v.score for v in before if v.score is not None]
        score_better = score is not None and (not scored or score > max(scored) + 1e-9)
        if loss_better or score_better:
            self.flat = 0
            return False
        self.flat += 1
        if self.flat < self.patience:
            return False
        since = before[-self.patience] if self.patience <= len(before) else before[0]
        loss_words = (f"validation loss {loss:.4f}, {max(0.0, gain):.1%} below the best before, "
                      f"less than the {need:.1%} that counts")
        if score is not None and scored:
            self.reason = f"validation answers: {self._answers(since)}: stopped ({loss_words})"
        else:
            self.reason = (f"validation loss flat at step {step} of {self.max_steps}: "
                           f"{loss_words} (since step {since.step}); more steps would add little")
        return True

    def _answers(self, since: Validation) -> str:
        """'14 of 16 right at step 80, 14 at 90 and 100' (from the best before the flat run)."""
        tail = self.history[-self.patience:]
        best = max((v for v in self.history[:-self.patience] if v.score is not None),
                   key=lambda v: v.score, default=since)
        first = f"{self.describe(best)} at step {best.step}"
        rest = [f"{self._short(v)} at {v.step}" for v in tail]
        if len(rest) > 1:
            rest = [", ".join(rest[:-1]) + " and " + rest[-1]]
        return ", ".join([first, *rest])

    def describe(self, v: Validation) -> str:
        if v.score is None:
            return f"loss {v.loss:.4f}"
        if self.metric == "exact_match":
            return f"{round(v.score * v.n)} of {v.n} right"
        return f"ROUGE-L {v.score:.2f} on {v.n}"

    def _short(self, v: Validation) -> str:
        if v.score is None:
            return "no score"
        return str(round(v.score * v.n)) if self.metric == "exact_match" else f"{v.score:.2f}"

    def annealed(self, step: int, loss: float, score: float | None = None, n: int = 0) -> float:
        """Record the validation after the annealing steps, and return the rank the trainer keeps
        checkpoints by: above every earlier validation (the annealed weights are kept), unless
        their answers got worse than the best or their loss rose by more than a tenth."""
        best, now = self.best(), Validation(step, float(loss), score, n)
        self.history.append(now)
        worse = best is not None and ((score or 0.0) < (best.score or 0.0) - 1e-9
                                      or loss > 1.1 * best.loss)
        if worse:
            return rank(score, loss)
        self.kept = now
        return 2.0

    def to_dict(self) -> dict:
        """What the rule has seen and decided, for a checkpoint (JSON)."""
        return {"history": [asdict(v) for v in self.history], "reason": self.reason,
                "flat": self.flat, "kept": asdict(self.kept) if self.kept else None}

    def restore(self, saved: dict) -> None:
        """Continue from `to_dict()` of a checkpoint: a resumed run counts on from there."""
        self.history = [Validation(**v) for v in saved.get("history", [])]
        self.reason, self.flat = saved.get("reason"), int(saved.get("flat", 0))
        self.kept = Validation(**saved["kept"]) if saved.get("kept") else None

    def best_words(self) -> str:
        """How the kept checkpoint scored, for the end reason ('' without a score)."""
        b = self.best()
        return f" ({self.describe(b)})" if b is not None and b.score is not None else ""


@dataclass
class Anneal:
    """The steps after a stop decision in which the learning rate falls linearly to 0."""

    start: int  # the step the rule said stop
    end: int  # the step the run ends at
    level: float  # the rate at `start`, as a share of the peak
    levels: list[float] = field(default_factory=list)  # each parameter group's share at `start`
    until: int = 0  # the scheduler's count at which the rate reaches 0

    def apply(self, scheduler) -> bool:
        """Make `scheduler` (a LambdaLR, as transformers makes them, or one wrapped by
        accelerate) fall linearly from `levels` to 0 at `until`; False for another kind."""
        inner = getattr(scheduler, "scheduler", scheduler)
        if not getattr(inner, "lr_lambdas", None) or len(inner.lr_lambdas) != len(self.levels):
            return False
        steps, until = self.end - self.start, self.until
        inner.lr_lambdas = [lambda t, at=lv: at * max(0.0, (until - t) / steps)
                            for lv in self.levels]
        return True

    def words(self) -> str:
        return (f"; then {self.end - self.start} steps with the learning rate falling to 0 "
                f"(it was at {self.level:.0%} of its peak), so the weights settle")


def plan_anneal(scheduler, step: int, max_steps: int) -> Anneal | None:
    """When a run is told to stop at `step` with its rate above ANNEAL_ABOVE of the peak: the
    annealing steps, with `scheduler` (a LambdaLR, as transformers makes them, or one wrapped by
    accelerate) changed so that the rate falls from where it is to 0 over them. None (stop now)
    otherwise, or for a scheduler that is not a LambdaLR."""
    inner = getattr(scheduler, "scheduler", scheduler)
    lambdas = getattr(inner, "lr_lambdas", None)
    if not lambdas or not hasattr(inner, "last_epoch"):
        return None
    now = int(inner.last_epoch)
    levels = [float(f(now)) for f in lambdas]
    level = max(levels)
    steps = min(max(1, round(ANNEAL_SHARE * step)), max_steps - step)
    if level <= ANNEAL_ABOVE or steps < 1:
        return None
    anneal = Anneal(step, step + steps, level, levels, now + steps)
    anneal.apply(inner)
    return anneal


def score_answers(answers: list[str], references: list[str], metric: str) -> float:
    from finetune import metrics

    if metric == "exact_match":
        return metrics.exact_match(answers, references) or 0.0
    return metrics.rouge_l(answers, references) or 0.0


def max_new_tokens(tokenizer, references: list[str]) -> int:
    """Room for the longest reference answer, and a little more (a longer answer is wrong)."""
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references),
                  default=1)
    return int(1.25 * longest) + 4


def callback(stopper: Stopper, rows: list[tuple[list[dict], str]], run_dir: Path, log=print):
    """A TrainerCallback: after each validation, answer `rows` (prompt messages, reference)
    greedily when the stopper has a metric and the run is one process, write the score to
    metrics.jsonl, hand the trainer the rank it keeps the best checkpoint by, and stop the run
    when the stopper says so."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    from finetune import generation, runinfo

    class StopCallback(TrainerCallback, ExportableState):
        anneal: Anneal | None = None

        # The trainer writes state() into each checkpoint's trainer_state.json and, resuming,
        # makes a new StopCallback and sets `saved` on it (`restore_callback_states_from_
        # checkpoint`): a run stopped and resumed keeps its validations and its annealing.
        def state(self) -> dict:
            return {"args": {}, "attributes": {"saved": self.saved}}

        @property
        def saved(self) -> dict:
            return {"stopper": stopper.to_dict(),
                    "anneal": asdict(self.anneal) if self.anneal else None}

        @saved.setter
        def saved(self, value: dict) -> None:
            stopper.restore(value.get("stopper", {}))
            self.anneal = Anneal(**value["anneal"]) if value.get("anneal") else None

        def on_train_begin(self, args, state, control, lr_scheduler=None, **kw):
            # a checkpoint saved before the rule was saved in it has no entry for it, and the
            # trainer's next save would fail on the missing key
            if state.stateful_callbacks is not None:
                state.stateful_callbacks.setdefault(type(self).__name__, self.state())
            if self.anneal is not None and lr_scheduler is not None:  # resumed while annealing
                self.anneal.apply(lr_scheduler)

        def on_step_end(self, args, state, control, **kw):
            if self.anneal is not None and state.global_step >= self.anneal.end:
                control.should_evaluate = True  # the annealed weights are validated and saved,
                control.should_save = True  # so the best checkpoint can be them

        def on_evaluate(self, args, state, control, metrics=None, model=None,
                        processing_class=None, lr_scheduler=None, **kw):
            metrics = metrics if metrics is not None else {}
            loss = metrics.get("eval_loss")
            if loss is None:
                return
            score, n = None, 0
            # With several processes the loss alone decides (every process computes the same
            # gathered loss, so they stop together; answering would need each process's shard).
            if stopper.metric and rows and model is not None and args.world_size == 1:
                t0, training = time.time(), model.training
                model.eval()
                refs = [r for _, r in rows]
                budget = max_new_tokens(processing_class, refs)
                batch = args.per_device_eval_batch_size
                last = stopper.history[-1].score if stopper.history else None
                if stopper.metric == "exact_match" and last is not None and last >= SEEN_FROM:
                    answers = generation.greedy_answers(model, processing_class, rows, budget,
                                                        batch)
                else:
                    answers = generation.generate_batch(
                        model, processing_class, [p for p, _ in rows], budget, batch_size=batch)
                model.train(training)
                score, n = score_answers(answers, refs, stopper.metric), len(rows)
                metrics[SCORE_METRIC] = score
                seconds = round(time.time() - t0, 2)
                runinfo.append_metrics(run_dir, {"step": state.global_step,
                                                 "eval_score": round(score, 4),
                                                 "eval_score_metric": stopper.metric,
                                                 "eval_score_rows": n, "eval_score_s": seconds})
            if self.anneal is not None:  # annealing: only its last step's validation counts
                if state.global_step < self.anneal.end:
                    metrics[RANK_METRIC] = rank(score, loss)
                    return
                metrics[RANK_METRIC] = stopper.annealed(state.global_step, float(loss), score, n)
                log(f"validation at step {state.global_step}, after annealing: "
                    f"{stopper.describe(stopper.history[-1])}")
                control.should_training_stop = True
                return
            metrics[RANK_METRIC] = rank(score, loss)
            stop = stopper.check(state.global_step, float(loss), score, n)
            if score is not None:
                log(f"validation answers at step {state.global_step}: "
                    f"{stopper.describe(stopper.history[-1])}")
            if not stop:
                return
            self.anneal = plan_anneal(lr_scheduler, state.global_step, int(state.max_steps))
            if self.anneal is None:
                control.should_training_stop = True
                return
            stopper.reason += self.anneal.words()
            log(f"{stopper.reason}: annealing until step {self.anneal.end}")

    return StopCallback()


def from_config(cfg) -> Stopper:
    """The rule a resolved RunConfig asks for."""
    metric = cfg.early_stopping_score if cfg.early_stopping_score in SCORES else None
    return Stopper(int(cfg.early_stopping_patience), float(cfg.early_stopping_min_delta),
                   int(cfg.max_steps), float(cfg.early_stopping_loss), metric)


def scored_rows(cfg, val_rows: list[dict]) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference) of the validation rows answered at each validation: the
    first `early_stopping_score_rows` that have an answer (none when no score is used)."""
    from finetune.data import prompt_and_answer

    if cfg.early_stopping_score not in SCORES:
        return []
    pairs = [pa for row in val_rows if "text" not in row and (pa := prompt_and_answer(row))]
    return pairs[:int(cfg.early_stopping_score_rows)]


def end_reason(state, max_steps: int, stopper: Stopper | None) -> tuple[str, int | None]:
    """How a completed run ended, in words, and the step of the checkpoint kept."""
    best_step = None
    if state.best_model_checkpoint:
        best_step = int(state.best_model_checkpoint.rstrip("/").split("-")[-1])
    words = stopper.best_words() if stopper is not None else ""
    if stopper is not None and stopper.reason and state.global_step < max_steps:
        best = f"; best at step {best_step}{words}" if best_step else ""
        return stopper.reason + best, best_step
    best = f"; best validation at step {best_step}{words}" if best_step else ""
    return f"finished all {max_steps} steps{best}", best_step


def trainer_settings(early: bool) -> dict:
    """The SFTConfig settings that keep the checkpoint this rule calls best."""
    if not early:
        return {"load_best_model_at_end": False}
    return {"load_best_model_at_end": True, "metric_for_best_model": RANK_METRIC,
            "greater_is_better": True, "restore_callback_states_from_checkpoint": True}
