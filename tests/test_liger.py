"""Liger's kernels: 'auto' uses them only where `bench train --liger` measured them faster on
this GPU; 'on' is refused where they cannot run; a run set to 'on' hands TRL the layer kernels
and keeps its own loss (no GPU here: Liger's patching is stood in for)."""

import pytest
import yaml

from finetune import config, jobs, liger, paths, plan, runinfo, train
from finetune.errors import ConfigError

FASTER = {"speedup": 1.21, "memory": 0.83, "loss_max_rel_diff": 0.004, "date": "2026-11-26"}
H200 = "NVIDIA H200"


def gpu_facts(**kw):
    settings = dict(n_rows=360, lengths=[90] * 360, has_val_file=False, n_params=1_235_814_400,
                    hidden=2048, layers=16, vocab=128_256, context=131_072, device="cuda",
                    memory_gb=139.8, free_gb=139.0, precision="bf16",
                    precision_reason="this GPU has bf16 tensor cores", gpus=1,
                    model_type="llama", liger_installed=True)
    settings.update(kw)
    return plan.Facts(**settings)


@pytest.fixture
def measurements(tmp_path, monkeypatch):
    """Measurements kept in a folder of this test's own (not the shared model cache)."""
    monkeypatch.setenv("FINETUNE_MODELS", str(tmp_path / "models"))


def test_auto_follows_what_bench_measured_on_this_gpu(measurements):
    def plan_on_this_gpu(cfg=None):
        return plan.resolve(cfg or config.RunConfig(), gpu_facts(
            liger_measured=liger.measured(H200)), lora_params_per_rank=1)

    resolved, reasons = plan_on_this_gpu()
    assert resolved.liger_kernels == "off"
    assert "bench train --liger" in reasons["liger_kernels"]  # how to measure it

    liger.record(H200, {**FASTER, "on": "Llama-3.2-1B shape, lora, 2048 tokens"})
    resolved, reasons = plan_on_this_gpu()
    assert resolved.liger_kernels == "on"
    assert "1.21x the speed" in reasons["liger_kernels"]
    assert "Llama-3.2-1B shape, lora, 2048 tokens" in reasons["liger_kernels"]

    assert liger.measured("NVIDIA H100 80GB HBM3") is None  # another GPU's is not this one's
    # set by you: kept
    resolved, reasons = plan_on_this_gpu(config.RunConfig(liger_kernels="off"))
    assert resolved.liger_kernels == "off" and reasons["liger_kernels"] == "set by you"


@pytest.mark.parametrize("measurement, words", [
    ({**FASTER, "speedup": 0.97}, "no faster on this GPU"),
    ({**FASTER, "loss_max_rel_diff": 0.09}, "loss curve differed by 9.0%"),
    ({**FASTER, "loss_max_rel_diff": None}, "no loss curve to compare"),
])
def test_auto_stays_off_when_measured_slower_or_learning_otherwise(measurement, words):
    value, why = liger.choose("cuda", "llama", True, measurement)
    assert value == "off" and words in why


@pytest.mark.parametrize("device, model_type, installed, words", [
    ("cpu", "llama", True, "NVIDIA GPUs; this machine has none"),
    ("cuda", "gpt2", True, "no kernels for gpt2 models"),
    ("cuda", "llama", False, "liger-kernel is not installed"),
])
def test_auto_is_off_where_the_kernels_cannot_run_and_says_why(device, model_type, installed,
                                                                words):
    value, why = liger.choose(device, model_type, installed, FASTER)
    assert value == "off" and words in why


def test_on_is_refused_on_a_cpu_before_anything_starts(tiny_model, tiny_data):
    cfg = config.RunConfig(model=str(tiny_model), data=str(tiny_data), liger_kernels="on")
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU.*use 'auto' or 'off'"):
        jobs.prepare_run(cfg)
    planned = plan.plan(config.RunConfig(model=str(tiny_model), data=str(tiny_data)))
    assert planned.config.liger_kernels == "off"
    assert "NVIDIA" in planned.reasons["liger_kernels"]


def test_bench_train_liger_is_refused_without_a_gpu(tiny_model, tiny_data):
    from finetune.bench.train import bench_train

    with pytest.raises(ConfigError, match="bench train --liger needs an NVIDIA GPU.*leave out"):
        bench_train(model=str(tiny_model), data=str(tiny_data), steps=2, liger=True,
                    log=lambda *a: None)
    assert not list(paths.runs_dir().glob("bench-*"))  # refused before either side trained


