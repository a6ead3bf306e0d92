"""The stopping rule: relative loss gains and the answer score decide when a run stops."""

import random

import pytest

from finetune import stopping


def feed(stopper, validations):
    """Check each (step, loss, right) in turn; the step the run stopped at, or None."""
    for step, loss, right in validations:
        n = 16 if right is not None else 0
        if stopper.check(step, loss, None if right is None else right / 16, n):
            return step
    return None


def test_a_loss_still_falling_fast_in_relative_terms_goes_on():
    # The run: validation loss 0.078 and falling ~6% per validation (a tenth of the
    # run); the old absolute rule (0.005 per tenth) called that flat and stopped.
    stopper = stopping.Stopper(patience=1, min_gain=0.05, max_steps=100)
    losses = [0.30, 0.15, 0.10, 0.083, 0.078, 0.073, 0.0686, 0.0645]
    assert feed(stopper, [(10 * (i + 1), loss, None) for i, loss in enumerate(losses)]) is None
    # ... and the same fall on a loss ten times higher is the same progress.
    high = stopping.Stopper(patience=1, min_gain=0.05, max_steps=100)
    assert feed(high, [(10, 0.78, None), (20, 0.73, None)]) is None
    # A loss that falls by only 1% of itself per tenth is flat.
    flat = stopping.Stopper(patience=1, min_gain=0.05, max_steps=100)
    assert feed(flat, [(10, 0.1, None), (20, 0.099, None)]) == 20
    assert flat.reason.startswith("validation loss flat at step 20 of 100: validation loss "
                                  "0.0990, 1.0% below the best before, less than the 5.0%")


def test_answers_still_improving_keep_the_run_going_while_the_loss_is_flat():
    stopper = stopping.Stopper(patience=1, min_gain=0.05, max_steps=100, metric="exact_match")
    assert feed(stopper, [(10, 0.10, 8), (20, 0.099, 10), (30, 0.0985, 12), (40, 0.098, 14)]) \
        is None


def test_a_flat_score_for_the_patience_stops_and_keeps_the_best():
    stopper = stopping.Stopper(patience=2, min_gain=0.05, max_steps=100, metric="exact_match")
    stopped = feed(stopper, [(60, 0.20, 10), (70, 0.12, 12), (80, 0.10, 14), (90, 0.099, 14),
                             (100, 0.0995, 13)])
    assert stopped == 100
    assert stopper.reason.startswith("validation answers: 14 of 16 right at step 80, 14 at 90 "
                                     "and 13 at 100: stopped (validation loss 0.0995")
    # The checkpoint kept is the best score, then the lowest loss: step 90 (14 right, 0.099).
    assert stopper.best().step == 90
    assert stopper.best_words() == " (14 of 16 right)"
    # The trainer keeps checkpoints by the same rank: a better score always wins, a lower loss
    # only between equal scores.
    assert stopping.rank(14 / 16, 0.5) > stopping.rank(13 / 16, 0.01)
    assert stopping.rank(14 / 16, 0.099) > stopping.rank(14 / 16, 0.10)


def test_a_noisy_score_on_a_tiny_validation_set_does_not_stop_a_run_early():
    # 13 one-word answers: the model learns steadily (the loss falls ~15% per tenth) while
    # the score jumps about by a row or two either way. It must not stop on a lucky early high.
    rng = random.Random(0)
    for seed in range(20):
        rng.seed(seed)
        stopper = stopping.Stopper(patience=3, min_gain=0.05, max_steps=100,
                                   metric="exact_match")
        loss = 0.6
        for step in range(10, 70, 10):
            loss *= 0.85
            right = max(0, min(13, 7 + step // 20 + rng.choice([-2, -1, 0, 1, 2])))
            assert not stopper.check(step, loss, right / 13, 13), (seed, stopper.reason)


def test_a_solved_task_stops_at_once():
    stopper = stopping.Stopper(patience=2, min_gain=0.05, max_steps=64, solved_loss=0.01)
    assert feed(stopper, [(8, 0.5, None), (16, 0.04, None), (24, 0.0085, None)]) == 24
    assert stopper.reason == ("validation loss 0.0085 at step 24 of 64 is below 0.01: the model "
                              "gives the answer tokens ~99% probability on average; the task is "
                              "learned")


def test_validations_further_apart_must_show_a_bigger_fall():
    # 5% per tenth: 8% over two tenths is not enough.
    stopper = stopping.Stopper(patience=1, min_gain=0.05, max_steps=100)
    assert feed(stopper, [(10, 0.100, None), (20, 0.094, None), (40, 0.0865, None)]) == 40
    assert "8.0% below the best before, less than the 10.0% that counts" in stopper.reason


def test_scores_are_exact_match_or_similarity():
    assert stopping.score_answers(["a", "b"], ["a", "c"], "exact_match") == 0.5
    assert 0.6 < stopping.score_answers(["please send the file"], ["please send the files"],
                                        "rouge_l") < 1.0


def test_a_stop_at_a_high_learning_rate_plans_steps_that_bring_it_to_zero():
    import torch
    from transformers import get_cosine_schedule_with_warmup

    def scheduler():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=4e-4)
        return opt, get_cosine_schedule_with_warmup(opt, 6, 129)

    opt, sched = scheduler()
    for _ in range(44):  # the rewrite run: told to stop at step 44 of 129
        opt.step()
        sched.step()
    anneal = stopping.plan_anneal(sched, 44, 129)
    assert (anneal.start, anneal.end) == (44, 53) and 0.7 < anneal.level < 0.8
    rates = []
    for _ in range(9):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(4e-4 * anneal.level)
    assert all(a > b for a, b in zip(rates, rates[1:])) and opt.param_groups[0]["lr"] == 0
    # Near the end of its schedule the rate is low already: the run stops at once.
    opt, sched = scheduler()
    for _ in range(110):
        opt.step()
        sched.step()
    assert stopping.plan_anneal(sched, 110, 129) is None


def test_a_validation_during_the_annealing_steps_does_not_end_them(tmp_path):
    # Validation every 2 steps, told to stop at step 20 (rate at its peak): 4 annealing steps,
    # so the validation at step 22 falls inside them; the run ends at 24.
    from types import SimpleNamespace

    import torch
    from transformers import TrainerControl, get_constant_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_constant_schedule(opt)
    stopper = stopping.Stopper(patience=1, min_gain=0.02, max_steps=100, solved_loss=0.01)
    hook = stopping.callback(stopper, [], tmp_path, log=lambda *a: None)
    args = SimpleNamespace(world_size=1, per_device_eval_batch_size=1)
    stopped = {}
    for step, loss in ((18, 0.02), (20, 0.005), (22, 0.004), (24, 0.003)):
        for _ in range(2):
            opt.step()
            sched.step()
        state, control = SimpleNamespace(global_step=step, max_steps=100), TrainerControl()
        hook.on_step_end(args, state, control)
        metrics = {"eval_loss": loss}
        hook.on_evaluate(args, state, control, metrics=metrics, lr_scheduler=sched)
        stopped[step] = (control.should_training_stop, metrics[stopping.RANK_METRIC])
    assert [stopped[s][0] for s in (18, 20, 22, 24)] == [False, False, False, True]
    assert stopped[24][1] > max(stopped[s][1] for s in (18, 20, 22))  # the annealed weights kept
    assert stopper.best().step == 24 and "then 4 steps with the learning rate falling to 0" \
        in stopper.reason
