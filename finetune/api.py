"""An OpenAI-compatible API beside the app: the official `openai` client works against it as it is.

    python app.py      # serves the page and, beside it:
    curl http://127.0.0.1:7860/v1/models
    curl http://127.0.0.1:7860/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "RUN_NAME", "messages": [{"role": "user", "content": "Hi"}]}'

`GET /v1/models` lists what the caller may chat with (the runs offered to visitors, by name, and
the base model); `POST /v1/chat/completions` answers, streamed as server-sent events with
`"stream": true`. Callers are identified like the page's (on a Space, visitors), and the same
gate applies: visitors' limits, queue and rate limit (finetune.access).
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (Request).
import json
import time
import uuid
from typing import Any, Callable

from finetune.errors import AccessError, ConfigError, FinetuneError, LimitError, RunError

# field of the request -> GenerationSettings field
SETTINGS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
            "temperature": "temperature", "top_p": "top_p", "stop": "stop",
            "repetition_penalty": "repetition_penalty"}
STATUS = {AccessError: (403, "permission_error"), LimitError: (429, "rate_limit_error"),
          RunError: (404, "not_found_error")}


def models_list(owner: bool) -> dict:
    from finetune import chat
    from finetune.config import DEFAULT_MODEL

    runs = [(r.name, int(r.stat().st_mtime)) for r in chat.offered_runs(owner)]
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "finetune"}
        for name, created in [*runs, (DEFAULT_MODEL, 0)]]}


def choice_for(model: str, owner: bool) -> str:
    """The Chat tab's choice for an API model id: an offered run by name, else a model."""
    from finetune import chat

    names = {r.name for r in chat.offered_runs(owner)}
    return model if model in names else chat.MODEL_PREFIX + model


def settings_from(body: dict):
    from finetune.config import GenerationSettings

    given = {SETTINGS[k]: v for k, v in body.items() if k in SETTINGS and v is not None}
    if isinstance(given.get("stop"), str):
        given["stop"] = [given["stop"]]
    return GenerationSettings.from_dict(given, source="request")


def completion(body: dict, who, gate, client: str) -> Callable[[], Any]:
    """Check the request and return what answers it: a function giving the whole response, or
    (stream) an iterator of server-sent events. Errors here are the caller's (FinetuneError)."""
    from finetune import chat, generation

    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not model:
        raise ConfigError("'model' is required: one of the ids GET /v1/models lists.")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("'messages' is required: a list of {role, content} ending with the "
                          "user's.")
    choice = choice_for(model, who.owner)
    (target,) = chat.targets(choice, chat.TUNED, owner=who.owner)
    # A run answers best with the system prompt it trained with, as the Chat tab suggests.
    system = "" if any(m.get("role") == "system" for m in messages if isinstance(m, dict)) \
        else chat.system_for(choice, owner=who.owner) or ""
    history = generation.to_messages(messages, system)
    written = sum(len(m["content"]) for m in history) - len(system)  # the caller's own text
    settings = gate.admit(who, client, written, settings_from(body))
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def pieces():
        with gate.slot(who):
            yield from chat.stream_reply(target, history, settings=settings, log=lambda *a: None)

    def chunk(delta: dict, finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

    def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            for piece in pieces():
                yield chunk({"content": piece})
        except FinetuneError as e:  # after the headers went out: say it in the stream
            yield "data: " + json.dumps(error_body(e)[1]) + "\n\n"
            return
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"

    def whole() -> dict:
        text = "".join(pieces())
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}

    return events if body.get("stream") else whole


def error_body(e: Exception) -> tuple[int, dict]:
    from finetune.access import scrub

    status, kind = next((v for k, v in STATUS.items() if isinstance(e, k)),
                        (400, "invalid_request_error"))
    return status, {"error": {"message": scrub(str(e)), "type": kind, "code": status}}


def router(caller_of: Callable[[Any], tuple]):
    """The FastAPI routes; `caller_of(request)` gives (identity, gate, client address)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    api = APIRouter()

    @api.get("/v1/models")
    def list_models(request: Request):
        who, _, _ = caller_of(request)
        return models_list(who.owner)

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return refusal(ConfigError("The body must be a JSON object (the OpenAI chat format)."))
        who, gate, client = caller_of(request)
        try:
            answer = await run_in_threadpool(completion, body, who, gate, client)
            if body.get("stream"):
                return StreamingResponse(answer(), media_type="text/event-stream")
            return await run_in_threadpool(answer)
        except FinetuneError as e:
            return refusal(e)

    def refusal(e: FinetuneError):
        status, content = error_body(e)
        return JSONResponse(content, status_code=status)

    return api
