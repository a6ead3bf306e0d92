"""How fast the Chat tab answers on this machine: time to first token and decode tokens/s.

    python -m finetune bench chat

Uses the bundled model, the device and precision chat uses
(`hardware.inference_settings`), a short chat prompt through the chat template, greedy decoding
of a fixed number of tokens. One warm-up, then the median of `repeats` timed answers, at the
thread count chat uses and (on a CPU) at one thread: on a busy machine a second thread can cost
more in waiting than it gives. The load average is recorded, since it changes the figures.
"""

from __future__ import annotations

import os
import statistics
import time

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Give me three tips for writing a clear email."}]


def bench_chat(max_new_tokens: int = 64, repeats: int = 3, log=print) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from finetune import generation, hardware, models
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
            self.times.append(time.perf_counter())

        def end(self):
            pass

    device, dtype = hardware.inference_settings()
    t0 = time.perf_counter()
    source = models.resolve("bundled")
    model = models.load_model(source, dtype=dtype, device=device)
    model.eval()
    tokenizer = models.load_tokenizer(source)
    load_s = time.perf_counter() - t0
    log(f"Loaded {source.name} in {load_s:.1f} s on {device} {dtype}")

    def once(n: int) -> tuple[float, float, int]:
        cfg = generation.generation_config(model, tokenizer, GenerationSettings(max_new_tokens=n))
        cfg.min_new_tokens = n  # a fixed length, so runs compare
        clock = Clock()
        start = time.perf_counter()
        ids = generation.prompt_ids(tokenizer, PROMPT)  # template + tokenizer count as latency
        input_ids = torch.tensor([ids], device=model.device)
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           generation_config=cfg, streamer=clock)
        if device == "cuda":
            torch.cuda.synchronize()
        ttft = clock.times[0] - start
        decode = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0]) \
            if len(clock.times) > 1 else 0.0
        return ttft, decode, len(ids)

    def measure() -> dict:
        once(8)  # warm-up: first-call allocations and kernel choice are not what a user waits for
        runs = [once(max_new_tokens) for _ in range(repeats)]
        ttfts, decodes = [r[0] for r in runs], [r[1] for r in runs]
        return {"prompt_tokens": runs[0][2],
                "ttft_s": round(statistics.median(ttfts), 4),
                "decode_tokens_per_s": round(statistics.median(decodes), 1),
                "ttft_s_all": [round(t, 4) for t in ttfts],
                "decode_tokens_per_s_all": [round(d, 1) for d in decodes]}

    threads = torch.get_num_threads()
    main = measure()
    by_threads = {threads: {k: main[k] for k in ("ttft_s", "decode_tokens_per_s")}}
    if device == "cpu" and threads > 1:
        torch.set_num_threads(1)
        try:
            one = measure()
        finally:
            torch.set_num_threads(threads)
        by_threads[1] = {k: one[k] for k in ("ttft_s", "decode_tokens_per_s")}
    flags = hardware.cpu_flags()
    result = {
        "model": source.name,
        "device": device,
        "dtype": dtype,
        "cpu_model": hardware.cpu_model(),
        "avx512_bf16": "avx512_bf16" in flags,
        "cpu_flags": flags,
        "torch_threads": threads,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "new_tokens": max_new_tokens,
        "repeats": repeats,
        "load_s": round(load_s, 2),
        **main,
        "by_threads": by_threads,
    }
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    log(f"time to first token {result['ttft_s'] * 1000:.0f} ms, decode "
        f"{result['decode_tokens_per_s']:.1f} tokens/s at {threads} threads "
        f"({result['cpu_model']}, "
        f"avx512_bf16: {result['avx512_bf16']}, load {result['load_avg_1m']})")
    return result

