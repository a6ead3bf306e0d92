"""The app: Data -> Train -> Evaluate -> Chat.  Start it with `python app.py`.

On a Hugging Face Space this file is the entry point (module-level `demo`); locally
`python app.py` serves it on http://127.0.0.1:7860.
"""

import os

import gradio as gr

from finetune.config import DEFAULT_MODEL
from finetune.ui.chat_tab import build_chat_tab
from finetune.ui.data_tab import build_data_tab
from finetune.ui.evaluate_tab import build_evaluate_tab
from finetune.ui.train_tab import build_train_tab

INTRO = """# Fine-tune a small LLM on your own data
1. **Data**: pick the sample or upload a file; see what was understood and what is wrong.
2. **Train**: press *Start training*; every *auto* setting is decided from your data and this machine.
3. **Evaluate**: the base model against the tuned one, example by example.
4. **Chat**: talk to the tuned model, or to both side by side.

Training runs in the background: you can close this page and come back."""


def build_app() -> gr.Blocks:
    with gr.Blocks(title="finetune") as demo:
        gr.Markdown(INTRO)
        data_state = gr.State({})  # Data -> Train: what to train on
        model_state = gr.State(DEFAULT_MODEL)  # Train -> Data: whose tokenizer counts
        with gr.Tab("Data"):
            build_data_tab(data_state, model_state)
        with gr.Tab("Train"):
            build_train_tab(demo, data_state, model_state)
        with gr.Tab("Evaluate"):
            build_evaluate_tab()
        with gr.Tab("Chat"):
            build_chat_tab()
    return demo


demo = build_app()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        footer_links=["gradio", "settings"])
