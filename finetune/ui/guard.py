"""The one guard on every handler: after the app is built, `Guard.protect(demo)` wraps every
function the page (or any HTTP caller) can trigger. A handler runs for the owner; for a visitor
only when it is marked `@for_visitors`. Everything else is refused on the server with a message,
whatever hides or shows the buttons.

    python app.py      # app.py builds the tabs, then calls Guard().protect(demo)

Handlers that declare a `caller` parameter get the `finetune.access.Caller` of the request (who
it is, where from, and the app's gate with the visitor limits).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from dataclasses import dataclass

import gradio as gr

from finetune import access
from finetune.ui.common import user_errors

VISITORS = "_finetune_for_visitors"
AUTOMATIC = {"load", "then", "success", "change", "tick", "select"}  # not a person's action
log = logging.getLogger(__name__)


def for_visitors(fn):
    """Mark a handler that visitors may trigger too (chat, pickers, who-am-I)."""
    setattr(fn, VISITORS, True)
    return fn


@dataclass(frozen=True)
class Caller:
    who: access.Identity
    client: str  # the address the request came from (for the visitors' rate limit)
    session: str  # the page's session
    gate: access.Gate


class Guard:
    def __init__(self, gate: access.Gate | None = None):
        self.gate = gate or access.Gate()
        self._owner_sessions: set[str] = set()  # pages signed in with the owner password
        self._lock = threading.Lock()

    # --- who is calling -----------------------------------------------------------------------

    def caller(self, request: gr.Request | None) -> Caller:
        session = getattr(request, "session_hash", None) or ""
        with self._lock:
            password_ok = session in self._owner_sessions
        who = access.identify(_hf_user(request), password_ok, access.server_host())
        return Caller(who, client_address(request), session, self.gate)

    def api_caller(self, request) -> tuple:
        """(identity, gate, client) of a plain HTTP request (finetune.api)."""
        caller = self.caller(request)
        return caller.who, caller.gate, caller.client

    def sign_in(self, session: str, password: str) -> bool:
        """Mark this page as the owner's when the password is right."""
        if not session or not access.password_matches(password):
            return False
        with self._lock:
            self._owner_sessions.add(session)
        return True

    # --- wrapping every handler ----------------------------------------------------------------

    def protect(self, demo: gr.Blocks) -> gr.Blocks:
        for block_fn in demo.fns.values():
            if block_fn.fn is None or getattr(block_fn, "is_cancel_function", False) or \
                    getattr(block_fn.fn, "__module__", "").startswith("gradio."):
                continue  # a cancel, or Gradio's own plumbing (the login button's session check)
            # Refused quietly when it can fire by itself (page load, a chained step): a
            # visitor never sees the owner's buttons, so only such events reach them.
            events = {event for _, event in (block_fn.targets or [])}
            quiet = not events or bool(events & AUTOMATIC)
            block_fn.fn = self.wrap(block_fn.fn, quiet)
        return demo

    def wrap(self, fn, quiet: bool = False):
        """fn with the access check in front; visitors refused unless fn is for_visitors.
        `quiet`: a refusal of an automatic event (page load, a chained step) shows no toast."""
        visitors = getattr(fn, VISITORS, False)
        params = inspect.signature(fn).parameters
        wants_caller = "caller" in params
        request_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                          annotation=gr.Request)
        signature = inspect.signature(fn).replace(parameters=[
            request_param, *[p for name, p in params.items() if name != "caller"]])

        def check(request):
            caller = self.caller(request)
            if not (visitors or caller.who.owner):
                message = access.OWNER_ONLY.format(how=caller.who.how)
                log.info("refused %s for a visitor (%s)", getattr(fn, "__name__", "?"),
                         caller.client)
                raise gr.Error(message, visible=not quiet, print_exception=False)
            return {"caller": caller} if wants_caller else {}

        shown = user_errors(fn)  # library errors as gr.Error, scrubbed of secrets
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def guarded(request, *args, **kwargs):
                extra = check(request)
                yield from shown(*args, **kwargs, **extra)
        else:
            @functools.wraps(fn)
            def guarded(request, *args, **kwargs):
                extra = check(request)
                return shown(*args, **kwargs, **extra)

        guarded.__signature__ = signature  # what Gradio reads (it stops here, not at __wrapped__)
        guarded.__annotations__ = {"request": gr.Request}
        return guarded


def _hf_user(request: gr.Request | None) -> str | None:
    """The Hugging Face user signed in on this session (Space mode), from the signed session
    cookie that Gradio's OAuth routes set; None when nobody is."""
    if request is None:
        return None
    try:
        from gradio.oauth import _get_valid_oauth_info_from_session

        info = _get_valid_oauth_info_from_session(request.session)
    except Exception:  # noqa: BLE001 - no session middleware (off a Space): nobody signed in
        return None
    return (info or {}).get("userinfo", {}).get("preferred_username")


def client_address(request) -> str:
    """Where a request came from: behind a Space's proxy the first forwarded address."""
    if request is None:
        return ""
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "")
    if forwarded:
        return forwarded.split(",")[0].strip()
    client = getattr(request, "client", None)
    return getattr(client, "host", "") or ""
