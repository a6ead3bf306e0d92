"""Export of a finished run: merged model, adapter, GGUF (llama.cpp's converter), each checked.

    python -m pytest tests/test_export.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLES


@pytest.fixture(autouse=True)
def plain_cpu(monkeypatch):
    """fp32 on one CPU thread (no precision probe): these models are tiny."""
    import torch

    from finetune import hardware

    monkeypatch.setattr(hardware, "inference_settings", lambda: ("cpu", "fp32"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(path: Path, source: Path, n: int, answer: str | None = None) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    if answer is not None:  # one answer for every row: a task a tiny model learns in a few steps
        rows = [json.loads(x) for x in lines]
        for r in rows:
            r["messages"][-1]["content"] = answer
        lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _train(home: Path, model: Path, train_file: Path, test_file: Path, **kw) -> Path:
    from finetune import config, jobs, train

    settings = dict(model=str(model), data=str(train_file), test_data=str(test_file),
                    val_fraction=0.0, batch_size=8, grad_accum=1, eval_steps=100, save_steps=100,
                    early_stopping=False, warmup_ratio=0.0, lr_scheduler="constant",
                    precision="fp32")
    settings.update(kw)
    with pytest.MonkeyPatch.context() as mp:  # the run outlives the test that made it
        mp.setenv("FINETUNE_HOME", str(home))
        run_dir = jobs.prepare_run(config.RunConfig(**settings)).run_dir
        status = train.run(run_dir)
    assert status["state"] == "completed", status
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    """A short real LoRA run on the tiny model; its test split is 6 contacts rows."""
    root = tmp_path_factory.mktemp("lora-run")
    train_file = _rows(root / "train.jsonl", SAMPLES / "contacts" / "train.jsonl", 24)
    test_file = _rows(root / "test.jsonl", SAMPLES / "contacts" / "test.jsonl", 6)
    return _train(root / "home", tiny_model, train_file, test_file, method="lora", max_steps=3,
                  learning_rate=3e-3, lora_r=4)


@pytest.fixture(scope="module")
def smol_run(bundled_model, tmp_path_factory) -> Path:
    """A tiny random-init Llama with the bundled SmolLM2 tokenizer (one llama.cpp's converter
    knows), trained in full until it gives the one answer of its data."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("smol-run")
    tok = AutoTokenizer.from_pretrained(bundled_model)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root / "tiny-smol")
    tok.save_pretrained(root / "tiny-smol")
    answer = "Noted, thank you."
    train_file = _rows(root / "train.jsonl", SAMPLES / "tickets" / "train.jsonl", 32, answer)
    test_file = _rows(root / "test.jsonl", SAMPLES / "tickets" / "test.jsonl", 8, answer)
    return _train(root / "home", root / "tiny-smol", train_file, test_file, method="full",
                  max_steps=24, learning_rate=1e-2)


# --- what an export holds -------------------------------------------------------------------


def test_plan_defaults_to_the_adapter_and_refuses_what_cannot_be(lora_run):
    from finetune import export
    from finetune.errors import ConfigError

    assert export.plan(lora_run) == {"adapter": True, "merge": False, "gguf": []}
    assert export.plan(lora_run, merge=True, gguf_types=["Q8_0,f16"]) == \
        {"adapter": False, "merge": True, "gguf": ["q8_0", "f16"]}
    with pytest.raises(ConfigError, match="q4_k_m.*llama-quantize"):
        export.plan(lora_run, gguf_types=["q4_k_m"])


