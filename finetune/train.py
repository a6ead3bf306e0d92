"""The training process: TRL's SFTTrainer on a run directory, writing metrics and status as it goes.

    python -m finetune.train runs/NAME [--resume]     # the worker entry that finetune.jobs spawns

With several processes (`accelerate launch` of this entry, see finetune.launch) every process
runs it and only the main one (rank 0) writes the run directory: status, metrics, log lines,
the tokenizer. Its output is the run's train.log. The user-facing commands
(`python -m finetune train`, `resume --foreground`) call `run()` in the terminal instead. It reads only the run directory
(config.yaml is fully resolved), so the same config repeats a run. SIGTERM (or Ctrl-C) stops it: the current step ends, a checkpoint and the adapter are saved,
and status.json says "stopped"; if the step would take too long it is abandoned instead. A save
in progress is never cut: status.json says `saving_since`, and `jobs.stop` waits for it.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from finetune import runinfo
from finetune.errors import ConfigError, FinetuneError

STOP_GRACE_S = 6.0  # after this long waiting for a step to end, abandon the step


class _Stop:
    """Set by SIGTERM/SIGINT; read by the trainer callback at the end of each step."""

    def __init__(self):
        self.requested_at: float | None = None
        self.abandoned = False  # the watchdog gave up waiting for the step to end
        self.step_ended = False  # the step ended after the request: only saving is left
        self.saving = False  # a checkpoint the schedule asked for is being written
        self.finished = False

    def request(self, *_):
        if self.requested_at is not None:
            return
        self.requested_at = time.time()
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self):
        time.sleep(STOP_GRACE_S)
        if not self.finished and not self.step_ended and not self.saving:  # never cut a save
            self.abandoned = True
            _thread.interrupt_main()  # raises KeyboardInterrupt in the training loop


def _rank() -> int:
    """This process's number among the run's processes (set by the launcher); 0 alone."""
    return int(os.environ.get("RANK", "0"))


def _processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _status(run_dir: Path, **fields) -> dict:
    """update_status from the main process; the others leave the run directory to it."""
    return runinfo.update_status(run_dir, **fields) if _rank() == 0 else fields


def _stop_agreed(stop: _Stop, args) -> bool:
    """Whether to stop after this step. Several processes stop at the same step once any of
    them was asked (one that stopped alone would leave the others waiting for it)."""
    asked = stop.requested_at is not None
    if _processes() == 1:
        return asked
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if asked else 0.0], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not asked:
        stop.request()
    return bool(flag.item())


def to_trl_rows(rows: list[dict]) -> list[dict]:
    """Normalized rows -> TRL conversational prompt/completion (loss on the answer only)."""
    from finetune.data import prompt_and_answer

    out = []
    for row in rows:
        if "text" in row:
            out.append({"text": row["text"]})
            continue
        prompt, answer = prompt_and_answer(row)
        out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return out


def _log(run_dir: Path, tee: bool, message: str, every: bool = False) -> None:
    """One line of the run's log: printed, and with `tee` also appended to train.log (in the
    worker, stdout is train.log already, so tee is off and each line is written once). Only the
    main process speaks for the run; another one's lines are its errors (`every`)."""
    if _rank() and not every:
        return
    if _rank():
        message = f"[process {_rank()}] {message}"
        tee = False
    print(message, flush=True)
    if tee:
        with open(run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(message + "\n")


def _make_callbacks(run_dir: Path, stop: _Stop, total_steps: int):
    from transformers import TrainerCallback

    class RunDirCallback(TrainerCallback):
        """Appends metrics.jsonl and keeps status.json current; honours stop requests."""

        def __init__(self):
            self.t0 = time.time()
            self.first_step = None
            self.last = (time.time(), 0)

        def on_train_begin(self, args, state, control, **kw):
            self.first_step = state.global_step
            _status(run_dir, state="running", step=state.global_step,
                    total_steps=state.max_steps or total_steps)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 4),
                   "time": round(time.time() - self.t0, 2)}
            if "loss" in logs:
                now, tokens = time.time(), logs.get("num_tokens", 0)
                t_prev, tok_prev = self.last
                if tokens and now > t_prev and tok_prev:
                    rec["tokens_per_s"] = round((tokens - tok_prev) / (now - t_prev), 1)
                self.last = (now, tokens)
                rec.update(loss=logs["loss"], lr=logs.get("learning_rate"),
                           grad_norm=logs.get("grad_norm"), tokens=tokens)
            if "eval_loss" in logs:
                rec["eval_loss"] = logs["eval_loss"]
            if ("loss" in rec or "eval_loss" in rec) and state.is_world_process_zero:
                runinfo.append_metrics(run_dir, rec)

        def on_step_end(self, args, state, control, **kw):
            done = state.global_step - (self.first_step or 0)
            per_step = (time.time() - self.t0) / max(1, done)
            eta = per_step * max(0, state.max_steps - state.global_step)
            _status(run_dir, step=state.global_step, total_steps=state.max_steps,
                    eta_s=round(eta, 1), s_per_step=round(per_step, 2))
            if state.global_step >= state.max_steps and _processes() == 1:  # never resumed:
                args.save_only_model = True  # no optimizer state (a 7B full FT: ~56 GB less)
            if _stop_agreed(stop, args):
                stop.step_ended = True
                control.should_save = True
                control.should_training_stop = True
            if control.should_save:  # a checkpoint follows (after a validation, if one is due)
                stop.saving = True
                _status(run_dir, saving_since=time.time())  # jobs.stop waits for the save

        def on_save(self, args, state, control, **kw):
            stop.saving = False
            if not stop.step_ended:  # after a stop the weights are saved next: still saving
                _status(run_dir, saving_since=None)

    return [RunDirCallback()]


