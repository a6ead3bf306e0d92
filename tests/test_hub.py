"""Push to the Hub and publish a chat Space, against a local stand-in of the Hub's HTTP API.

    python -m pytest tests/test_hub.py -q

The stand-in serves only the routes huggingface_hub calls for these (whoami, create repo,
model info, validate README metadata, preupload, the LFS batch/upload for large files, commit)
and keeps what was sent; `HF_ENDPOINT` points huggingface_hub at it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import SAMPLES

TOKEN = "hf_standin_secret_0123456789"
USER = "ana"
LFS_FROM = 50_000  # files this large go through LFS, as weights do on the Hub


class FakeHub:
    """What the stand-in received: repos, their files, and each request's path and token."""

    def __init__(self):
        self.repos: dict[str, dict] = {}  # "model:ana/x" -> {"private", "sdk", "files": {}}
        self.blobs: dict[str, bytes] = {}  # LFS uploads by sha256
        self.requests: list[tuple[str, str, str]] = []  # (method, path, authorization)
        self.url = ""

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        hub = self

        def authorized(request) -> bool:
            hub.requests.append((request.method, request.url.path,
                                 request.headers.get("authorization", "")))
            return request.headers.get("authorization") == f"Bearer {TOKEN}"

        def denied():
            return JSONResponse({"error": "Invalid credentials"}, status_code=401)

        async def whoami(request):
            if not authorized(request):
                return denied()
            return JSONResponse({"type": "user", "name": USER, "orgs": [],
                                 "auth": {"type": "access_token",
                                          "accessToken": {"role": "write"}}})

        async def create(request):
            if not authorized(request):
                return denied()
            body = await request.json()
            kind = body.get("type", "model")
            repo_id = f"{body.get('organization') or USER}/{body['name']}"
            key = f"{kind}:{repo_id}"
            if key in hub.repos:
                return JSONResponse({"error": "You already created this repo"}, status_code=409)
            hub.repos[key] = {"private": body.get("visibility") == "private" or
                              body.get("private") is True, "sdk": body.get("sdk"), "files": {},
                              "commits": []}
            prefix = "spaces/" if kind == "space" else ""
            return JSONResponse({"url": f"{hub.url}/{prefix}{repo_id}", "name": repo_id})

        async def model_info(request):
            if not authorized(request):
                return denied()
            repo_id = f"{request.path_params['ns']}/{request.path_params['name']}"
            repo = hub.repos.get(f"model:{repo_id}")
            if repo is None:
                return JSONResponse({"error": "Repository not found"}, status_code=404,
                                    headers={"X-Error-Code": "RepoNotFound"})
            return JSONResponse({"id": repo_id, "private": repo["private"], "sha": "0" * 40,
                                 "siblings": [{"rfilename": f} for f in repo["files"]]})

        async def validate_yaml(request):
            authorized(request)
            return JSONResponse({"errors": [], "warnings": []})

        async def preupload(request):
            if not authorized(request):
                return denied()
            body = await request.json()
            return JSONResponse({"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["size"] >= LFS_FROM else "regular",
                 "shouldIgnore": False, "oid": None} for f in body["files"]]})

        async def lfs_batch(request):
            if not authorized(request):
                return denied()
            body = await request.json()
            return JSONResponse({"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}}
                for o in body["objects"] if o["oid"] not in hub.blobs]})

        async def lfs_upload(request):
            hub.requests.append(("PUT", request.url.path, request.headers.get("authorization", "")))
            data = await request.body()
            oid = request.path_params["oid"]
            assert hashlib.sha256(data).hexdigest() == oid
            hub.blobs[oid] = data
            return Response(status_code=200)

        async def commit(request):
            if not authorized(request):
                return denied()
            kind = request.path_params["kind"].rstrip("s")
            repo_id = f"{request.path_params['ns']}/{request.path_params['name']}"
            repo = hub.repos.get(f"{kind}:{repo_id}")
            if repo is None:
                return JSONResponse({"error": "Repository not found"}, status_code=404,
                                    headers={"X-Error-Code": "RepoNotFound"})
            lines = [json.loads(x) for x in (await request.body()).decode().splitlines() if x]
            for item in lines:
                value = item["value"]
                if item["key"] == "header":
                    repo["commits"].append(value["summary"])
                elif item["key"] == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    repo["files"][value["path"]] = hub.blobs[value["oid"]]
            oid = hashlib.sha1(str(time.time()).encode()).hexdigest()
            prefix = "spaces/" if kind == "space" else ""
            return JSONResponse({"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{oid}",
                                 "commitOid": oid, "pullRequestUrl": None})

        return Starlette(routes=[
            Route("/api/whoami-v2", whoami),
            Route("/api/repos/create", create, methods=["POST"]),
            Route("/api/models/{ns}/{name}", model_info),
            Route("/api/validate-yaml", validate_yaml, methods=["POST"]),
            Route("/api/{kind}/{ns}/{name}/preupload/{rev}", preupload, methods=["POST"]),
            Route("/api/{kind}/{ns}/{name}/commit/{rev}", commit, methods=["POST"]),
            Route("/{ns}/{name}.git/info/lfs/objects/batch", lfs_batch, methods=["POST"]),
            Route("/spaces/{ns}/{name}.git/info/lfs/objects/batch", lfs_batch, methods=["POST"]),
            Route("/lfs-upload/{oid}", lfs_upload, methods=["PUT"]),
        ])