def run_set_to_on(tiny_model, tiny_data):
    """A run directory as a plan on a GPU with the kernels measured faster would write it."""
    cfg = config.RunConfig(model=str(tiny_model), data=str(tiny_data), method="lora",
                           max_steps=4, batch_size=4, grad_accum=1, eval_steps=2, save_steps=2,
                           early_stopping=False)
    run_dir = jobs.prepare_run(cfg).run_dir
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**saved, "liger_kernels": "on"}))
    return run_dir


def test_a_run_set_to_on_hands_trl_the_layer_kernels_and_keeps_its_own_loss(tiny_model,
                                                                            tiny_data,
                                                                            monkeypatch):
    import transformers.trainer
    from transformers.models.llama import modeling_llama

    applied, rope = [], modeling_llama.apply_rotary_pos_emb

    def apply(model, kernel_config):  # what Liger does: module-wide, for the whole process
        applied.append(dict(kernel_config))
        modeling_llama.apply_rotary_pos_emb = lambda *a, **k: rope(*a, **k)

    monkeypatch.setattr(transformers.trainer, "apply_liger_kernel", apply)
    monkeypatch.setattr(liger, "check", lambda *a: None)  # as on a GPU with liger-kernel
    run_dir = run_set_to_on(tiny_model, tiny_data)

    status = train.run(run_dir)

    assert status["state"] == "completed", status
    assert applied and applied[0]["fused_linear_cross_entropy"] is False  # the loss stays ours
    assert {k for k, v in applied[0].items() if v} == {"rope", "rms_norm", "swiglu"}
    assert "kernels: Liger's RMSNorm, SwiGLU and RoPE" in (run_dir / "train.log").read_text()
    # validation ran with them and gave its loss
    assert [m["eval_loss"] for m in runinfo.read_metrics(run_dir) if "eval_loss" in m]
    # this process's next model (an evaluation, a chat) is plain transformers again
    assert modeling_llama.apply_rotary_pos_emb is rope


def test_a_run_set_to_on_resumed_without_a_gpu_fails_with_what_to_do(tiny_model, tiny_data):
    run_dir = run_set_to_on(tiny_model, tiny_data)

    status = train.run(run_dir)

    assert status["state"] == "failed"
    assert "needs an NVIDIA GPU" in status["error"] and "'auto' or 'off'" in status["error"]


def test_bench_train_liger_trains_ours_without_and_with_and_keeps_the_result_for_auto(
        tiny_model, tiny_data, measurements, monkeypatch):
    from finetune import hardware
    from finetune.bench import train as bench

    speed = {"baseline": 100.0, "ours": 200.0, "ours-liger": 250.0}
    memory = {"baseline": 10.0, "ours": 6.0, "ours-liger": 5.0}
    loss = {"baseline": [1.0, 0.5], "ours": [1.0, 0.5], "ours-liger": [1.0, 0.501]}
    seen = {}

    def child(side, run_dir):  # what each side's process would measure
        seen[side] = config.load(run_dir / "config.yaml").liger_kernels
        return {"tokens_per_s": speed[side], "peak_memory_gb": memory[side], "tokens": 96,
                "loss": loss[side]}

    monkeypatch.setattr(bench, "_child", child)
    monkeypatch.setattr(bench, "_liger_side", lambda resolved, hw: None)  # as on a GPU
    out = bench.bench_train(model=str(tiny_model), data=str(tiny_data), steps=2, liger=True,
                            log=lambda *a: None)

    assert seen == {"baseline": "off", "ours": "off", "ours-liger": "on"}
    assert out["speedup_vs_baseline"] == 2.0  # ours without the kernels
    assert out["liger"]["speedup_vs_ours"] == 1.25
    assert out["liger"]["memory_vs_ours"] == round(5 / 6, 3)
    assert out["liger"]["speedup_vs_baseline"] == 2.5
    kept = liger.measured(hardware.detect().name)
    assert kept["speedup"] == 1.25 and kept["loss_max_rel_diff"] == 0.002
    assert kept["on"].startswith("tiny-llama, lora, ") and kept["on"].endswith(" tokens")
