"""Who may do what, the visitor limits, run names from the page, secrets kept out."""

import threading
import time

import pytest

from finetune import access
from finetune.config import GenerationSettings
from finetune.errors import AccessError, ConfigError, LimitError, RunError

SPACE = {"SPACE_ID": "me/finetune", "SPACE_AUTHOR_NAME": "Me", "FINETUNE_OWNERS": "ana, bo"}


def test_on_a_space_the_author_and_listed_owners_own_it_everyone_else_visits():
    assert access.identify("me", False, "0.0.0.0", SPACE).owner
    assert access.identify("Ana", False, "0.0.0.0", SPACE).owner
    visitor = access.identify("eve", True, "0.0.0.0", SPACE)  # a password means nothing here
    assert not visitor.owner and "Signed in as eve" in visitor.how
    anonymous = access.identify(None, False, "0.0.0.0", SPACE)
    assert not anonymous.owner and "Not signed in" in anonymous.how
    with pytest.raises(AccessError, match="Only the owner"):
        access.require_owner(anonymous)


def test_off_a_space_the_local_user_owns_it_unless_it_listens_beyond_this_machine():
    assert access.identify(None, False, "127.0.0.1", {}).owner
    assert not access.identify(None, False, "0.0.0.0", {}).owner
    env = {"FINETUNE_OWNER_PASSWORD": "correct horse"}
    assert access.identify(None, True, "0.0.0.0", env).owner
    assert access.password_matches("correct horse", env)
    assert not access.password_matches("wrong", env) and not access.password_matches("", {})
    assert "nobody can train" in access.identify(None, False, "0.0.0.0", {}).how


def visitor():
    return access.identify(None, False, "0.0.0.0", SPACE)


def test_visitor_limits_input_length_and_max_new_tokens():
    gate = access.Gate(access.Limits(max_input_chars=100, max_new_tokens=64))
    settings = GenerationSettings(max_new_tokens=2048)
    assert gate.admit(visitor(), "1.2.3.4", 100, settings).max_new_tokens == 64  # capped
    with pytest.raises(LimitError, match="too long for a visitor: 101 characters, at most 100"):
        gate.admit(visitor(), "1.2.3.4", 101, settings)
    owner = access.identify("me", False, "", SPACE)
    assert gate.admit(owner, "", 10**6, settings) is settings  # the owner has no limits


def test_visitor_rate_limit_is_per_visitor():
    gate = access.Gate(access.Limits(per_minute=2))
    settings = GenerationSettings()
    for _ in range(2):
        gate.admit(visitor(), "1.1.1.1", 5, settings)
    with pytest.raises(LimitError, match="may send 2 a minute. Try again in"):
        gate.admit(visitor(), "1.1.1.1", 5, settings)
    gate.admit(visitor(), "2.2.2.2", 5, settings)  # another visitor is not held up


def test_visitors_queue_for_a_limited_number_of_places():
    gate = access.Gate(access.Limits(concurrent=1, queue_wait_s=1))
    held = threading.Event()
    release = threading.Event()

    def busy():
        with gate.slot(visitor()):
            held.set()
            release.wait(10)

    threading.Thread(target=busy, daemon=True).start()
    held.wait(5)
    t0 = time.time()
    with pytest.raises(LimitError, match="Too many people are chatting"):
        with gate.slot(visitor()):
            pass
    assert 0.9 < time.time() - t0 < 5
    with gate.slot(access.identify("me", False, "", SPACE)):  # the owner never waits
        pass
    release.set()


def test_limits_come_from_the_environment_with_clear_errors():
    limits = access.Limits.from_env({"FINETUNE_VISITOR_MAX_NEW_TOKENS": "128"})
    assert limits.max_new_tokens == 128 and limits.concurrent == access.Limits().concurrent
    with pytest.raises(ConfigError, match="FINETUNE_VISITOR_PER_MINUTE: expected a whole number"):
        access.Limits.from_env({"FINETUNE_VISITOR_PER_MINUTE": "lots"})


def test_run_names_from_the_page_cannot_leave_the_runs_folder(finetune_home):
    from finetune import runinfo
    from finetune.config import RunConfig

    (finetune_home / "runs" / "mine").mkdir(parents=True)
    RunConfig().save(finetune_home / "runs" / "mine" / "config.yaml")
    outside = finetune_home / "elsewhere"
    outside.mkdir()
    RunConfig().save(outside / "config.yaml")
    assert runinfo.named_run("mine") == (finetune_home / "runs" / "mine").resolve()
    for name in ("..", "../elsewhere", str(outside), "/etc", "mine/../../elsewhere", "~"):
        with pytest.raises(RunError, match="not a run name"):
            runinfo.named_run(name)
    with pytest.raises(RunError, match="No run picked"):
        runinfo.named_run("")


def test_secrets_are_scrubbed_from_messages(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken1234567890")
    monkeypatch.setenv("MY_API_KEY", "sk-another-secret-value")
    text = access.scrub("failed with hf_FAKEtoken1234567890 and sk-another-secret-value")
    assert text == "failed with *** and ***"


def test_models_run_no_code_of_their_own_unless_the_owner_says_so(monkeypatch):
    monkeypatch.delenv("FINETUNE_TRUST_REMOTE_CODE", raising=False)
    assert not access.trust_remote_code()
    monkeypatch.setenv("FINETUNE_TRUST_REMOTE_CODE", "1")
    assert access.trust_remote_code()


def test_a_token_in_the_environment_lands_in_no_file_of_a_run(tiny_model, tiny_data, monkeypatch):
    """After a run, a failed run and an export, no file of the runs folder holds the token."""
    from finetune import config, export, jobs, paths, train

    token = "hf_FAKEtokenForTheTest0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    cfg = config.RunConfig(model=str(tiny_model), data=str(tiny_data), max_steps=2, eval_steps=2,
                           save_steps=2, batch_size=4, grad_accum=1, lora_r=2,
                           early_stopping=False)
    run_dir = jobs.prepare_run(cfg).run_dir
    assert train.run(run_dir)["state"] == "completed"
    export.export_run(run_dir, export.default_out(run_dir), merge=True, check=False)
    # a run that fails with the token in its error (as a library's HTTP error may show it)
    from finetune import models

    def refuse(*args, **kwargs):
        raise RuntimeError(f"401 Unauthorized for https://hub/api (Authorization: Bearer {token})")

    failed = jobs.prepare_run(cfg).run_dir
    monkeypatch.setattr(models, "load_model", refuse)
    status = train.run(failed)
    assert status["state"] == "failed" and "***" in status["error"]
    files = [p for p in paths.runs_dir().rglob("*") if p.is_file()]
    assert len(files) > 10
    leaked = [p for p in files if token.encode() in p.read_bytes()]
    assert leaked == []


def test_the_api_applies_the_visitor_limits_with_openai_style_errors(bundled_model):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from finetune import api
    from finetune.config import DEFAULT_MODEL

    gate = access.Gate(access.Limits(max_input_chars=20, per_minute=2))
    server = FastAPI()
    server.include_router(api.router(lambda request: (visitor(), gate, "9.9.9.9")))
    client = TestClient(server)
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [DEFAULT_MODEL]
    long = client.post("/v1/chat/completions", json={
        "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "x" * 21}]})
    assert long.status_code == 429 and "at most 20" in long.json()["error"]["message"]
    other = client.post("/v1/chat/completions", json={
        "model": "someone/else", "messages": [{"role": "user", "content": "hi"}]})
    assert other.status_code == 403 and "Visitors may chat with" in other.json()["error"]["message"]
    bad = client.post("/v1/chat/completions", content=b"not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
