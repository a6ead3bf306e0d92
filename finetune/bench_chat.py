"""How fast the Chat tab answers on this machine: time to first token and decode tokens/s.

    python -m finetune bench chat

Uses the bundled SmolLM2-135M-Instruct, the device and precision chat uses
(`hardware.inference_settings`), a short chat prompt through the chat template, greedy decoding
of a fixed number of tokens. One warm-up, then the median of `repeats` timed answers.
"""

from __future__ import annotations

import statistics
import time

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Give me three tips for writing a clear email."}]


def bench_chat(max_new_tokens: int = 64, repeats: int = 3, log=print) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from finetune import generation, hardware, models

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
        cfg = generation.generation_config(model, tokenizer, n)
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

    once(8)  # warm-up: first-call allocations and kernel selection are not what a user waits for
    runs = [once(max_new_tokens) for _ in range(repeats)]
    ttfts, decodes = [r[0] for r in runs], [r[1] for r in runs]
    flags = hardware.cpu_flags()
    result = {
        "model": source.name,
        "device": device,
        "dtype": dtype,
        "cpu_model": hardware.cpu_model(),
        "avx512_bf16": "avx512_bf16" in flags,
        "cpu_flags": flags,
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": runs[0][2],
        "new_tokens": max_new_tokens,
        "repeats": repeats,
        "load_s": round(load_s, 2),
        "ttft_s": round(statistics.median(ttfts), 4),
        "decode_tokens_per_s": round(statistics.median(decodes), 1),
        "ttft_s_all": [round(t, 4) for t in ttfts],
        "decode_tokens_per_s_all": [round(d, 1) for d in decodes],
    }
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    log(f"time to first token {result['ttft_s'] * 1000:.0f} ms, decode "
        f"{result['decode_tokens_per_s']:.1f} tokens/s ({result['cpu_model']}, "
        f"avx512_bf16: {result['avx512_bf16']})")
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(bench_chat(), indent=2))