def run(run_dir: Path, resume: bool = False, tee: bool = True) -> dict:
    """Train the run in this process; return the final status. Never raises for run failures."""
    run_dir = Path(run_dir)
    stop = _Stop()
    old = {s: signal.signal(s, stop.request) for s in (signal.SIGTERM, signal.SIGINT)}
    # With several processes the pid is the launcher's (their parent): stop finds them under it.
    _status(run_dir, state="starting", pid=os.getpid() if _processes() == 1 else os.getppid(),
            host=socket.gethostname(), started=time.time(), error=None, end_reason=None,
            saving_since=None)
    try:
        return _train(run_dir, resume, tee, stop)
    except KeyboardInterrupt:
        return _status(run_dir, state="stopped", pid=None, finished=time.time(),
                       end_reason="stopped before training began")
    except FinetuneError as e:
        from finetune.access import scrub

        _log(run_dir, tee, f"error: {scrub(str(e))}", every=True)
        return _status(run_dir, state="failed", pid=None, error=scrub(str(e)),
                       finished=time.time())
    except Exception as e:  # noqa: BLE001 - every failure ends up in status.json in words
        from finetune.access import scrub

        _log(run_dir, tee, scrub(traceback.format_exc()), every=True)
        return _status(run_dir, state="failed", pid=None, error=explain(e),
                       finished=time.time())
    finally:
        stop.finished = True
        for s, handler in old.items():
            signal.signal(s, handler)


def explain(e: BaseException) -> str:
    """A failure in words a user can act on (secrets scrubbed: it goes to status.json)."""
    from finetune.access import scrub

    text = scrub(f"{type(e).__name__}: {e}")
    if "out of memory" in text.lower() or isinstance(e, MemoryError):
        return ("Out of memory. Try: method 'qlora' (4-bit base model), a smaller batch size with "
                "more gradient accumulation, gradient checkpointing 'on', or a shorter max length. "
                f"({text[:300]})")
    return f"{text[:600]} (see train.log for the full trace)"


