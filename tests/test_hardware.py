"""Hardware: precision follows measured speed, not the device's name; memory estimate scales."""

import pytest

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


GPUS = {  # name -> (compute capability, GB): the Space hardware offers these
    "Tesla T4": ((7, 5), 15.6), "NVIDIA A10G": ((8, 6), 22.0), "NVIDIA L4": ((8, 9), 22.0),
    "NVIDIA A100-SXM4-80GB": ((8, 0), 79.2), "NVIDIA H100 80GB HBM3": ((9, 0), 79.1),
}


def fake_gpu(monkeypatch, name, free_gb=None):
    """Make torch report one CUDA GPU of that name, as torch 2.13 would (its bf16 check without
    emulation is `major >= 8`; with emulation a T4 says True, as the real one does)."""
    import types

    import torch

    (major, minor), gb = GPUS[name]
    props = types.SimpleNamespace(name=name, total_memory=int(gb * 2**30), major=major, minor=minor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: major >= 8 or including_emulation)
    free = gb if free_gb is None else free_gb
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (int(free * 2**30), int(gb * 2**30)))
    hardware.detect.cache_clear()
    monkeypatch.setattr(hardware, "probe", lambda: {})
    return hardware.detect()


@pytest.fixture(autouse=True)
def _fresh_detect():
    hardware.detect.cache_clear()
    yield
    hardware.detect.cache_clear()


def test_a_t4_trains_in_fp16_with_fp32_master_weights_for_full_fine_tuning(monkeypatch):
    hw = fake_gpu(monkeypatch, "Tesla T4")
    assert hw.device == "cuda" and hw.capability == (7, 5) and not hw.bf16_native
    precision, why = hardware.choose_precision(hw, {})
    assert precision == "fp16"
    assert "Tesla T4, compute capability 7.5" in why and "loss scaling" in why
    assert hardware.inference_settings() == ("cuda", "fp16")
    assert hardware.weights_dtype("full", precision) == "fp32"  # master weights
    assert hardware.weights_dtype("lora", precision) == "fp16"  # frozen base stays 16-bit
    assert hardware.weights_dtype("qlora", precision) == "fp16"  # 4-bit compute dtype


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA L4", "NVIDIA A100-SXM4-80GB",
                                  "NVIDIA H100 80GB HBM3"])
def test_ampere_and_later_gpus_train_in_bf16(monkeypatch, name):
    hw = fake_gpu(monkeypatch, name)
    precision, why = hardware.choose_precision(hw, {})
    assert precision == "bf16" and "bf16 tensor cores" in why and name in why
    assert hardware.inference_settings() == ("cuda", "bf16")
    assert hardware.weights_dtype("full", precision) == "fp32"
    assert hardware.weights_dtype("lora", precision) == "bf16"


def test_an_old_gpu_without_tensor_cores_follows_the_probe():
    p100 = hardware.Hardware("cuda", "Tesla P40", 24, 8, capability=(6, 1))
    assert hardware.choose_precision(p100, {"fp32": 11000.0, "fp16": 180.0})[0] == "fp32"
    assert hardware.choose_precision(p100, {"fp32": 9000.0, "fp16": 18000.0})[0] == "fp16"


def test_full_fine_tuning_in_fp16_takes_an_optimizer_step_with_loss_scaling(tiny_model):
    """The loss scaler the Trainer uses under fp16 (torch.amp.GradScaler) refuses fp16
    gradients; with the fp32 master weights training loads, the first step goes through. The
    same torch code runs here on the CPU with CPU autocast (accelerate adds the scaler on GPUs)."""
    import torch

    from finetune import models

    source = models.ModelSource("local", str(tiny_model), "tiny")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    for dtype, ok in ((hardware.weights_dtype("full", "fp16"), True), ("fp16", False)):
        model = models.load_model(source, dtype=dtype)
        before = model.lm_head.weight.detach().clone()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        if ok:
            scaler.step(opt)
            scaler.update()
            assert not torch.equal(before, model.lm_head.weight)
            assert model.lm_head.weight.dtype == torch.float32
        else:
            with pytest.raises(ValueError, match="unscale FP16 gradients"):
                scaler.step(opt)


def test_gpu_memory_checks_say_the_gpu_is_busy_training(monkeypatch):
    from finetune.errors import DeviceMemoryError

    fake_gpu(monkeypatch, "Tesla T4", free_gb=1.5)
    assert hardware.free_memory_gb() == pytest.approx(1.5)
    hardware.check_room(1.0, "the model", training="demo-lora")  # fits: no error
    with pytest.raises(DeviceMemoryError, match=r"busy training run demo-lora: 1.5 GB free, "
                                                r"the model needs ~3.0 GB"):
        hardware.check_room(3.0, "the model", training="demo-lora")
    with pytest.raises(DeviceMemoryError, match="Not enough GPU memory"):
        hardware.check_room(3.0, "the model", training=None)


def test_release_models_runs_every_registered_cache_release(monkeypatch):
    released = []
    monkeypatch.setattr(hardware, "_RELEASERS", [])
    hardware.on_release(lambda: released.append("chat"))
    hardware.release_models()
    assert released == ["chat"]


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
