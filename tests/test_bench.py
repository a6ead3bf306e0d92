"""Benchmarks against a baseline in the same run: `bench train --json` and `bench chat --json`
report both sides (shapes only: speed is never asserted in tests)."""

import json

from finetune import allocator, cli, fastpath


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
    # ours with tcmalloc where this machine has it; plain TRL with the C library's malloc
    assert result["baseline"]["allocator"] == "libc"
    assert ("tcmalloc" in result["ours"]["allocator"]) == (allocator.find() is not None)
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


def test_bench_train_on_long_chats_trains_both_sides_on_rows_of_that_length(tiny_model, capsys):
    from finetune import data, models

    code = cli.main(["bench", "train", "--json", "--model", str(tiny_model), "--seq-len", "256",
                     "--steps", "2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["train"]
    assert result["settings"]["max_length"] == 256 and result["settings"]["seq_len"] == 256
    assert result["same_tokens"] and result["loss_max_abs_diff"] < 1e-3
    rows = data.load(result["settings"]["data"]).rows
    tokenizer = models.load_tokenizer(models.resolve(str(tiny_model)))
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True,
                                                 return_dict=True)["input_ids"]) for r in rows]
    assert min(lengths) >= 0.8 * 256 and max(lengths) <= 256
    assert all(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)


def test_a_shape_is_made_once_with_the_published_sizes_in_bf16(tmp_path, monkeypatch):
    from finetune.bench import shapes

    monkeypatch.setenv("FINETUNE_MODELS", str(tmp_path / "models"))
    small = dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128)
    folder = shapes.shaped_model("llama-1b", **small)
    config = json.loads((folder / "config.json").read_text())
    for key in ("vocab_size", "num_attention_heads", "num_key_value_heads", "rope_parameters"):
        assert config[key] == shapes.SHAPES["llama-1b"][key], key
    assert config["num_hidden_layers"] == 1 and config["dtype"] == "bfloat16"
    made = (folder / "config.json").stat().st_mtime
    assert shapes.shaped_model("llama-1b", **small) == folder
    assert (folder / "config.json").stat().st_mtime == made  # not made again
