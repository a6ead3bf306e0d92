"""One side of `bench train`, in its own process so its peak memory is its own.

    python -m finetune.bench.child ours RUN_DIR       # this project's training process
    python -m finetune.bench.child baseline RUN_DIR   # plain TRL SFTTrainer + PEFT, TRL defaults

RUN_DIR holds the resolved config.yaml both sides share. Writes RUN_DIR/bench.json (the
attention and the malloc in use, the CUDA peak); the metrics go to metrics.jsonl as in any run.
`bench train` starts ours with tcmalloc where installed, the baseline without (`allocator`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def baseline(run_dir: Path) -> str:
    """Plain TRL + PEFT: only the run's model, data, LoRA, schedule and precision are set."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from finetune import data, hardware, models, runinfo, train

    cfg = runinfo.load_config(run_dir)
    hw = hardware.detect()
    splits = data.prepare(cfg, float(cfg.val_fraction))
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source)
    model = models.load_model(source, dtype=hardware.weights_dtype(cfg.method, cfg.precision),
                              quantize_4bit=cfg.method == "qlora",
                              device="cpu" if hw.device == "cpu" else hw.device)
    attention = str(model.config._attn_implementation)
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"), per_device_train_batch_size=int(cfg.batch_size),
        gradient_accumulation_steps=int(cfg.grad_accum), learning_rate=float(cfg.learning_rate),
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        max_steps=int(cfg.max_steps), max_length=int(cfg.max_length),
        bf16=cfg.precision == "bf16", fp16=cfg.precision == "fp16", use_cpu=hw.device == "cpu",
        logging_steps=1, save_strategy="no", report_to=[], seed=cfg.seed, data_seed=cfg.seed,
        disable_tqdm=True)
    peft_config = None
    if cfg.method in ("lora", "qlora"):
        peft_config = models.lora_config(int(cfg.lora_r), int(cfg.lora_alpha), cfg.lora_dropout,
                                         cfg.lora_target, cfg.use_dora)
    set_seed(cfg.seed)  # as the training process does: the adapters start the same
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         peft_config=peft_config,
                         train_dataset=Dataset.from_list(train.to_trl_rows(splits.train)),
                         callbacks=train._make_callbacks(run_dir, train._Stop(),
                                                         int(cfg.max_steps)))
    trainer.train()
    runinfo.update_status(run_dir, state="completed", step=trainer.state.global_step,
                          finished=time.time())
    return attention


def ours(run_dir: Path) -> str:
    from finetune import runinfo, train

    status = train.run(run_dir, tee=False)
    if status.get("state") != "completed":
        raise SystemExit(1)
    for line in (run_dir / "train.log").read_text(encoding="utf-8").splitlines():
        if line.startswith("attention: "):
            return line.split(": ", 1)[1]
    return runinfo.read_status(run_dir).get("state", "")


def main(argv: list[str]) -> int:
    import torch

    from finetune import allocator, runinfo

    side, run_dir = argv[0], Path(argv[1])
    attention = {"ours": ours, "baseline": baseline}[side](run_dir)
    cuda = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() \
        else None
    runinfo.write_json(run_dir / "bench.json", {"attention": attention, "cuda_peak_gb": cuda,
                                                "allocator": allocator.in_use() or "libc"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
