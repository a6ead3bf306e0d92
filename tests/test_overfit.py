"""Overfitting read from metrics.jsonl rows (finetune.overfit), and the Train tab saying it.

Run: python -m pytest -q tests/test_overfit.py
"""

from __future__ import annotations

from finetune import overfit, runinfo


def records(train: list[float], val: dict[int, float]) -> list[dict]:
    out = []
    for step, loss in enumerate(train, 1):
        out.append({"step": step, "loss": loss})
        if step in val:
            out.append({"step": step, "eval_loss": val[step]})
    return out


FALLING = [2.0 - 0.04 * i for i in range(40)]  # training loss falls all along


def test_validation_rising_while_training_falls_is_flagged_with_the_step_it_began():
    found = overfit.overfitting(records(FALLING, {10: 1.2, 20: 0.9, 30: 0.95, 40: 1.05}))
    assert found["since_step"] == 20 and found["validations"] == 2
    assert found["message"].startswith("Overfitting since step 20: validation loss has risen "
                                       "for 2 validations (0.900 at step 20 -> 1.050 at step 40)")
    assert "The checkpoint of step 20 is the one to keep" in found["message"]


def test_no_flag_while_validation_falls_or_after_a_single_rise():
    assert overfit.overfitting(records(FALLING, {10: 1.2, 20: 0.9, 30: 0.8, 40: 0.7})) is None
    assert overfit.overfitting(records(FALLING, {10: 1.2, 20: 0.9, 30: 0.8, 40: 0.85})) is None
    assert overfit.overfitting(records(FALLING, {10: 1.0, 20: 1.2})) is None  # too few


def test_no_flag_when_training_loss_rises_too():
    rising = [1.0 + 0.05 * i for i in range(40)]
    assert overfit.overfitting(records(rising, {10: 1.2, 20: 0.9, 30: 0.95, 40: 1.05})) is None


def test_the_train_tab_live_view_says_it(finetune_home):
    from finetune.config import RunConfig
    from finetune.ui.train_tab import live_view

    run = runinfo.new_run_dir("overfit")
    RunConfig().save(run / "config.yaml")
    runinfo.update_status(run, state="completed", step=40, total_steps=40)
    for rec in records(FALLING, {10: 1.2, 20: 0.9, 30: 0.95, 40: 1.05}):
        runinfo.append_metrics(run, rec)
    text = live_view(run.name)[0]
    assert "⚠ **Overfitting since step 20" in text
