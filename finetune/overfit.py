"""Overfitting, read from a run's metrics.jsonl while it trains: validation loss rising for
several validations in a row while training loss falls, and the step where it began.

    python app.py      # the Train tab's live view says it under the run's status

Read from the metrics file alone (the training process decides when to stop; this only says
what the curves show), so the Train tab, the CLI and a finished run all read the same thing.
"""

from __future__ import annotations

RISES = 2  # validations in a row above the best one: "several" (one rise can be noise)
MARGIN = 0.01  # ... the last at least 1% above the best
WINDOW = 5  # training-loss points averaged on each side (single steps are noisy)


def overfitting(records: list[dict]) -> dict | None:
    """{'since_step', 'validations', 'val_best', 'val_last', 'train_then', 'train_now',
    'message'} when the validation loss has risen for RISES or more validations since its best
    while the training loss fell; None otherwise. `records`: metrics.jsonl rows in order."""
    val = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    if len(val) < RISES + 1:
        return None
    best = min(range(len(val)), key=lambda i: (val[i][1], i))
    best_step, best_loss = val[best]
    after = val[best + 1:]
    if len(after) < RISES or after[-1][1] <= best_loss * (1 + MARGIN):
        return None
    before = [v for s, v in train if s <= best_step][-WINDOW:]
    since = [v for s, v in train if s > best_step][-WINDOW:]
    if not before or not since:
        return None
    then, now = sum(before) / len(before), sum(since) / len(since)
    if now >= then:
        return None  # both rise: not overfitting (a learning rate too high, bad data)
    last_step, last_loss = after[-1]
    return {"since_step": best_step, "validations": len(after), "val_best": best_loss,
            "val_last": last_loss, "train_then": then, "train_now": now,
            "message": (f"Overfitting since step {best_step}: validation loss has risen for "
                        f"{len(after)} validations ({best_loss:.3f} at step {best_step} -> "
                        f"{last_loss:.3f} at step {last_step}) while training loss fell "
                        f"({then:.3f} -> {now:.3f}): the model is memorising its training rows "
                        f"instead of learning the task. The checkpoint of step {best_step} is "
                        "the one to keep (early stopping keeps the best one); more steps will "
                        "not help. More or more varied rows, or fewer epochs, will.")}
