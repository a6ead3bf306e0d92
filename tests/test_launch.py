"""Several processes through accelerate: the config accelerate reads, the command, the Slurm
script, and 2 CPU processes (gloo DDP) that learn the same curve as one, stop and resume.

On a machine with 2 or more GPUs the same file checks CUDA/NCCL (the runs then train on GPUs),
and FINETUNE_TEST_STRATEGY=fsdp (or zero2, zero3 with DeepSpeed installed) the other strategies:
    PYTHONPATH=$PWD python -m pytest -x -q tests/test_launch.py
    FINETUNE_TEST_STRATEGY=fsdp PYTHONPATH=$PWD python -m pytest -x -q tests/test_launch.py -k curve
"""

import importlib.util
import os
import subprocess
import time

import psutil
import pytest

from runwait import wait_for_run
from finetune import config, jobs, launch, runinfo, train
from finetune.errors import ConfigError


def _validated(config_file, run_dir):
    """accelerate launch's own reading of the command and config file (nothing started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = launch.command(run_dir, resume=True)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(argv[3:])
    return _validate_launch_command(args)[0]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_accelerate_reads_the_config_written_for_each_strategy(tmp_path, strategy):
    cfg = config.RunConfig(num_processes=4, strategy=strategy, precision="bf16")
    path = launch.write_config(tmp_path, cfg, gpus=4)
    args = _validated(path, tmp_path)
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (
        strategy == "ddp", strategy == "fsdp", strategy in ("zero2", "zero3"))
    assert args.num_processes == 4 and args.mixed_precision == "bf16"
    assert args.module and args.training_script == "finetune.train"
    assert args.training_script_args == [str(tmp_path), "--resume"]
    if strategy == "fsdp":
        assert args.fsdp_version == 2 and args.fsdp_state_dict_type == "FULL_STATE_DICT"
    if strategy.startswith("zero"):
        assert args.zero_stage == int(strategy[-1])


def test_deepspeed_and_sharding_need_what_they_need_and_say_so(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match="needs DeepSpeed, which is not installed: pip install "
                                          "deepspeed"):
        launch.check(config.RunConfig(num_processes=2, strategy="zero3"))
    with pytest.raises(ConfigError, match="this machine has none: use strategy 'ddp'"):
        launch.check_local(config.RunConfig(num_processes=2, strategy="fsdp"), gpus=0)
    launch.check_local(config.RunConfig(num_processes=2, strategy="ddp"), gpus=0)


def test_a_cluster_run_gets_a_command_per_machine_or_a_slurm_script(tiny_model, tiny_data,
                                                                     capsys):
    from finetune.cli import main

    flags = ["train", "--model", str(tiny_model), "--data", str(tiny_data), "--num-machines",
             "2", "--num-processes", "4", "--main-process-ip", "10.0.0.1"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "machine 0: " in out and "machine 1: " in out and "--machine_rank 1" in out
    assert main(flags + ["--slurm"]) == 0
    run_dir = runinfo.list_runs()[0]
    script = (run_dir / "run.slurm").read_text()
    assert f"sbatch {run_dir / 'run.slurm'}" in capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=2",
                 '--machine_rank "$SLURM_NODEID" --main_process_ip "$FINETUNE_MAIN"',
                 f"-m finetune.train {run_dir}"):
        assert line in script, line
    assert subprocess.run(["bash", "-n", str(run_dir / "run.slurm")]).returncode == 0
    args = _validated(run_dir / "accelerate.yaml", run_dir)
    assert (args.num_machines, args.num_processes, args.main_process_ip) == (2, 4, "10.0.0.1")
    # A run of two machines is not started from here by mistake.
    with pytest.raises(Exception, match="spans 2 machines"):
        jobs.start(run_dir)


def _workers(run_dir):
    return [p for p in psutil.process_iter(["cmdline"])
            if str(run_dir) in " ".join(p.info["cmdline"] or [])]


def test_two_processes_learn_the_curve_of_one_and_stop_and_resume_together(tiny_model, tiny_data):
    # 44 training rows: every step of both runs holds 4 whole rows, the epoch boundary (after
    # step 11) included.
    settings = dict(model=str(tiny_model), data=str(tiny_data), max_steps=12, grad_accum=1,
                    eval_steps=6, save_steps=6, learning_rate=3e-3, lora_r=4, precision="fp32",
                    early_stopping=False, test_fraction=0.0, val_fraction=0.08)
    strategy = os.environ.get("FINETUNE_TEST_STRATEGY", "ddp")  # others need GPUs
    two = jobs.prepare_run(config.RunConfig(**settings, batch_size=2, num_processes=2,
                                            strategy=strategy, main_process_port=0)).run_dir
    assert (two / "accelerate.yaml").is_file()
    jobs.start(two)
    wait_for_run(two, lambda s: s.get("state") == "running" and s.get("step", 0) >= 2)
    assert len(_workers(two)) == 3  # accelerate's launcher and its 2 workers
    t0 = time.time()
    st = jobs.stop(two)
    assert time.time() - t0 < 10
    assert st["state"] == "stopped" and "stopped by request" in st["end_reason"], st
    assert not _workers(two)
    assert runinfo.latest_checkpoint(two).name == f"checkpoint-{st['step']}"
    assert (two / "adapter" / "adapter_config.json").is_file()

    jobs.resume(two)  # every worker again, from the checkpoint
    # accelerate's launcher and its 2 workers, back (counted while they start: a quiet machine
    # can train the ~10 steps left between two polls of the run's status)
    wait_for_run(two, lambda s: len(_workers(two)) == 3)
    done = wait_for_run(two, lambda s: s.get("state") not in jobs.ACTIVE, timeout=240)
    assert done["state"] == "completed" and done["step"] == 12, runinfo.log_tail(two)
    log = (two / "train.log").read_text()
    assert f"resuming from checkpoint-{st['step']}" in log
    # Only the main process writes: one line per start, one metrics record per step.
    assert sum(line.startswith("training: ") for line in log.splitlines()) == 2
    curve2 = [(m["step"], m["loss"]) for m in runinfo.read_metrics(two) if "loss" in m]
    assert [step for step, _ in curve2] == list(range(1, 13))

    one = jobs.prepare_run(config.RunConfig(**settings, batch_size=4, num_processes=1)).run_dir
    assert not (one / "accelerate.yaml").exists()
    assert train.run(one, tee=False)["state"] == "completed"
    curve1 = [(m["step"], m["loss"]) for m in runinfo.read_metrics(one) if "loss" in m]
    # The same rows per step and the same start, in fp32 (after the resume too: one worker alone
    # would train on 2 rows a step): the processes' gradients differ from one process's only in
    # the order they are summed (~1e-7 relative), so the curves agree to ~1e-6 over the 12 steps
    # here (measured); 1e-4 leaves room while staying far below what one step changes the loss
    # by (~0.01-0.06), which a different batch or data order shows.
    assert max(abs(a - b) for (_, a), (_, b) in zip(curve1, curve2)) < 1e-4, (curve1, curve2)
    assert max(a for _, a in curve1) - min(a for _, a in curve1) > 0.1  # it did learn
