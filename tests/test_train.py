"""Training: a short real run on a tiny model writes the run directory and its loss falls."""

import json

import pytest

from finetune import config, jobs, runinfo, train


def tiny_config(tiny_model, tiny_data, **kw):
    settings = dict(model=str(tiny_model), data=str(tiny_data), max_steps=16, batch_size=4,
                    grad_accum=1, eval_steps=4, save_steps=4, learning_rate=3e-3, method="full",
                    early_stopping=False, warmup_ratio=0.0, lr_scheduler="constant")
    settings.update(kw)
    return config.RunConfig(**settings)


def test_full_run_writes_the_run_directory_and_loss_falls(tiny_model, tiny_data):
    run_dir = jobs.prepare_run(tiny_config(tiny_model, tiny_data)).run_dir
    assert runinfo.read_status(run_dir)["state"] == "queued"
    saved = config.load(run_dir / "config.yaml")
    assert "auto" not in [getattr(saved, n) for n in ("max_length", "precision", "val_fraction")]
    reasons = runinfo.read_resolved(run_dir)
    assert reasons["batch_size"] == "set by you" and "covers" in reasons["max_length"]

    status = train.run(run_dir)
    assert status["state"] == "completed", status
    assert "finished all 16 steps" in status["end_reason"]
    losses = [m["loss"] for m in runinfo.read_metrics(run_dir) if "loss" in m]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4  # it learned
    assert any("eval_loss" in m for m in runinfo.read_metrics(run_dir))
    assert (run_dir / "model" / "config.json").is_file()
    assert runinfo.result_dir(run_dir) == run_dir / "model"
    assert (run_dir / "train.log").read_text()


def test_lora_run_saves_an_adapter(tiny_model, tiny_data):
    cfg = tiny_config(tiny_model, tiny_data, method="lora", max_steps=4, eval_steps=2,
                      save_steps=2, lora_r=4)
    run_dir = jobs.prepare_run(cfg).run_dir
    status = train.run(run_dir)
    assert status["state"] == "completed", status
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4


def test_early_stopping_scores_answers_keeps_the_best_checkpoint_and_says_why(tiny_model,
                                                                              tiny_data):
    # A learning rate this high makes training diverge: validation loss gets worse, and the
    # random model gets no answer right.
    cfg = tiny_config(tiny_model, tiny_data, max_steps=40, eval_steps=2, save_steps=2,
                      learning_rate=1.0, early_stopping=True, early_stopping_patience=2,
                      early_stopping_score="exact_match", early_stopping_score_rows=4)
    run_dir = jobs.prepare_run(cfg).run_dir
    status = train.run(run_dir)
    assert status["state"] == "completed"
    assert status["end_reason"].startswith("validation answers: 0 of 4 right at step 2, 0 at ")
    assert status["best_step"] < 40 and f"best at step {status['best_step']}" in status["end_reason"]
    # Each validation's score is in metrics.jsonl, beside the validation loss.
    scores = [m for m in runinfo.read_metrics(run_dir) if "eval_score" in m]
    steps = [m["step"] for m in runinfo.read_metrics(run_dir) if "eval_loss" in m]
    assert [m["step"] for m in scores] == steps and len(steps) >= 3
    assert all(m["eval_score"] == 0.0 and m["eval_score_rows"] == 4 and
               m["eval_score_metric"] == "exact_match" for m in scores)
    assert [s for s, _, _ in runinfo.curves(run_dir)["score"]] == steps


def test_bad_data_fails_before_training_with_the_reason(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"oops": 1}\n')
    from finetune.errors import DataError

    with pytest.raises(DataError):
        jobs.prepare_run(tiny_config(tiny_model, bad))


