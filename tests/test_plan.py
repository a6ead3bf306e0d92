"""Auto settings: each edge case gets a sensible concrete value and a reason a user can read."""

import random

from finetune import config, hardware, plan

SMOL = dict(n_params=134_515_008, hidden=576, layers=30, vocab=49152, context=8192)


def facts(n_rows, lengths=None, memory_gb=23.0, precision=("fp32", "probe"), device="cpu",
          has_val_file=False, free_gb=None, **shape):
    rng = random.Random(0)
    lengths = lengths if lengths is not None else [rng.randint(60, 110) for _ in range(n_rows)]
    # Big datasets: the counter tokenizes a sample and estimates the other rows' lengths.
    estimated = max(0, len(lengths) - 4000) if len(lengths) > 4000 else 0
    return plan.Facts(n_rows=n_rows, lengths=lengths, has_val_file=has_val_file,
                      device=device, memory_gb=memory_gb, precision=precision[0],
                      precision_reason=precision[1], estimated_rows=estimated, free_gb=free_gb,
                      **{**SMOL, **shape})


def run(cfg=None, **kw):
    return plan.resolve(cfg or config.RunConfig(), facts(**kw), lora_params_per_rank=60_000)


def test_every_auto_setting_gets_a_concrete_value_and_a_reason():
    resolved, reasons = run(n_rows=360)
    for name in config.AUTO_FIELDS:
        assert getattr(resolved, name) != "auto", name
        assert reasons[name], name
    resolved.validate()


def test_360_rows_one_epoch_batch_8():
    resolved, reasons = run(n_rows=360)
    assert resolved.batch_size * resolved.grad_accum == 8
    assert resolved.epochs == 1.0 and resolved.max_steps == 43  # 342 training rows / 8
    assert resolved.val_fraction == 0.05 and "18 of 360 rows held out" in reasons["val_fraction"]
    assert resolved.learning_rate == 4e-4 and resolved.lora_r == 16 and resolved.lora_alpha == 32
    assert resolved.gradient_checkpointing == "off"
    assert resolved.save_steps == resolved.eval_steps
    assert reasons["memory"].startswith("fits")


def test_validation_is_frequent_enough_to_stop_on_a_plateau_but_costs_little():
    resolved, reasons = run(n_rows=360)  # 43 steps of 8 rows, 18 rows held out
    assert resolved.eval_steps == 5  # 8 passes (steps 5 to 40) over 18 rows, each ~1 step of work
    assert reasons["eval_steps"].startswith("8 validation(s) of 18 rows over 43 steps")
    share = int(reasons["eval_steps"].split("about ")[1].split("%")[0])
    assert share <= 16
    # A big validation file on a short run (45 steps) is still looked at 3 times.
    resolved, reasons = run(n_rows=360, has_val_file=True, n_val_file=5000)
    assert resolved.eval_steps == 15 and "3 validation(s) of 5000 rows" in reasons["eval_steps"]


def test_one_row():
    resolved, reasons = run(n_rows=1, lengths=[40])
    assert resolved.val_fraction == 0.0 and "only 1 rows" in reasons["val_fraction"]
    assert resolved.batch_size == 1 and resolved.grad_accum == 1
    assert resolved.epochs == 10 and resolved.max_steps == 10
    assert resolved.max_length == 40


def test_twenty_rows_are_repeated_to_reach_enough_steps():
    resolved, reasons = run(n_rows=20)
    assert resolved.val_fraction > 0  # 4 rows held out
    assert resolved.batch_size * resolved.grad_accum == 4
    assert resolved.max_steps >= 30 and "repeated" in reasons["epochs"]


def test_fifty_thousand_rows():
    resolved, reasons = run(n_rows=50_000)
    assert resolved.epochs == 1.0
    assert resolved.batch_size * resolved.grad_accum == 16
    assert round(resolved.val_fraction * 50_000) == 200  # capped: validation stays cheap
    assert resolved.max_steps == 3113
    assert resolved.eval_steps == 312
    assert "46,000 of 50,000 rows estimated from a sample" in reasons["max_length"]


def test_rows_longer_than_the_model_context_are_cut_at_the_context():
    lengths = [100] * 90 + [9000] * 10
    resolved, reasons = run(n_rows=100, lengths=lengths)
    assert resolved.max_length == 8192
    assert "context is 8192" in reasons["max_length"] and "10 of 100" in reasons["max_length"]


def test_a_few_outliers_do_not_stretch_every_batch():
    lengths = [100] * 995 + [3000] * 5
    resolved, reasons = run(n_rows=1000, lengths=lengths)
    assert resolved.max_length == 104
    assert "5 truncated" in reasons["max_length"]


