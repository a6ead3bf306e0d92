"""Benchmarks against a baseline in the same run: `bench train --json` and `bench chat --json`
report both sides (shapes only: speed is never asserted in tests)."""

import json

from finetune import cli, fastpath


def test_bench_train_json_has_both_sides_and_their_loss_curves(tiny_model, tiny_data, capsys):
    code = cli.main(["bench", "train", "--json", "--model", str(tiny_model), "--data",
                     str(tiny_data), "--steps", "2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["train"]
    for key in ("speedup_vs_baseline", "memory_vs_baseline", "machine", "settings"):
        assert key in result
    for side in ("ours", "baseline"):
        assert result[side]["tokens_per_s"] > 0 and result[side]["peak_memory_gb"] > 0
        assert len(result[side]["loss"]) == 2
    assert result["ours"]["attention"] == fastpath.ROW_ATTENTION
    assert result["same_tokens"]
    assert result["loss_max_abs_diff"] < 1e-3  # the same loss on the same tokens
    assert "avx512_bf16" in result["machine"] and result["machine"]["cpu_model"]


def test_bench_chat_json_has_the_chat_path_and_plain_generate_with_the_same_answer(tiny_model,
                                                                                   capsys):
    code = cli.main(["bench", "chat", "--json", "--model", str(tiny_model)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["chat"]
    assert result["same_answer"]  # the Chat tab answers what plain greedy generate answers
    for way in ("chat", "generate"):
        assert result[way]["ttft_s"] > 0 and result[way]["decode_tokens_per_s"] > 0
    assert result["decode_speedup_vs_generate"] > 0 and "avx512_bf16" in result
