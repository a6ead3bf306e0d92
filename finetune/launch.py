"""Several processes for one run: the accelerate config and the `accelerate launch` command.

    python -m finetune train CONFIG.yaml --num-processes 8 --strategy zero3   # this machine's GPUs
    python -m finetune train CONFIG.yaml --num-machines 2 --num-processes 16 \\
        --main-process-ip 10.0.0.1 --slurm                                # writes RUN/run.slurm

We never start workers ourselves: `accelerate launch` (torchrun underneath, or DeepSpeed's
launcher) does, with a config written into the run directory (`accelerate.yaml`) so the run's
launch is kept beside its settings. Every process runs the same worker entry,
`python -m finetune.train RUN_DIR [--resume]`; the main one (rank 0) writes the run directory.
Keys follow accelerate 1.15's config schema (`accelerate.commands.config.config_args`).
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

from finetune.config import RunConfig
from finetune.errors import ConfigError

CONFIG_NAME = "accelerate.yaml"
SLURM_NAME = "run.slurm"
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16"}  # fp32: "no"


def distributed(cfg: RunConfig) -> bool:
    """True when the (resolved) run trains in more than one process."""
    return cfg.num_processes != "auto" and int(cfg.num_processes) > 1


def check(cfg: RunConfig) -> None:
    """ConfigError, before anything starts, when the strategy's package is missing here."""
    if cfg.strategy in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"strategy {cfg.strategy} needs DeepSpeed, which is not installed: "
                          "pip install deepspeed (on every machine of the run), or use strategy "
                          "'fsdp' (in PyTorch) or 'ddp'.")


def check_local(cfg: RunConfig, gpus: int) -> None:
    """check(), plus what this machine must have to start the run's processes itself."""
    check(cfg)
    per_machine = int(cfg.num_processes) // max(1, int(cfg.num_machines))
    if gpus and per_machine > gpus:
        raise ConfigError(f"num_processes {cfg.num_processes} puts {per_machine} processes on this "
                          f"machine and it has {gpus} GPU(s) visible: each process needs a GPU "
                          f"of its own. Use --num-processes {gpus * int(cfg.num_machines)} (or "
                          "auto), or make more GPUs visible (CUDA_VISIBLE_DEVICES).")
    if cfg.strategy != "ddp" and gpus == 0:
        raise ConfigError(f"strategy {cfg.strategy} shards the model among GPUs and this machine "
                          "has none: use strategy 'ddp' for several CPU processes.")


def accelerate_config(cfg: RunConfig, gpus: int) -> dict:
    """The accelerate config of a resolved run: its processes, machines and strategy."""
    base = {"compute_environment": "LOCAL_MACHINE", "debug": False,
            "mixed_precision": MIXED_PRECISION.get(cfg.precision, "no"),
            "num_processes": int(cfg.num_processes), "num_machines": cfg.num_machines,
            "machine_rank": cfg.machine_rank, "main_process_port": cfg.main_process_port,
            "rdzv_backend": "static", "same_network": True, "main_training_function": "main",
            "downcast_bf16": "no", "enable_cpu_affinity": False, "tpu_env": [],
            "tpu_use_cluster": False, "tpu_use_sudo": False,
            # Without GPUs the processes train on the CPU (gloo); accelerate starts them with
            # torchrun only for a multi-GPU type, so the CPU keeps that type with use_cpu.
            "use_cpu": gpus == 0}
    if cfg.main_process_ip.strip():
        base["main_process_ip"] = cfg.main_process_ip.strip()
    if int(cfg.num_processes) == 1:
        return {**base, "distributed_type": "NO"}
    if cfg.strategy == "ddp":
        return {**base, "distributed_type": "MULTI_GPU", "gpu_ids": "all"}
    if cfg.strategy == "fsdp":
        # FSDP2. The worker loads the weights before the process group exists, so every
        # process reads them itself (cpu_ram_efficient_loading would not apply); the full
        # state dict makes the saved adapter/model a plain one.
        return {**base, "distributed_type": "FSDP", "fsdp_config": {
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_cpu_ram_efficient_loading": False, "fsdp_offload_params": False,
            "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_activation_checkpointing": False}}
    # DeepSpeed: batch size, accumulation and clipping stay "auto" (taken from the run's
    # settings by transformers); zero3 saves a consolidated 16-bit model. zero3_init_flag is
    # off: the worker loads the model before the DeepSpeed config exists, where it has no effect.
    ds = {"zero_stage": 2 if cfg.strategy == "zero2" else 3, "offload_optimizer_device": "none",
          "offload_param_device": "none", "zero3_init_flag": False,
          "deepspeed_multinode_launcher": "standard"}
    if cfg.strategy == "zero3":
        ds["zero3_save_16bit_model"] = True
    return {**base, "distributed_type": "DEEPSPEED", "deepspeed_config": ds}