def test_machine_without_native_bf16_gets_fp32_from_the_probe():
    precision, why = hardware.choose_precision(
        hardware.Hardware("cpu", "AMD EPYC", 23, 2, ["avx2"]), {"fp32": 55.0, "bf16": 0.9})
    resolved, reasons = run(n_rows=360, precision=(precision, why))
    assert resolved.precision == "fp32" and "bf16 1 vs fp32 55 GFLOP/s" in reasons["precision"]


def test_little_memory_shrinks_the_batch_then_checkpoints_and_says_when_it_cannot_fit():
    roomy, _ = run(n_rows=360, lengths=[2000] * 360)
    tight, reasons = run(n_rows=360, lengths=[2000] * 360, memory_gb=6.0)
    assert tight.batch_size < roomy.batch_size
    assert tight.batch_size * tight.grad_accum == 8
    _, reasons = run(n_rows=360, lengths=[2000] * 360, memory_gb=1.0)
    assert reasons["memory"].startswith("WILL NOT FIT") and "qlora" in reasons["memory"]


def test_user_values_are_kept():
    cfg = config.RunConfig(batch_size=2, learning_rate=1e-3, max_length=64, lora_r=4)
    resolved, reasons = run(cfg, n_rows=360)
    assert (resolved.batch_size, resolved.learning_rate, resolved.max_length, resolved.lora_r) == \
        (2, 1e-3, 64, 4)
    assert reasons["batch_size"] == "set by you" and resolved.lora_alpha == 8
    assert resolved.grad_accum == 4


def test_full_fine_tuning_uses_a_smaller_learning_rate():
    resolved, reasons = run(config.RunConfig(method="full"), n_rows=360)
    assert resolved.learning_rate == 5e-5 and "full fine-tuning" in reasons["learning_rate"]


def test_patience_is_three_when_the_validation_loss_rests_on_few_answer_tokens():
    # A labelling task: 268 rows, one-word answers -> 13 validation rows, ~26 answer tokens.
    labels, reasons = run(n_rows=268, answer_lengths=[2] * 268)
    assert labels.early_stopping_patience == 3 and "only ~26 answer tokens" in \
        reasons["early_stopping_patience"]
    # An extraction task: 35-token answers -> 18 validation rows hold ~630 answer tokens.
    extract, reasons = run(n_rows=360, answer_lengths=[35] * 360)
    assert extract.early_stopping_patience == 1 and "~630 answer tokens" in \
        reasons["early_stopping_patience"]
    kept, reasons = run(config.RunConfig(early_stopping_patience=4), n_rows=360)
    assert kept.early_stopping_patience == 4 and reasons["early_stopping_patience"] == "set by you"


def test_on_a_gpu_the_plan_budgets_the_memory_free_now():
    """A 1.7B model, full fine-tuning, on an 80 GB GPU: all free, the micro-batch is the whole
    step; with 12 GB free (another program holds the rest) it is smaller and the reason says
    what is free."""
    big = dict(n_params=1_700_000_000, hidden=2048, layers=24, vocab=151_936, context=32768)
    cfg = config.RunConfig(method="full")
    free, _ = plan.resolve(cfg, facts(n_rows=360, lengths=[1000] * 360, device="cuda",
                                      memory_gb=80.0, precision=("bf16", "gpu"), **big))
    tight, reasons = plan.resolve(cfg, facts(n_rows=360, lengths=[1000] * 360, device="cuda",
                                             memory_gb=80.0, free_gb=40.0,
                                             precision=("bf16", "gpu"), **big))
    assert free.batch_size == 8 and tight.batch_size < 8
    assert "40.0 GB free on this GPU" in reasons["batch_size"]
    _, reasons = plan.resolve(cfg, facts(n_rows=360, lengths=[1000] * 360, device="cuda",
                                         memory_gb=80.0, free_gb=6.0,
                                         precision=("bf16", "gpu"), **big))
    assert reasons["memory"].startswith("WILL NOT FIT") and "6.0 of 80 GB free" in \
        reasons["memory"]


def test_a_big_dataset_on_a_gpu_takes_steps_of_about_16k_tokens():
    cpu, _ = run(n_rows=50_000)  # rows of 60-110 tokens
    gpu, reasons = plan.resolve(config.RunConfig(), facts(
        n_rows=50_000, device="cuda", memory_gb=80.0, precision=("bf16", "gpu")),
        lora_params_per_rank=60_000)
    assert cpu.batch_size * cpu.grad_accum == 16
    assert gpu.batch_size * gpu.grad_accum == 128 and "a large dataset on a GPU: 128 rows" in \
        reasons["grad_accum"]
    assert hardware.logging_steps("cpu", 3113) == 1 and hardware.logging_steps("cuda", 390) == 3


