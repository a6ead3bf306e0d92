"""The app: Data -> Train -> Evaluate -> Chat, and an OpenAI-style API.  Start it with
`python app.py`.

On a Hugging Face Space this file is the entry point (module-level `demo`); locally
`python app.py` serves it on http://127.0.0.1:7860 with the API under /v1. The owner sees every
tab; a visitor of a shared link sees the Chat tab only (finetune.access says who is who), and
every handler checks it on the server (finetune.ui.guard).
"""

import dataclasses
import os

import gradio as gr

from finetune import access
from finetune.config import DEFAULT_MODEL
from finetune.errors import AccessError
from finetune.ui.chat_tab import build_chat_tab
from finetune.ui.data_tab import build_data_tab
from finetune.ui.evaluate_tab import build_evaluate_tab
from finetune.ui.guard import Guard, for_visitors
from finetune.ui.share_tab import build_share_tab
from finetune.ui.train_tab import build_train_tab

INTRO = """# Fine-tune a small LLM on your own data
1. **Data**: pick the sample or upload a file; see what was understood and what is wrong.
2. **Train**: press *Start training*; every *auto* setting is decided from your data and this machine.
3. **Evaluate**: the base model against the tuned one, example by example.
4. **Chat**: talk to the tuned model, or to both side by side.
5. **Share**: export it (merged, adapter, GGUF), checked on held-out rows; push it to the Hub.

Training runs in the background: you can close this page and come back."""
VISITOR_INTRO = ("# Chat with a fine-tuned model\nThe owner of this app fine-tuned a small "
                 "language model; try it in the **Chat** tab, or through the OpenAI-style API "
                 "at `/v1/chat/completions`.")


def build_app(guard: Guard | None = None) -> gr.Blocks:
    guard = guard or Guard()
    with gr.Blocks(title="finetune") as demo:
        intro = gr.Markdown(VISITOR_INTRO)
        with gr.Row():
            who = gr.Markdown()
            if access.on_space() and os.environ.get("OAUTH_CLIENT_ID"):  # `hf_oauth: true`
                gr.LoginButton(scale=0)
        with gr.Accordion("Owner sign-in", open=False, visible=False) as sign_in_box:
            password = gr.Textbox(type="password", label="Owner password", max_lines=1)
            sign_in_btn = gr.Button("Sign in")
        data_state = gr.State({})  # Data -> Train: what to train on
        model_state = gr.State(DEFAULT_MODEL)  # Train -> Data: whose tokenizer counts
        # Owner tabs start hidden; the page shows them once the server says who is looking.
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data", visible=False) as data_tab:
                build_data_tab(data_state, model_state)
            with gr.Tab("Train", id="train", visible=False) as train_tab:
                build_train_tab(demo, data_state, model_state)
            with gr.Tab("Evaluate", id="evaluate", visible=False) as evaluate_tab:
                build_evaluate_tab()
            with gr.Tab("Chat", id="chat"):
                build_chat_tab()
            with gr.Tab("Share", id="share", visible=False) as share_tab:
                build_share_tab()

        page = [intro, who, sign_in_box, tabs, data_tab, train_tab, evaluate_tab, share_tab]

        @for_visitors
        def show_role(caller=None):
            """What this person sees: who they are, what they may do, the tabs for it."""
            owner = caller.who.owner
            offer_sign_in = (not owner and not access.on_space()
                             and access.listens_beyond_this_machine(access.server_host()))
            return (INTRO if owner else VISITOR_INTRO, f"*{caller.who.how}*",
                    gr.update(visible=offer_sign_in), gr.Tabs(selected="data" if owner else "chat"),
                    *[gr.update(visible=owner)] * 4)

        @for_visitors
        def sign_in(password_text, caller=None):
            """The owner password (off a Space, when the app listens beyond this machine)."""
            caller.gate.throttle(caller.client)  # guessing costs a visitor's message allowance
            if not guard.sign_in(caller.session, password_text):
                raise AccessError("Wrong owner password (or none is set: FINETUNE_OWNER_PASSWORD).")
            owner = access.identify(None, True, access.server_host())
            return (*show_role(caller=dataclasses.replace(caller, who=owner)), "")

        demo.load(show_role, None, page)
        sign_in_btn.click(sign_in, password, [*page, password])
    return guard.protect(demo)


def serve(demo: gr.Blocks, guard: Guard) -> None:
    """The page and the /v1 API on one port (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)."""
    import uvicorn
    from fastapi import FastAPI

    from finetune import api

    host, port = access.server_host(), int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    if (access.listens_beyond_this_machine(host) and not access.on_space()
            and not os.environ.get("FINETUNE_OWNER_PASSWORD")):
        print(f"Listening on {host}: everyone who can reach it is a visitor (chat only). Set "
              "FINETUNE_OWNER_PASSWORD to sign in as the owner and train.", flush=True)
    server = FastAPI()
    server.include_router(api.router(guard.api_caller))
    server = gr.mount_gradio_app(server, demo.queue(default_concurrency_limit=4), path="",
                                 footer_links=["gradio", "settings"])
    print(f"Serving on http://{host}:{port} (API: /v1/chat/completions)", flush=True)
    uvicorn.run(server, host=host, port=port, log_level="warning")


GUARD = Guard()
demo = build_app(GUARD)

if __name__ == "__main__":
    serve(demo, GUARD)