def _train(run_dir: Path, resume: bool, tee: bool, stop: _Stop) -> dict:
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig

    from finetune import allocator, data, fastpath, hardware, liger, models, stopping

    import datasets

    datasets.disable_progress_bars()
    cfg = runinfo.load_config(run_dir)
    if cfg.report_to == "trackio":
        import importlib.util

        if importlib.util.find_spec("trackio") is None:
            raise ConfigError("report_to is 'trackio' but trackio is not installed: "
                              "pip install trackio, or set report_to to 'none'.")
    hw = hardware.detect()
    if hw.device == "cpu":  # processes on one machine share its cores
        torch.set_num_threads(max(1, hw.threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    _log(run_dir, tee, f"hardware: {hw.describe()}")
    splits = data.prepare(cfg, float(cfg.val_fraction))
    _log(run_dir, tee, f"data: {len(splits.train)} train, {len(splits.val)} validation, "
                       f"{len(splits.test)} test rows")
    source = models.resolve(cfg.model)
    _log(run_dir, tee, f"model: {source.describe()}")
    tokenizer = models.load_tokenizer(source)
    device = "cpu" if hw.device == "cpu" else hw.device
    if _processes() > 1 and hw.device == "cuda":
        # Each process its own GPU; fsdp and zero3 move their shards there from the CPU.
        device = "cpu" if cfg.strategy in ("fsdp", "zero3") else \
            f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    model = models.load_model(source, dtype=hardware.weights_dtype(cfg.method, cfg.precision),
                              quantize_4bit=cfg.method == "qlora", device=device)
    _log(run_dir, tee, f"attention: {fastpath.prepare_model(model)}")
    peft_config = None
    if cfg.method in ("lora", "qlora"):
        peft_config = models.lora_config(int(cfg.lora_r), int(cfg.lora_alpha), cfg.lora_dropout,
                                         cfg.lora_target, cfg.use_dora)
    has_val = len(splits.val) > 0
    early = cfg.early_stopping and has_val
    liger.check(cfg.liger_kernels, hw.device, str(model.config.model_type or ""))  # a resumed run
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=int(cfg.batch_size),
        per_device_eval_batch_size=int(cfg.batch_size),
        gradient_accumulation_steps=int(cfg.grad_accum),
        learning_rate=float(cfg.learning_rate),
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        max_steps=int(cfg.max_steps),
        max_length=int(cfg.max_length),
        packing=cfg.packing,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        gradient_checkpointing=cfg.gradient_checkpointing == "on",
        eval_strategy="steps" if has_val else "no",
        eval_steps=int(cfg.eval_steps),
        save_strategy="steps",
        save_steps=int(cfg.save_steps),
        save_total_limit=2,
        **stopping.trainer_settings(early),
        logging_steps=hardware.logging_steps(hw.device, int(cfg.max_steps)),
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=hw.device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # several processes: every trained weight is used
        completion_only_loss=True,
        **fastpath.sft_overrides(),
        **liger.sft_settings(cfg.liger_kernels),
    )
    callbacks = _make_callbacks(run_dir, stop, int(cfg.max_steps))
    stopper = stopping.from_config(cfg) if early else None
    if stopper:
        callbacks.append(stopping.callback(stopper, stopping.scored_rows(cfg, splits.val), run_dir,
                                           log=lambda m: _log(run_dir, tee, m)))
    if cfg.liger_kernels == "on":
        liger.quiet_deprecation()
    set_seed(cfg.seed)  # the adapters start the same in every run of this config
    trainer = fastpath.trainer_class()(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        data_collator=fastpath.collator(tokenizer, cfg.packing, model),
        train_dataset=Dataset.from_list(to_trl_rows(splits.train)),
        eval_dataset=Dataset.from_list(to_trl_rows(splits.val)) if has_val else None,
        callbacks=callbacks)
    fused = fastpath.fuse_adapters(trainer.model)
    if fused:
        _log(run_dir, tee, f"LoRA layers fused: {fused}")
    if hw.device == "cpu":
        _log(run_dir, tee, f"memory allocator: {allocator.describe()}")
    if cfg.liger_kernels == "on":
        _log(run_dir, tee, f"kernels: Liger's RMSNorm, SwiGLU and RoPE ({liger.PACKAGE} "
                           f"{liger.version()})")
    if cfg.precision == "fp16":  # loss scaling wants fp32 trained weights (TRL makes QLoRA
        models.trainable_to_fp32(trainer.model)  # adapters bf16, which a T4 only emulates)
    checkpoint = runinfo.latest_checkpoint(run_dir) if resume else None
    if resume:
        _log(run_dir, tee, f"resuming from {checkpoint.name}" if checkpoint else
             "no checkpoint yet: starting from the beginning")
    _log(run_dir, tee, f"training: {cfg.method}, {cfg.max_steps} steps of "
                       f"{cfg.batch_size} x {cfg.grad_accum} rows, {cfg.precision}")
    abandoned = False
    try:
        with liger.restored_after(trainer.model) if cfg.liger_kernels == "on" else \
                contextlib.nullcontext():
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        abandoned = True  # the stop watchdog gave up waiting for the step to end
    state = trainer.state
    out = run_dir / ("model" if cfg.method == "full" else "adapter")
    _status(run_dir, saving_since=time.time())  # a stop now waits for the save
    # Every process takes part in saving (sharded weights are gathered), except after a step
    # abandoned mid-way, when the others may be waiting inside that step.
    if not (abandoned and _processes() > 1 and cfg.strategy != "ddp"):
        trainer.save_model(str(out))  # with load_best_model_at_end these are the best weights
    if _rank() == 0:
        tokenizer.save_pretrained(str(out))
    if stop.requested_at is not None:
        how = "mid-step" if abandoned or stop.abandoned else "after the step ended"
        reason = (f"stopped by request at step {state.global_step} of {state.max_steps} ({how}); "
                  "resume continues from the latest checkpoint")
        return _status(run_dir, state="stopped", pid=None, finished=time.time(),
                       step=state.global_step, end_reason=reason, saving_since=None)
    reason, best = stopping.end_reason(state, int(cfg.max_steps), stopper)
    _log(run_dir, tee, reason)
    return _status(run_dir, state="completed", pid=None, finished=time.time(),
                   step=state.global_step, end_reason=reason, best_step=best,
                   result=str(out), saving_since=None)


def main(argv: list[str] | None = None) -> int:
    """The worker entry: train RUN_DIR (from its latest checkpoint with --resume)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m finetune.train",
                                description="The training process of one run directory (the "
                                            "app and `python -m finetune` start it).")
    p.add_argument("run_dir", help="a run directory holding a resolved config.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    args = p.parse_args(argv)
    status = run(Path(args.run_dir), resume=args.resume, tee=False)
    code = 0 if status.get("state") in ("completed", "stopped") else 1
    if _processes() > 1:
        # Everything is saved and written; the interpreter's own exit then sat ~6 s in garbage
        # collection (2 gloo CPU processes, torch 2.13), past a stop's 10 s budget.
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    from finetune import allocator

    allocator.reexec()  # tcmalloc, where installed: faster CPU steps
    sys.exit(main())