def test_a_small_dataset_gets_more_passes_while_a_first_run_stays_short():
    # 400 rows of 50 tokens on a CPU measured at 77 GFLOP/s: a pass is ~4 min, so 3 fit.
    small, reasons = run(n_rows=400, lengths=[50] * 400, gflops=77.0, answer_lengths=[10] * 400)
    assert small.epochs == 3.0 and small.max_steps == 3 * 48
    assert reasons["epochs"].startswith("3 passes over 380 rows (48 steps each, ~")
    assert "validation ends the run when the answers stop improving" in reasons["epochs"]
    # Rows four times longer: a pass is ~15 min, past the first-run budget: one pass.
    long, reasons = run(n_rows=400, lengths=[240] * 400, gflops=77.0)
    assert long.epochs == 1.0 and "a second would take a first run past 15 min" in reasons["epochs"]
    # Without early stopping nothing would end extra passes; big datasets get one pass.
    off, reasons = run(config.RunConfig(early_stopping=False), n_rows=400, lengths=[60] * 400,
                       gflops=77.0)
    assert off.epochs == 1.0 and "no early stopping" in reasons["epochs"]
    big, _ = run(n_rows=20_000, gflops=77.0)
    assert big.epochs == 1.0


def test_short_answers_are_scored_by_exact_match_within_the_validation_budget():
    # 2 passes of 48 steps, 20 validation rows: answering 12 of them lets 6 validations fit.
    short, reasons = run(config.RunConfig(epochs=2), n_rows=400, lengths=[60] * 400,
                         answer_lengths=[10] * 400)
    assert short.early_stopping_score == "exact_match" and short.early_stopping_score_rows == 12
    assert "12 of 20 validation rows" in reasons["early_stopping_score_rows"]
    share = int(reasons["eval_steps"].split("about ")[1].split("%")[0])
    assert reasons["eval_steps"].startswith("6 validation(s) of 20 rows, 12 of them answered")
    assert share <= 16
    # A run too short for that still answers 8 rows (fewer would say little).
    few, reasons = run(n_rows=360, answer_lengths=[35] * 360)
    assert few.early_stopping_score_rows == 8
    longish, _ = run(n_rows=400, answer_lengths=[80] * 400)
    assert longish.early_stopping_score == "rouge_l"
    long, reasons = run(n_rows=400, answer_lengths=[400] * 400, lengths=[500] * 400)
    assert long.early_stopping_score == "none" and "too slow" in reasons["early_stopping_score"]
    text, reasons = run(n_rows=400, data_format="text", answer_lengths=[80] * 400)
    assert text.early_stopping_score == "none"
    # A score asked for where nothing is validated: nothing to answer, and the config stays valid.
    none, reasons = run(config.RunConfig(early_stopping_score="exact_match"), n_rows=1,
                        lengths=[40], answer_lengths=[5])
    none.validate()
    assert reasons["early_stopping_score_rows"] == "no early stopping, so no answers are scored"


def test_processes_share_each_step_and_the_global_batch_stays_what_the_reasons_say():
    one, _ = run(n_rows=360)
    auto, reasons = run(n_rows=360, device="cuda", memory_gb=80.0, gpus=4)
    assert auto.num_processes == 4 and reasons["num_processes"] == "one per visible GPU (4)"
    # 4 processes x 2 rows x 1 = the same 8 rows per step, so the same number of steps.
    assert auto.num_processes * auto.batch_size * auto.grad_accum == 8
    assert auto.max_steps == one.max_steps == 43
    assert reasons["grad_accum"].startswith("4 processes x 2 x 1 = 8 rows per step")
    assert "ddp: each GPU holds the whole model" in reasons["strategy"]
    assert "on each GPU, in each of 4 processes" in reasons["memory"]
    # No GPU: one process, and no strategy in the reasons (nothing to share).
    _, cpu_reasons = run(n_rows=360)
    assert one.num_processes == 1 and "strategy" not in cpu_reasons
    assert cpu_reasons["num_processes"] == "no GPU: one process on the CPU"


def test_sharding_strategies_need_less_memory_per_gpu():
    big = dict(n_params=7_000_000_000, hidden=4096, layers=32, vocab=32000, context=4096)
    cfg = config.RunConfig(method="full", num_processes=8)
    _, ddp = run(cfg, n_rows=360, device="cuda", memory_gb=80.0, gpus=8, **big)
    _, zero3 = run(cfg.replace(strategy="zero3"), n_rows=360, device="cuda", memory_gb=80.0,
                   gpus=8, **big)
    assert ddp["memory"].startswith("WILL NOT FIT") and "strategy 'zero3'" in ddp["memory"]
    assert zero3["memory"].startswith("fits") and "(zero3)" in zero3["memory"]
    # Two machines of 8 GPUs: 'auto' counts the GPUs of both.
    two, reasons = run(config.RunConfig(num_machines=2, main_process_ip="10.0.0.1"),
                       n_rows=5000, device="cuda", memory_gb=80.0, gpus=8)
    assert two.num_processes == 16 and "on each of the 2 machines" in reasons["num_processes"]
    assert two.num_processes * two.batch_size * two.grad_accum == 16
