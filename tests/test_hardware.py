"""Hardware: precision follows measured speed, not the device's name; memory estimate scales."""

from finetune import hardware


def _cpu(flags=()):
    return hardware.Hardware("cpu", "Test CPU", 16.0, 2, list(flags))


def test_cpu_without_fast_bf16_trains_in_fp32():
    precision, why = hardware.choose_precision(_cpu(["avx2"]), {"fp32": 60.0, "bf16": 1.0})
    assert precision == "fp32"
    assert "bf16 1 vs fp32 60 GFLOP/s" in why


def test_cpu_with_native_bf16_trains_in_bf16():
    precision, why = hardware.choose_precision(_cpu(["avx512_bf16"]), {"fp32": 200.0, "bf16": 560.0})
    assert precision == "bf16" and "natively" in why


def test_gpu_precision():
    assert hardware.choose_precision(hardware.Hardware("cuda", "H100", 80, 16, bf16_native=True),
                                     {})[0] == "bf16"
    assert hardware.choose_precision(hardware.Hardware("cuda", "T4", 16, 8, bf16_native=False),
                                     {})[0] == "fp16"


def test_probe_measures_this_machine():
    gflops = hardware.probe()
    assert gflops["fp32"] > 0
    assert hardware.detect().describe()


def test_memory_estimate_grows_with_batch_and_shrinks_with_qlora_and_checkpointing():
    shape = dict(n_params=135_000_000, hidden=576, layers=30, vocab=49152)
    small = hardware.estimate_memory_gb(**shape, method="lora", precision="fp32", batch=1,
                                        seq_len=256, checkpointing=False)["total"]
    big = hardware.estimate_memory_gb(**shape, method="lora", precision="fp32", batch=16,
                                      seq_len=256, checkpointing=False)["total"]
    ckpt = hardware.estimate_memory_gb(**shape, method="lora", precision="fp32", batch=16,
                                       seq_len=256, checkpointing=True)["total"]
    qlora = hardware.estimate_memory_gb(**shape, method="qlora", precision="fp32", batch=1,
                                        seq_len=256, checkpointing=False)["total"]
    full = hardware.estimate_memory_gb(**shape, method="full", precision="fp32", batch=1,
                                       seq_len=256, checkpointing=False)["total"]
    assert small < big and ckpt < big and qlora < small < full


def test_inference_threads_leave_a_core_to_a_training_on_small_machines(monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setattr(hardware, "threads", lambda: 2)
    assert hardware.inference_threads(training_active=True) == 1
    assert hardware.inference_threads(training_active=False) == 2
    monkeypatch.setattr(hardware, "threads", lambda: 16)
    assert hardware.inference_threads(training_active=True) == 16
    # the caller asks finetune.jobs; hardware knows nothing of runs (no import circle)
    code = ("import sys, finetune.hardware as h; h.inference_threads(True); "
            "print('finetune.jobs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(hardware.__file__).parents[1])
    assert out.stdout.strip() == "False"