def test_cli_train_prints_the_run_directory_last(tiny_model, tiny_data, capsys):
    from finetune.cli import main

    code = main(["train", "--model", str(tiny_model), "--data", str(tiny_data),
                 "--max-steps", "2", "--eval-steps", "2", "--save-steps", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert (runinfo.run_path(out[-1]) / "config.yaml").is_file()


def test_qlora_loads_a_4bit_base_and_trains(tiny_model, tiny_data):
    from finetune import models

    model = models.load_model(models.resolve(str(tiny_model)), quantize_4bit=True)
    assert getattr(model, "is_loaded_in_4bit", False)
    assert "Linear4bit" in {type(m).__name__ for m in model.modules()}
    cfg = tiny_config(tiny_model, tiny_data, method="qlora", max_steps=3, eval_steps=3,
                      save_steps=3, lora_r=4)
    status = train.run(jobs.prepare_run(cfg).run_dir)
    assert status["state"] == "completed", status


def test_the_saved_config_repeats_the_run_exactly(tiny_model, tiny_data, capsys):
    from finetune.cli import main

    assert main(["train", "--model", str(tiny_model), "--data", str(tiny_data),
                 "--max-steps", "2"]) == 0
    first = runinfo.run_path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", str(first / "config.yaml")]) == 0
    second = runinfo.run_path(capsys.readouterr().out.strip().splitlines()[-1])
    assert second != first
    assert (second / "config.yaml").read_text() == (first / "config.yaml").read_text()
    losses = [[m["loss"] for m in runinfo.read_metrics(r) if "loss" in m] for r in (first, second)]
    assert losses[0] == losses[1]  # same data order, same seed, same numbers


def test_fp16_on_a_cpu_is_refused_with_what_to_use_instead(tiny_model, tiny_data):
    from finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a GPU.*'fp32' or 'bf16'"):
        jobs.prepare_run(tiny_config(tiny_model, tiny_data, precision="fp16"))


def _learned_at_once(tiny_model, tiny_data):
    # "Learned" at the first validation (step 10: a loss bar no loss misses) with the rate at its
    # peak (constant), so the run anneals for a fifth of the steps it made.
    cfg = tiny_config(tiny_model, tiny_data, max_steps=40, eval_steps=10, save_steps=10,
                      learning_rate=1e-3, early_stopping=True, early_stopping_loss=10.0)
    return jobs.prepare_run(cfg).run_dir


def _assert_annealed_from_10_to_12(run_dir, status):
    assert status["state"] == "completed" and status["step"] == 12, status
    assert "the task is learned; then 2 steps with the learning rate falling to 0 (it was at " \
        "100% of its peak)" in status["end_reason"]
    assert status["best_step"] == 12  # those weights are kept
    lrs = {m["step"]: m["lr"] for m in runinfo.read_metrics(run_dir) if m.get("lr") is not None}
    # the rate each step used: the peak until the stop, then falling by a half a step
    assert [lrs[s] for s in (10, 11, 12)] == pytest.approx([1e-3, 1e-3, 5e-4])


def test_a_run_stopped_at_a_high_learning_rate_anneals_it_to_zero_first(tiny_model, tiny_data):
    run_dir = _learned_at_once(tiny_model, tiny_data)
    _assert_annealed_from_10_to_12(run_dir, train.run(run_dir))


def _stopped_at_11(tiny_model, tiny_data, monkeypatch):
    """The run above, stopped by the user during step 11 (inside its annealing)."""
    from transformers import TrainerCallback

    make = train._make_callbacks

    def stop_at_11(run_dir, stop, total_steps):
        class StopAt11(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == 10:
                    stop.request()
        return make(run_dir, stop, total_steps) + [StopAt11()]

    run_dir = _learned_at_once(tiny_model, tiny_data)
    with monkeypatch.context() as m:
        m.setattr(train, "_make_callbacks", stop_at_11)
        assert train.run(run_dir)["state"] == "stopped"
    assert runinfo.read_status(run_dir)["step"] == 11
    return run_dir


def test_a_run_stopped_while_annealing_resumes_the_annealing(tiny_model, tiny_data, monkeypatch):
    # resumed, it ends at step 12 as if never stopped, with the same rates and the same reason
    run_dir = _stopped_at_11(tiny_model, tiny_data, monkeypatch)
    _assert_annealed_from_10_to_12(run_dir, train.run(run_dir, resume=True))


def test_a_checkpoint_without_the_rules_state_still_resumes(tiny_model, tiny_data, monkeypatch):
    # as checkpoints written before the rule was saved in them: the rule starts afresh
    run_dir = _stopped_at_11(tiny_model, tiny_data, monkeypatch)
    saved = run_dir / "checkpoints" / "checkpoint-11" / "trainer_state.json"
    state = json.loads(saved.read_text())
    del state["stateful_callbacks"]["StopCallback"]
    saved.write_text(json.dumps(state))
    status = train.run(run_dir, resume=True)
    assert status["state"] == "completed", status
    assert "then 4 steps with the learning rate falling to 0" in status["end_reason"]  # at 20
