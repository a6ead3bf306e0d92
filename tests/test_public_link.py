"""The public link: the app started in Space mode, called as an anonymous visitor and as the
signed-in owner, through gradio_client, plain HTTP and the official `openai` client."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from test_evaluate import make_run

CLIENT_SECRET = "test-oauth-client-secret"
AUTHOR = "the-owner"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owner_cookie() -> str:
    """The session cookie Gradio's OAuth routes set after the owner signs in with Hugging Face
    (signed with the secret the Space's OAuth settings give it): a mocked sign-in."""
    from itsdangerous import TimestampSigner

    session = {"oauth_info": {"access_token": "mock", "expires_at": int(time.time()) + 3600,
                              "userinfo": {"preferred_username": AUTHOR, "name": "Owner"}}}
    secret = hashlib.sha256((CLIENT_SECRET + "-v4").encode()).hexdigest()
    data = base64.b64encode(json.dumps(session).encode())
    return "session=" + TimestampSigner(secret).sign(data).decode()


@pytest.fixture(scope="module")
def space(tiny_model, tmp_path_factory):
    """The app as a Space would run it, over a home with one finished run and a secret file."""
    home = tmp_path_factory.mktemp("space")
    run = make_run(home, tiny_model, rows=2)
    secret = home / "secret.env"
    secret.write_text("HF_TOKEN=hf_never_show_this_123456\n")
    port = free_port()
    env = dict(os.environ, FINETUNE_HOME=str(home), SPACE_ID=f"{AUTHOR}/finetune",
               SPACE_AUTHOR_NAME=AUTHOR, SYSTEM="spaces", OAUTH_CLIENT_ID="test-client",
               OAUTH_CLIENT_SECRET=CLIENT_SECRET, OPENID_PROVIDER_URL="http://127.0.0.1:9",
               OAUTH_SCOPES="openid profile", GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), FINETUNE_VISITOR_PER_MINUTE="1000")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    import httpx

    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not start:\n" + proc.stdout.read())
    yield {"url": url, "home": home, "run": run, "secret": secret}
    proc.kill()
    proc.wait()


def client(url, owner=False):
    from gradio_client import Client

    headers = {"Cookie": owner_cookie()} if owner else None
    return Client(url, headers=headers, verbose=False)


def arguments(params: list[dict], text: str) -> list:
    """A value for each parameter: `text` wherever text is taken, something harmless elsewhere."""
    out = []
    for p in params:
        kind = p["python_type"]["type"]
        if kind == "str":
            out.append(text)
        elif kind in ("float", "int"):
            out.append(p.get("parameter_default") or 1)
        elif kind == "bool":
            out.append(False)
        elif kind.startswith("list") or kind.startswith("Dict") or kind.startswith("dict"):
            out.append([])
        else:
            out.append(None)
    return out


def test_an_anonymous_visitor_reads_no_file_starts_stops_nothing_but_chats(space):
    from gradio_client.exceptions import AppError

    before = sorted(p.name for p in (space["home"] / "runs").iterdir())
    status_before = (space["run"] / "status.json").read_text()
    visitor = client(space["url"])
    endpoints = visitor.view_api(return_format="dict", print_info=False)["named_endpoints"]
    refused = []
    for name, info in endpoints.items():
        if name in ("/send", "/send_1"):
            continue  # chat is for visitors: checked below with a real message
        try:
            result = visitor.predict(*arguments(info["parameters"], str(space["secret"])),
                                     api_name=name)
        except AppError as e:
            refused.append(name)
            assert "hf_never_show_this" not in str(e)
            continue
        assert "hf_never_show_this" not in json.dumps(result, default=str), name
    for owner_only in ("/start", "/stop_run", "/resume_run", "/run_evaluation", "/show",
                       "/prepare_tokenizer", "/check", "/offer"):
        assert owner_only in refused, owner_only
    assert sorted(p.name for p in (space["home"] / "runs").iterdir()) == before  # no new run
    assert (space["run"] / "status.json").read_text() == status_before  # nothing stopped

    # ... and chats, in the Chat tab and through the API, with the run offered by default.
    args = arguments(endpoints["/send"]["parameters"], "")
    args[0], args[4], args[5] = "hello", space["run"].name, "tuned"
    _, chat_window, _, _ = visitor.predict(*args, api_name="/send")
    assert chat_window[-1]["role"] == "assistant" and chat_window[-1]["content"]
    import httpx

    answer = httpx.post(space["url"] + "/v1/chat/completions", timeout=120, json={
        "model": space["run"].name, "max_tokens": 8,
        "messages": [{"role": "user", "content": "hello"}]}).json()
    assert answer["choices"][0]["message"]["role"] == "assistant"
    refusal = httpx.post(space["url"] + "/v1/chat/completions", timeout=60, json={
        "model": "../" + space["run"].name, "messages": [{"role": "user", "content": "hi"}]})
    assert refusal.status_code == 403 and "not" in refusal.json()["error"]["message"]


def test_the_visitor_sees_the_chat_and_who_they_are(space):
    intro, who = client(space["url"]).predict(api_name="/show_role")[:2]  # layout stays in the page
    assert "Not signed in" in who and "chat" in who and "Chat with a fine-tuned model" in intro
    owner_view = client(space["url"], owner=True).predict(api_name="/show_role")
    assert f"Signed in as {AUTHOR}: you own this app" in owner_view[1]


def test_the_signed_in_owner_starts_training(space, tiny_model, tiny_data):
    from finetune import config

    owner = client(space["url"], owner=True)
    params = owner.view_api(return_format="dict", print_info=False)[
        "named_endpoints"]["/start"]["parameters"]
    values = {**config.RunConfig().to_dict(), "model": str(tiny_model), "data": "sample:tickets",
              "max_steps": 2, "eval_steps": 2, "save_steps": 2, "batch_size": 2,
              "grad_accum": 1, "early_stopping": False, "method": "lora", "lora_r": 2}
    args = [values[p["label"].replace(" ", "_")] for p in params]  # widgets are labelled by field
    owner.predict(*args, api_name="/start")
    runs = [p for p in (space["home"] / "runs").iterdir() if p.name != space["run"].name]
    assert len(runs) == 1 and (runs[0] / "status.json").is_file()
    state = json.loads((runs[0] / "status.json").read_text())["state"]
    assert state in ("starting", "running", "completed"), state


def test_the_openai_client_streams_an_answer_from_a_tuned_run(space):
    import openai

    api = openai.OpenAI(base_url=space["url"] + "/v1", api_key="not-needed")
    ids = [m.id for m in api.models.list().data]
    assert space["run"].name in ids
    stream = api.chat.completions.create(model=space["run"].name, stream=True, max_tokens=8,
                                         messages=[{"role": "user", "content": "hello"}])
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1 and "".join(pieces).strip()