def write_config(run_dir: Path, cfg: RunConfig, gpus: int) -> Path:
    import yaml

    path = Path(run_dir) / CONFIG_NAME
    path.write_text(yaml.safe_dump(accelerate_config(cfg, gpus), sort_keys=True),
                    encoding="utf-8")
    return path


def command(run_dir: Path, resume: bool = False, machine_rank: str | None = None,
            main_process_ip: str | None = None) -> list[str]:
    """`accelerate launch --config_file RUN/accelerate.yaml -m finetune.train RUN [--resume]`,
    with this Python; another machine's rank and the main address override the config's."""
    run_dir = Path(run_dir)
    argv = [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(run_dir / CONFIG_NAME)]
    if machine_rank is not None:
        argv += ["--machine_rank", machine_rank]
    if main_process_ip is not None:
        argv += ["--main_process_ip", main_process_ip]
    return argv + ["-m", "finetune.train", str(run_dir)] + (["--resume"] if resume else [])


def node_commands(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The command to type on each machine of the run, machine 0 first."""
    return [shlex.join(command(run_dir, machine_rank=str(rank)))
            for rank in range(cfg.num_machines)]


def slurm_script(run_dir: Path, cfg: RunConfig, workdir: Path) -> str:
    """A batch script that starts one launcher on each allocated node (`sbatch` it; arguments
    after the script's name, such as --resume, reach the worker)."""
    run_dir = Path(run_dir).resolve()
    per_node = int(cfg.num_processes) // cfg.num_machines
    launch = shlex.join(command(run_dir)[:-3])  # up to "-m finetune.train RUN_DIR"
    return "\n".join([
        "#!/bin/bash",
        f"# Run {run_dir.name} on {cfg.num_machines} machine(s) x {per_node} GPU(s): "
        f"sbatch {run_dir / SLURM_NAME} [--resume]",
        "# Written by `python -m finetune train ... --slurm`. The run directory must be on "
        "storage every node sees.",
        f"#SBATCH --job-name=finetune-{run_dir.name[:40]}",
        f"#SBATCH --nodes={cfg.num_machines}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={per_node}",
        f"#SBATCH --output={run_dir}/slurm-%j.log",
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path(workdir).resolve()))}",
        "# Machine 0 is the first node of the allocation; every node meets it there.",
        'export FINETUNE_MAIN="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        "# One launcher per node, told its rank (SLURM_NODEID is set on each node by srun).",
        f"node() {{ exec {launch} --machine_rank \"$SLURM_NODEID\" "
        f"--main_process_ip \"$FINETUNE_MAIN\" -m finetune.train {shlex.quote(str(run_dir))} "
        '"$@"; }',
        "export -f node",
        "srun bash -c 'node \"$@\"' node \"$@\"",
        ""])


def write_slurm(run_dir: Path, cfg: RunConfig, workdir: Path) -> Path:
    """RUN/run.slurm, and the accelerate config it launches with (for the GPU nodes)."""
    check(cfg)
    write_config(run_dir, cfg, gpus=int(cfg.num_processes) // cfg.num_machines)
    path = Path(run_dir) / SLURM_NAME
    path.write_text(slurm_script(run_dir, cfg, workdir), encoding="utf-8")
    path.chmod(0o755)
    return path