@pytest.fixture(scope="module")
def fake_hub():
    import uvicorn

    hub = FakeHub()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(hub.app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield hub
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def hub_env(fake_hub, monkeypatch):
    """huggingface_hub pointed at the stand-in with the owner's token (no xet: plain LFS)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets it for everything else
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return fake_hub


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    """A finished LoRA run (a short real one) whose test split is 4 contacts rows."""
    from finetune import config, jobs, train

    root = tmp_path_factory.mktemp("hub-run")
    for name, src, n in (("train", "train", 24), ("test", "test", 4)):
        lines = (SAMPLES / "contacts" / f"{src}.jsonl").read_text().splitlines()[:n]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config.RunConfig(model=str(tiny_model), data=str(root / "train.jsonl"),
                           test_data=str(root / "test.jsonl"), val_fraction=0.0, method="lora",
                           max_steps=3, batch_size=8, grad_accum=1, eval_steps=10, save_steps=10,
                           learning_rate=3e-3, lora_r=4, early_stopping=False, precision="fp32",
                           name="hub-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINETUNE_HOME", str(root / "home"))
        run_dir = jobs.prepare_run(cfg).run_dir
        assert train.run(run_dir)["state"] == "completed"
    return run_dir


def _no_secrets(files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert TOKEN.encode() not in data, name
        assert b"/tmp/" not in data or name.endswith((".safetensors", ".gguf")), name


def test_push_sends_the_export_and_a_model_card_without_the_token(hub_env, run, monkeypatch):
    import torch
    from huggingface_hub import ModelCard

    from finetune import hardware, hub

    monkeypatch.setattr(hardware, "inference_settings", lambda: ("cpu", "fp32"))
    torch.set_num_threads(1)
    seen = []
    result = hub.push(run, "contacts-tiny", merge=True, adapter=True,
                      progress=lambda f, d: seen.append((f, d)))
    assert result["repo_id"] == f"{USER}/contacts-tiny" and result["private"] is True
    assert result["url"] == f"{hub_env.url}/{USER}/contacts-tiny"
    repo = hub_env.repos[f"model:{USER}/contacts-tiny"]
    assert repo["private"]
    files = repo["files"]
    for name in ("README.md", "loss.png", "config.json", "model.safetensors", "tokenizer.json",
                 "chat_template.jinja", "generation_config.json", "export.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert name in files, sorted(files)
    assert files["model.safetensors"] == (run / "export" / "model.safetensors").read_bytes()
    assert files["loss.png"].startswith(b"\x89PNG")
    assert any(p.startswith("/lfs-upload/") for _, p, _ in hub_env.requests)  # weights via LFS
    assert any("uploading model.safetensors" in d for _, d in seen) and seen[-1][0] == 1.0

    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model is None  # a local base: named by its folder, not a Hub id
    assert "A fine-tune of `tiny-llama` (lora)" in card.text
    assert json.loads(files["adapter/adapter_config.json"])["base_model_name_or_path"] == \
        "tiny-llama"
    assert card.data.library_name == "transformers" and "lora" in card.data.tags
    text = card.text
    assert "| metric | base | tuned | change | merged |" in text
    assert "agreement with tuned" in text and "![Training and validation loss](loss.png)" in text
    assert "24 train, 0 validation, 4 test rows, format `messages`" in text
    assert "| lora_r | 4 |" in text and "| learning_rate | 0.003 |" in text
    for how in ("AutoModelForCausalLM.from_pretrained(\"ana/contacts-tiny\")",
                "AutoPeftModelForCausalLM", 'subfolder="adapter"'):
        assert how in text, how
    assert "Ollama" not in text  # no GGUF in this push: no llama.cpp/Ollama instructions
    _no_secrets(files)
    # every call carried the owner's token as a header, never in a URL
    api_calls = [r for r in hub_env.requests if r[1].startswith("/api/")]
    assert api_calls and all(auth == f"Bearer {TOKEN}" for m, p, auth in api_calls
                             if p != "/api/validate-yaml")
    assert not any(TOKEN in p for _, p, _ in hub_env.requests)
    assert hub.last_push(run)["url"] == result["url"]


def test_push_refuses_a_flagged_export_unless_forced(hub_env, run):
    from finetune import hub

    folder = run / "flagged-export"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "export.json").write_text(json.dumps({
        "run": run.name, "base_model": "x", "method": "lora", "flagged": ["gguf q8_0"],
        "exports": [{"name": "gguf q8_0", "kind": "q8_0", "path": "x-q8_0.gguf"}]}))
    with pytest.raises(hub.HubError, match="flagged gguf q8_0"):
        hub.push(run, "flagged", folder=folder)
    assert f"model:{USER}/flagged" not in hub_env.repos


def test_a_bad_token_is_refused_with_what_to_do(hub_env, monkeypatch, run):
    from finetune import hub

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(hub.HubError, match="token is not valid") as e:
        hub.push(run, "x", folder=run / "export")
    assert "hf_wrong" not in str(e.value)


def test_chat_space_is_published_from_the_template(hub_env, run):
    from huggingface_hub import SpaceCard

    from finetune import fastdecode, hub

    if f"model:{USER}/contacts-tiny" not in hub_env.repos:
        hub.push(run, "contacts-tiny", merge=True, check=False)
    space = hub.publish_chat_space("contacts-tiny", system="Extract the contact.")
    assert space["url"] == f"{hub_env.url}/spaces/{USER}/contacts-tiny-chat"
    assert "private" in space["note"] and "HF_TOKEN" in space["note"]
    repo = hub_env.repos[f"space:{USER}/contacts-tiny-chat"]
    assert repo["sdk"] == "gradio" and not repo["private"]
    files = repo["files"]
    assert sorted(files) == ["README.md", "app.py", "chat_config.json", "fastdecode.py",
                             "packages.txt", "requirements.txt"]
    assert files["app.py"] == (hub.CHAT_TEMPLATE_DIR / "app.py").read_bytes()
    assert files["fastdecode.py"] == Path(fastdecode.__file__).read_bytes()  # the app's own
    assert files["packages.txt"].split() == [b"g++"]  # torch.compile's compiler
    settings = json.loads(files["chat_config.json"])
    assert settings["model"] == f"{USER}/contacts-tiny"
    assert settings["system"] == "Extract the contact."
    card = SpaceCard(files["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == [f"{USER}/contacts-tiny"]
    assert card.data.sdk_version == hub._gradio_pin()
    assert "$" not in files["README.md"].decode()
    _no_secrets(files)


@pytest.fixture
def space_dir(tiny_model, tmp_path, monkeypatch):
    """The chat Space's files for the tiny model, written as the Space holds them; its directory
    on sys.path as when the Space runs `python app.py`."""
    import sys

    from finetune import hub

    for name, data in hub.chat_space_files(str(tiny_model), system="Be brief.").items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("fastdecode", None)  # the Space's own copy, shipped beside app.py


def _space_app(space_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("chat_space_app", space_dir / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def test_the_chat_space_app_answers_with_a_local_model(space_dir):
    """The template's app.py, run as the Space runs it, loads the model and streams answers."""
    app = _space_app(space_dir)
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
               {"role": "assistant", "content": "Hello."}]
    assert app.messages_for("Who?", history, "Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who?"}]
    app.MAX_NEW_TOKENS = 8
    pieces = list(app.respond("Hi", [], "Be brief."))
    assert pieces and isinstance(pieces[-1], str)
    assert type(app.demo).__name__ == "ChatInterface"


