"""A chat-only Space for a model fine-tuned and pushed with `finetune` (no training UI).

    python app.py        # locally: needs chat_config.json beside it, then http://127.0.0.1:7860

`chat_config.json` (written when the Space is published) names the model: a Hub repository with a
merged model, an adapter (PEFT loads its base model) or a GGUF file (`gguf_file`). The model
answers with the chat template and end-of-turn token it was trained with. A private model needs
a read token as the Space secret HF_TOKEN. On ZeroGPU hardware each answer borrows a GPU. On a
CPU (a free Space) answers decode as in finetune's own chat: `fastdecode.py`, shipped beside
this file, compiles the decode step in the background after the first answer (~2.5x faster on
2 cores; FINETUNE_DECODE=eager turns it off).
"""

import copy
import json
import os
import threading
from pathlib import Path

import fastdecode
import gradio as gr
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

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


@_gpu
def respond(message, history, system: str = CONFIG.get("system", "")):
    """Stream the answer; greedy, so it answers as the evaluation measured."""
    text = tokenizer.apply_chat_template(messages_for(message, history, system), tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(DEVICE)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cfg = copy.deepcopy(model.generation_config)
    cfg.update(max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
               pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    n_tokens = inputs["input_ids"].shape[1] + MAX_NEW_TOKENS

    def work():
        try:
            with torch.inference_mode(), fastdecode.session(model, cfg, n_tokens) as extra:
                model.generate(**inputs, generation_config=cfg, streamer=streamer, **extra)
        except Exception:
            streamer.end()  # the answer ends here; the Space's log shows the error
            raise

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    answer = ""
    for piece in streamer:
        answer += piece
        yield answer
    thread.join()


demo = gr.ChatInterface(
    respond,
    additional_inputs=[gr.Textbox(CONFIG.get("system", ""), label="System prompt",
                                  info="The model answers best with the one it was trained with.")],
    title=CONFIG.get("title") or MODEL,
    description=f"Chat with [{MODEL}](https://huggingface.co/{MODEL}), fine-tuned with finetune.",
)

if __name__ == "__main__":
    demo.launch()
