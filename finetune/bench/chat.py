"""How fast the Chat tab answers on this machine, against plain `transformers` `generate`.

    python -m finetune bench chat --json

Uses the bundled model, the device and precision chat uses (`hardware.inference_settings`), a
short chat prompt through the chat template and greedy decoding. Two ways on the same loaded
model, alternately (a load on the machine that comes and goes hits both):
  generate  plain `model.generate` with a streamer that timestamps each token
  chat      `generation.stream`, what the Chat tab and `python -m finetune chat` run, with
            the decode step compiled where `finetune.fastdecode` applies (compiled first, as
            the chat does in the background after its first answer; `compiled_decode` says
            how long it took)
One warm-up each, then the median of `repeats` answers: time to first token (template and
tokenizer included) and decode tokens/s after the first. The answers must be the same text.
The load average is recorded, since it changes the figures.
"""

from __future__ import annotations

import os
import statistics
import time

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Give me three tips for writing a clear email."}]


def bench_chat(max_new_tokens: int = 64, repeats: int = 3, model: str | None = None,
               log=print) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from finetune import fastdecode, generation, hardware, isolate, models
    from finetune.bench import cpu_id
    from finetune.config import GenerationSettings

    class Clock(BaseStreamer):
        """Timestamps each generated token (the first put() is the prompt)."""

        def __init__(self):
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.times.extend([time.perf_counter()] * int(value.numel()))

        def end(self):
            pass

    device, dtype = hardware.inference_settings()
    t0 = time.perf_counter()
    source = models.resolve(model or "bundled")
    lm = isolate.run(models.load_model, source, dtype=dtype, device=device)  # as the chat does
    lm.eval()
    tokenizer = models.load_tokenizer(source)
    load_s = time.perf_counter() - t0
    log(f"Loaded {source.name} in {load_s:.1f} s on {device} {dtype}")
    compiled = fastdecode.prepare(lm, log)  # as the chat's model cache does
    if compiled is not None:  # as the chat does in the background after its first answer
        log("Compiling the decode step...")
        fastdecode.warm(lm, len(generation.prompt_ids(tokenizer, PROMPT)) + max_new_tokens)
        fastdecode.wait(lm)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)

    def plain() -> tuple[float, float, str]:
        cfg = generation.generation_config(lm, tokenizer, settings)
        clock = Clock()
        start = time.perf_counter()
        ids = generation.prompt_ids(tokenizer, PROMPT)  # template + tokenizer count as latency
        input_ids = torch.tensor([ids], device=lm.device)
        with torch.inference_mode():
            out = lm.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              generation_config=cfg, streamer=clock)
        text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        return _speeds(start, clock.times, len(clock.times)) + (text,)

    def chat_path() -> tuple[float, float, str]:
        start, times, text = time.perf_counter(), [], ""
        for piece in generation.stream(lm, tokenizer, PROMPT, settings):
            times.append(time.perf_counter())
            text += piece
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return _speeds(start, times, n) + (text,)

    # plain generate in a thread of its own, as the chat's stream runs it (`finetune.isolate`)
    ways = {"generate": lambda: isolate.run(plain), "chat": chat_path}
    runs: dict[str, list] = {name: [] for name in ways}
    for name, way in ways.items():  # warm-up: first-call allocations are not what a user waits for
        way()
    for _ in range(repeats):
        for name, way in ways.items():
            runs[name].append(way())
    summary = {name: {"ttft_s": round(statistics.median(r[0] for r in rs), 4),
                      "decode_tokens_per_s": round(statistics.median(r[1] for r in rs), 1),
                      "ttft_s_all": [round(r[0], 4) for r in rs],
                      "decode_tokens_per_s_all": [round(r[1], 1) for r in rs]}
               for name, rs in runs.items()}
    ours, base = summary["chat"], summary["generate"]
    flags = hardware.cpu_flags()
    result = {
        "decode_speedup_vs_generate": round(ours["decode_tokens_per_s"]
                                            / max(base["decode_tokens_per_s"], 1e-9), 3),
        "ttft_vs_generate": round(ours["ttft_s"] / max(base["ttft_s"], 1e-9), 3),
        "same_answer": len({r[2] for rs in runs.values() for r in rs}) == 1,
        "chat": ours, "generate": base,
        "ttft_s": ours["ttft_s"], "decode_tokens_per_s": ours["decode_tokens_per_s"],
        "answer": runs["chat"][0][2],
        "compiled_decode": {"on": bool(compiled and compiled.compiled_answers),
                            "compiled_answers": compiled.compiled_answers if compiled else 0,
                            "compile_s": {str(k): round(v, 1)
                                          for k, v in (compiled.ready if compiled else {}).items()},
                            "off_reason": (compiled.failed if compiled else
                                           fastdecode.off_reason(lm))},
        "model": source.name, "device": device, "dtype": dtype,
        "cpu_model": cpu_id(), "avx512_bf16": "avx512_bf16" in flags,
        "cpu_flags": flags, "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "max_new_tokens": max_new_tokens, "repeats": repeats, "load_s": round(load_s, 2),
        "order": "generate then chat, alternately",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    log(f"chat: first token {ours['ttft_s'] * 1000:.0f} ms, {ours['decode_tokens_per_s']:.1f} "
        f"tokens/s; generate: {base['ttft_s'] * 1000:.0f} ms, {base['decode_tokens_per_s']:.1f} "
        f"tokens/s ({result['cpu_model']}, avx512_bf16: {result['avx512_bf16']}, load "
        f"{result['load_avg_1m']})")
    return result


def _speeds(start: float, times: list[float], tokens: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s after the first) from arrival times of pieces."""
    if not times:
        return float("inf"), 0.0
    ttft = times[0] - start
    span = times[-1] - times[0]
    return ttft, (tokens - 1) / span if span > 0 and tokens > 1 else 0.0