def test_the_chat_space_stops_a_closed_answer_and_says_why_one_failed(space_dir, monkeypatch):
    """A stopped answer (the user pressed stop, or left) stops generating; an answer that fails
    tells the user so instead of ending as if complete."""
    import threading

    import gradio as gr

    app = _space_app(space_dir)
    app.MAX_NEW_TOKENS = 200
    real, made, done = app.model.generate, [], threading.Event()

    def generate(**kwargs):
        try:
            out = real(**kwargs)
            made.append(out.shape[1] - kwargs["input_ids"].shape[1])
            return out
        finally:
            done.set()

    monkeypatch.setattr(app.model, "generate", generate)
    answer = app.respond("Hi", [], "Be brief.")
    next(answer)
    answer.close()
    assert done.wait(60) and made and made[0] < 100  # not the 200 it was allowed

    def broken(**kwargs):
        raise RuntimeError("out of memory (test)")

    monkeypatch.setattr(app.model, "generate", broken)
    with pytest.raises(gr.Error, match="could not answer: RuntimeError: out of memory"):
        list(app.respond("Hi", [], "Be brief."))


def test_the_chat_space_decodes_compiled_on_a_cpu_as_the_app_does(space_dir, monkeypatch):
    """A Space on a CPU (the free kind) decodes with the app's compiled step after its first
    answer (`finetune.fastdecode`, shipped beside app.py), and answers the same."""
    import importlib

    import torch

    monkeypatch.delenv("FINETUNE_DECODE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model compiles faster on one thread
    try:
        fastdecode = importlib.import_module("fastdecode")
        assert fastdecode.__file__ == str(space_dir / "fastdecode.py")
        monkeypatch.setattr(fastdecode, "MIN_PARAMS", 0)  # the tiny model is below it
        app = _space_app(space_dir)
        app.MAX_NEW_TOKENS = 12
        first = list(app.respond("What is two plus two?", [], "Be brief."))[-1]
        state = fastdecode.wait(app.model)
        assert state is not None and not state.failed and list(state.ready) == [512]
        again = list(app.respond("What is two plus two?", [], "Be brief."))[-1]
        assert again == first and state.compiled_answers == 1
    finally:
        torch.set_num_threads(threads)


def test_no_token_says_where_to_put_one(monkeypatch):
    import huggingface_hub

    from finetune import hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setenv("SPACE_ID", "ana/finetune")
    with pytest.raises(hub.HubError, match="secret HF_TOKEN in this Space's settings"):
        hub.get_token()


def test_share_tab_builds_shows_the_saved_export_and_refuses_visitors(hub_env, run, monkeypatch):
    import gradio as gr

    from finetune import hub
    from finetune.ui import share_tab

    if not (run / "export" / "export.json").is_file():
        hub.push(run, "contacts-tiny", merge=True, check=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("FINETUNE_HOME", str(run.parent.parent))  # the page names runs
    with gr.Blocks() as demo:
        with gr.Tab("Share"):
            share_tab.build_share_tab()
    assert demo is not None
    summary, checks, table, pushed, repo, space = share_tab.show_saved(run.name)
    assert summary.startswith("Exported ") and "merged" in summary
    assert "`model.safetensors` (" in summary
    assert "Pushed to [ana/contacts-tiny]" in pushed and repo == "ana/contacts-tiny"
    assert space == "contacts-tiny-chat"
    # on a Space, the app's guard refuses a visitor who is not the owner
    from finetune.ui.guard import Guard

    monkeypatch.setenv("SPACE_ID", "ana/finetune")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "ana")
    for handler in (share_tab.do_export, share_tab.do_push, share_tab.do_space):
        with pytest.raises(gr.Error, match="Only the owner"):
            Guard().wrap(handler)(None, run.name, "x", "", True, False)


def test_chat_space_for_a_gguf_only_repository_loads_the_gguf_file(hub_env):
    from finetune import hub

    api = hub.api(TOKEN)
    api.create_repo(f"{USER}/only-gguf", private=False)
    files = [("m-f16.gguf", b"GGUF"), ("m-q8_0.gguf", b"GGUF"), ("Modelfile", b"FROM ./m.gguf")]
    hub._upload(api, f"{USER}/only-gguf", "model", files, "gguf", lambda f, d: None)
    space = hub.publish_chat_space("only-gguf")
    files = hub_env.repos[f"space:{USER}/only-gguf-chat"]["files"]
    assert json.loads(files["chat_config.json"])["gguf_file"] == "m-q8_0.gguf"
    assert space["note"] == ""  # a public model needs no token


def test_the_card_says_how_to_run_gguf_files_with_llama_cpp_and_ollama():
    from finetune import card

    manifest = {"exports": [{"name": "gguf f16", "kind": "f16", "path": "run-f16.gguf"},
                            {"name": "gguf q8_0", "kind": "q8_0", "path": "run-q8_0.gguf"}],
                "modelfile": "Modelfile"}
    text = card.usage_section("ana/x", manifest)
    assert "llama-cli -hf ana/x:Q8_0" in text and "llama-cli -m run-q8_0.gguf" in text
    assert "ollama run hf.co/ana/x:Q8_0" in text and "ollama create my-model -f Modelfile" in text
    assert "LM Studio" in text and "AutoPeftModelForCausalLM" not in text


def test_cli_push_from_an_export_and_publish_a_space(hub_env, run, capsys):
    from finetune import hub
    from finetune.cli import main

    if not (run / "export" / "export.json").is_file():
        hub.push(run, "contacts-tiny", merge=True, check=False)
    capsys.readouterr()
    assert main(["push", str(run), "--repo", "cli-push", "--from", str(run / "export"),
                 "--public", "--space", "cli-chat"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == [f"{hub_env.url}/{USER}/cli-push",
                               f"{hub_env.url}/spaces/{USER}/cli-chat"]
    assert "uploading" in out.err and TOKEN not in out.err + out.out
    assert not hub_env.repos[f"model:{USER}/cli-push"]["private"]
    assert json.loads(hub_env.repos[f"space:{USER}/cli-chat"]["files"]["chat_config.json"])[
        "model"] == f"{USER}/cli-push"
