"""A chat-only Space for a model fine-tuned and pushed with `finetune` (no training UI).

    python app.py        # locally: needs chat_config.json beside it, then http://127.0.0.1:7860

`chat_config.json` (written when the Space is published) names the model: a Hub repository with a
merged model, an adapter (PEFT loads its base model) or a GGUF file (`gguf_file`). The model
answers with the chat template and end-of-turn token it was trained with. A private model needs
a read token as the Space secret HF_TOKEN. On ZeroGPU hardware each answer borrows a GPU. On a
CPU (a free Space) a merged or GGUF model decodes as in finetune's own chat: `fastdecode.py`,
shipped beside this file, compiles the decode step in the background after the first answer
(~2x faster on 2 cores; FINETUNE_DECODE=eager turns it off). An adapter decodes as before.
"""

import copy
import json
import os
import threading
from pathlib import Path

import fastdecode
import gradio as gr
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, StoppingCriteria,
                          StoppingCriteriaList, TextIteratorStreamer)

CONFIG = json.loads((Path(__file__).parent / "chat_config.json").read_text(encoding="utf-8"))
MODEL = os.environ.get("MODEL_ID") or CONFIG["model"]
GGUF = CONFIG.get("gguf_file") or None
TOKEN = os.environ.get("HF_TOKEN") or None  # only needed for a private model
MAX_NEW_TOKENS = int(CONFIG.get("max_new_tokens", 512))
ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
DEVICE = "cuda" if torch.cuda.is_available() or ZERO_GPU else "cpu"


def load(model: str = MODEL, gguf_file: str | None = GGUF):
    """The model and tokenizer: transformers loads merged models, adapters (with peft installed)
    and GGUF files (de-quantized) alike."""
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(model, token=TOKEN, **kwargs)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(model, token=TOKEN, dtype=dtype, **kwargs)
    return lm.to(DEVICE).eval(), tok


model, tokenizer = load()
fastdecode.prepare(model)


def text_of(content) -> str:
    """Gradio 6 sends message content as a string or a list of blocks: keep the text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "\n".join(t for t in (text_of(c) for c in content) if t)
    return ""


def messages_for(message, history, system: str) -> list[dict]:
    out = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history or []:
        if m.get("role") in ("user", "assistant") and not (m.get("metadata") or {}).get("title"):
            out.append({"role": m["role"], "content": text_of(m.get("content"))})
    return out + [{"role": "user", "content": text_of(message)}]


def _gpu(fn):
    if ZERO_GPU:
        import spaces  # the ZeroGPU package, present on ZeroGPU hardware

        return spaces.GPU(fn)
    return fn


class _Halt(StoppingCriteria):
    """Stops generating once `event` is set: the user stopped the answer or left."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def _greedy_config():
    """The model's generation config (its end-of-turn token), greedy: it answers as the
    evaluation measured, with no sampling settings left to warn about."""
    cfg = copy.deepcopy(model.generation_config)
    cfg.update(max_new_tokens=MAX_NEW_TOKENS, max_length=None, min_new_tokens=None,
               do_sample=False, temperature=None, top_p=None, top_k=None)
    cfg.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    return cfg


@_gpu
def respond(message, history, system: str = CONFIG.get("system", "")):
    """Stream the answer; greedy, so it answers as the evaluation measured."""
    text = tokenizer.apply_chat_template(messages_for(message, history, system), tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(DEVICE)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cfg = _greedy_config()
    n_tokens = inputs["input_ids"].shape[1] + MAX_NEW_TOKENS
    halt, failure = threading.Event(), []

    def work():
        try:
            with torch.inference_mode(), fastdecode.session(model, cfg, n_tokens) as extra:
                model.generate(**inputs, generation_config=cfg, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Halt(halt)]), **extra)
        except Exception as e:  # noqa: BLE001 - said to the user below, after the thread ends
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    answer = ""
    try:
        for piece in streamer:
            answer += piece
            yield answer
    finally:
        halt.set()  # a stopped answer, or a closed page, stops the generation too
    thread.join()
    if failure:
        raise gr.Error(f"The model could not answer: {type(failure[0]).__name__}: {failure[0]}")


demo = gr.ChatInterface(
    respond,
    additional_inputs=[gr.Textbox(CONFIG.get("system", ""), label="System prompt",
                                  info="The model answers best with the one it was trained with.")],
    title=CONFIG.get("title") or MODEL,
    description=f"Chat with [{MODEL}](https://huggingface.co/{MODEL}), fine-tuned with finetune.",
)

if __name__ == "__main__":
    demo.launch()