def test_merged_export_loads_with_plain_transformers_and_answers_like_the_chat_tab(
        lora_run, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune import chat, evaluate, generation
    from finetune.cli import main
    from finetune.config import GenerationSettings

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "--merge", "--adapter", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip().splitlines()[-1] == str(out)
    assert "[  0%] Merging" in printed.err and "Checking merged" in printed.err
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json", "export.json", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists()  # would make transformers load PEFT

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert tokenizer.chat_template == (lora_run / "adapter" / "chat_template.jinja").read_text()

    report = evaluate.load_report(lora_run)
    entry = report["exported"]["merged"]
    assert entry["metrics"]["agreement"] == 1.0 and not entry["flagged"], entry["verdict"]
    target = chat.resolve_target(lora_run)  # what the Chat tab answers with
    settings = GenerationSettings(max_new_tokens=report["max_new_tokens"], temperature=0.0)
    for ex in report["examples"][:3]:
        prompt = [{"role": "user", "content": ex["prompt"]}]
        tuned = "".join(chat.stream_reply(target, prompt, settings=settings)).strip()
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():  # plain generate: its own generation config stops it
            got = model.generate(**ids, max_new_tokens=report["max_new_tokens"], do_sample=False)
        plain = tokenizer.decode(got[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert plain.strip() == tuned
    # the same answers through the project's batched path, and the Evaluate tab's columns
    assert generation.generate_batch(model, tokenizer, [[{"role": "user", "content":
                                     report["examples"][0]["prompt"]}]],
                                     report["max_new_tokens"])[0] == entry["answers"][0]
    assert evaluate.metric_headers(report, exported=True) == \
        ["metric", "base", "tuned", "change", "merged"]
    assert ["agreement with tuned", "-", "-", "", "100.0%"] in \
        evaluate.metric_rows(report, exported=True)
    assert "merged: exact match" in evaluate.format_report(report)
    assert len(evaluate.metric_rows(report)[0]) == 4  # the plain table is unchanged


def test_adapter_export_names_the_hub_base_model(lora_run, tmp_path):
    from finetune import export, runinfo

    manifest = export.export_run(lora_run, tmp_path / "a", check=False)
    assert [e["name"] for e in manifest["exports"]] == ["adapter"]
    settings = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == runinfo.load_config(lora_run).model
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert export.base_model_id("SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


# --- GGUF -----------------------------------------------------------------------------------


def test_gguf_q8_0_loads_back_and_matches_the_tuned_model(smol_run, tmp_path):
    from finetune import evaluate, export

    seen = []
    manifest = export.export_run(smol_run, tmp_path / "g", gguf_types=["q8_0"], limit=8,
                                 progress=lambda f, d: seen.append((f, d)))
    gguf_file = tmp_path / "g" / f"{smol_run.name}-q8_0.gguf"
    assert gguf_file.is_file() and not (tmp_path / "g" / "config.json").exists()
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    assert any("writing" in d for _, d in seen)

    report = evaluate.load_report(smol_run)
    tuned = report["metrics"]["tuned"]["exact_match"]
    entry = report["exported"]["gguf q8_0"]
    assert tuned >= 0.75, report["examples"][:2]  # the run learned its answer
    assert abs(entry["metrics"]["exact_match"] - tuned) <= 0.02, entry["verdict"]
    assert not entry["flagged"] and manifest["flagged"] == []
    assert entry["verdict"].startswith("OK")

    modelfile = (tmp_path / "g" / "Modelfile").read_text()
    assert f"FROM ./{gguf_file.name}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n' in modelfile
    assert 'SYSTEM """' in modelfile  # the trained-with system prompt, or the template's


def test_gguf_of_a_tokenizer_llama_cpp_does_not_know_says_so(lora_run, tmp_path):
    from finetune import export
    from finetune.errors import ModelError

    with pytest.raises(ModelError, match="does not know this model's tokenizer"):
        export.export_run(lora_run, tmp_path / "g", gguf_types=["f16"], check=False)


# --- pieces -----------------------------------------------------------------------------------


def test_chat_template_becomes_an_ollama_template_with_its_stop_token(tiny_model):
    from transformers import AutoTokenizer

    from finetune import gguf

    tok = AutoTokenizer.from_pretrained(tiny_model)
    parts = gguf.template_parts(tok)
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    assert gguf.render_parts(parts, chat, gen=True) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True)
    assert gguf.end_of_turn(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    # a template with a default system prompt: SYSTEM carries it
    tok.chat_template = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe kind."
                         "<|im_end|>\n{% endif %}" + tok.chat_template)
    assert gguf.template_parts(tok)["default_system"] == "Be kind."
    assert 'SYSTEM """Be kind."""' in gguf.modelfile("m.gguf", tok)
    # a template this tool cannot cut into parts: Ollama reads the one in the GGUF file
    tok.chat_template = "{{ messages | map(attribute='content') | join(' ') }}"
    text = gguf.modelfile("m.gguf", tok)
    assert "TEMPLATE" not in text.replace("template", "") and "FROM ./m.gguf" in text


def test_a_disagreeing_export_is_flagged():
    from finetune import evaluate

    report = {"metrics": {"tuned": {"exact_match": 1.0}},
              "examples": [{"reference": "a", "tuned": "a"}] * 10}
    good = {"kind": "q8_0", "answers": ["a"] * 10, "loss": 0.1}
    evaluate._score(good, report)
    assert not good["flagged"] and good["metrics"]["agreement"] == 1.0
    bad = {"kind": "q8_0", "answers": ["a"] * 7 + ["b"] * 3, "loss": 0.1}
    evaluate._score(bad, report)
    assert bad["flagged"] and bad["verdict"].startswith("FLAGGED")
    assert "7 of 10" in bad["verdict"] and "30.0 points" in bad["verdict"]
