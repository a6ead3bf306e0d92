"""Models of a known size for `bench train`, made here (random init: no model hub needed), and
long chats to train them on.

    python -m finetune bench train --json --shape llama-1b --seq-len 2048           # LoRA
    python -m finetune bench train --json --shape mistral-7b --seq-len 2048 --method qlora

A shape is the published size of a model family (layers, widths, heads, vocabulary) with the
Llama architecture; the weights are random and the tokenizer is the small one the tests use
(`gpu.random_chat_model`), so speed and memory are those of the real model while its answers
mean nothing. Mistral-7B v0.3 has no sliding window, so the Llama architecture with its sizes is
its shape. Made once under $FINETUNE_MODELS/bench-shapes/ (the 7B one: ~14 GB of bf16 on disk,
a minute or two to write).
"""

from __future__ import annotations

import json
from pathlib import Path

SHAPES = {
    "llama-1b": dict(vocab_size=128_256, hidden_size=2048, intermediate_size=8192,
                     num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
                     rms_norm_eps=1e-5, tie_word_embeddings=True),
    "mistral-7b": dict(vocab_size=32_768, hidden_size=4096, intermediate_size=14_336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                       rms_norm_eps=1e-5, tie_word_embeddings=False),
}
WHAT = {"llama-1b": "Llama-3.2-1B", "mistral-7b": "Mistral-7B-v0.3"}


def check_shape(name: str) -> None:
    from finetune.errors import ConfigError

    if name not in SHAPES:
        raise ConfigError(f"Unknown shape '{name}': choose from {', '.join(SHAPES)}.")


def shaped_model(name: str, seq_len: int = 4096, **smaller) -> Path:
    """The folder of a random-init model of shape `name` (made once, in bf16 so a 7B one fits
    in memory and on disk); `smaller` overrides sizes (tests)."""
    from finetune import paths
    from finetune.bench.gpu import random_chat_model

    check_shape(name)
    settings = {**SHAPES[name], "max_position_embeddings": max(4096, seq_len), **smaller}
    tag = name if not smaller else name + "-" + "-".join(f"{k}{v}" for k, v in
                                                          sorted(smaller.items()))
    target = paths.models_dir() / "bench-shapes" / tag
    return paths.make_once(target, "config.json",
                           lambda tmp: random_chat_model(tmp, dtype="bf16", **settings))


def long_chats(out: Path, tokenizer, seq_len: int, rows: int = 256) -> Path:
    """`rows` conversations of about `seq_len` tokens each (never more, and no turn of the
    samples fits in what is left), made of the bundled samples' turns one after another under
    one system prompt, written to `out` as JSONL. Every assistant turn carries loss, as in any
    multi-turn row."""
    samples = Path(__file__).resolve().parents[1] / "samples"
    turns = [json.loads(line)["messages"] for f in sorted(samples.glob("*/train.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines()]
    pairs = [(m[-2], m[-1]) for m in turns if len(m) >= 2 and m[-1]["role"] == "assistant"]

    def length(messages) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
                   ["input_ids"])

    system = {"role": "system", "content": "Answer each message as the examples before it."}
    alone = length([system])
    sizes = [length([system, *pair]) - alone for pair in pairs]  # a chat template adds turns
    made, k, smallest = [], 0, min(sizes)
    while len(made) < rows:
        chat, total, misses = [system], alone, 0
        while misses < len(pairs) and total + smallest <= seq_len:
            i, k = k % len(pairs), k + 1
            if total + sizes[i] > seq_len:  # this turn does not fit: a shorter one may
                misses += 1
                continue
            chat += list(pairs[i])
            total, misses = total + sizes[i], 0
        while len(chat) > 3 and length(chat) > seq_len:  # a template that is not additive
            chat = chat[:-2]
        if len(chat) < 3:
            from finetune.errors import ConfigError

            raise ConfigError(f"--seq-len {seq_len} is too short for a chat of the samples' "
                              "turns: use 256 or more.")
        made.append({"messages": chat})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in made), encoding="utf-8")
    return out
