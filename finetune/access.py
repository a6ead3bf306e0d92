"""Who may do what on a shared app: the owner trains; visitors chat, within limits.

    SPACE_ID=... SPACE_AUTHOR_NAME=me python app.py     # Space mode: sign in with Hugging Face
    GRADIO_SERVER_NAME=0.0.0.0 FINETUNE_OWNER_PASSWORD=... python app.py   # beyond this machine

Roles. On a Space (SPACE_ID set) the owner is whoever signed in with Hugging Face as
SPACE_AUTHOR_NAME or as a name listed in FINETUNE_OWNERS (comma-separated). Off a Space the
person at this machine is the owner, unless the app listens beyond it: then the owner is whoever
signs in with FINETUNE_OWNER_PASSWORD (no password set: nobody). Everyone else is a visitor, who
may chat with the runs the owner offers and with the base model, and nothing else.

The checks live in one `Gate` per app, which the UI's guard and the OpenAI-style API both use:
the same limits, the same queue, the same rate limit for a visitor wherever they come from.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from finetune.errors import AccessError, ConfigError, LimitError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
OWNER_ONLY = ("Only the owner of this app can do this: visitors may chat with the published "
              "model. {how}")


@dataclass(frozen=True)
class Identity:
    name: str  # the Hugging Face user name, "owner", or "" for an anonymous visitor
    owner: bool
    how: str  # in words, for the page: who you are and what you may do


def _lim(default: int, help: str, env: str, low: int, high: int):
    return field(default=default, metadata={"help": help, "env": env, "min": low, "max": high})


@dataclass(frozen=True)
class Limits:
    """What a visitor may ask for; the owner sets them with these environment variables (Space
    variables on a Space). The defaults suit a free CPU Space."""

    max_input_chars: int = _lim(2000, "Longest message (all turns together, in characters).",
                                "FINETUNE_VISITOR_MAX_INPUT_CHARS", 1, 1_000_000)
    max_new_tokens: int = _lim(256, "Longest answer in tokens (asking for more gets this many).",
                               "FINETUNE_VISITOR_MAX_NEW_TOKENS", 1, 8192)
    concurrent: int = _lim(2, "Answers generated at once for visitors; more wait in a queue.",
                           "FINETUNE_VISITOR_CONCURRENT", 1, 64)
    queue_wait_s: int = _lim(60, "How long a visitor's request waits for its turn.",
                             "FINETUNE_VISITOR_QUEUE_WAIT_S", 1, 3600)
    per_minute: int = _lim(10, "Messages one visitor may send per minute.",
                           "FINETUNE_VISITOR_PER_MINUTE", 1, 10_000)

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Limits":
        environ = os.environ if environ is None else environ
        values, problems = {}, []
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or not raw.strip():
                continue
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{f.metadata['env']}: expected a whole number, got {raw!r}")
                continue
            if not f.metadata["min"] <= value <= f.metadata["max"]:
                problems.append(f"{f.metadata['env']}: {value} is outside "
                                f"{f.metadata['min']}..{f.metadata['max']}")
            values[f.name] = value
        if problems:
            raise ConfigError("Invalid visitor limits:\n  - " + "\n  - ".join(problems))
        return cls(**values)


# --- who is the owner ----------------------------------------------------------------------------


def on_space(environ: dict | None = None) -> bool:
    return bool((os.environ if environ is None else environ).get("SPACE_ID"))


def owner_names(environ: dict | None = None) -> set[str]:
    environ = os.environ if environ is None else environ
    names = {n.strip().lower() for n in environ.get("FINETUNE_OWNERS", "").split(",")}
    names.add(environ.get("SPACE_AUTHOR_NAME", "").strip().lower())
    return {n for n in names if n}


def server_host() -> str:
    """The address the app listens on (Gradio's own setting; this machine only by default)."""
    return os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")


def listens_beyond_this_machine(host: str | None) -> bool:
    return (host or "").strip() not in LOCAL_HOSTS


def password_matches(given: str | None, environ: dict | None = None) -> bool:
    """Whether `given` is FINETUNE_OWNER_PASSWORD (compared in constant time); never when no
    password is set."""
    expected = (os.environ if environ is None else environ).get("FINETUNE_OWNER_PASSWORD", "")
    return bool(expected) and hmac.compare_digest((given or "").encode(), expected.encode())


def identify(hf_user: str | None, password_ok: bool, host: str | None,
             environ: dict | None = None) -> Identity:
    """Who a caller is, from what the server knows: the Hugging Face user signed in on this
    session (Space mode), whether this session gave the owner password, and the address the app
    listens on."""
    environ = os.environ if environ is None else environ
    if on_space(environ):
        owners = owner_names(environ)
        if hf_user and hf_user.strip().lower() in owners:
            return Identity(hf_user, True, f"Signed in as {hf_user}: you own this app.")
        who = f"Signed in as {hf_user}" if hf_user else "Not signed in"
        return Identity(hf_user or "", False, f"{who}: you may chat with the published model. "
                        "The owner signs in with Hugging Face to train.")
    if not listens_beyond_this_machine(host):
        return Identity("owner", True, "Running on this machine: you own this app.")
    if password_ok:
        return Identity("owner", True, "Signed in with the owner password: you own this app.")
    how = ("The owner signs in with the owner password." if environ.get("FINETUNE_OWNER_PASSWORD")
           else "No owner password is set (FINETUNE_OWNER_PASSWORD), so nobody can train here.")
    return Identity("", False, f"You may chat with the published model. {how}")


def require_owner(who: Identity) -> None:
    if not who.owner:
        raise AccessError(OWNER_ONLY.format(how=who.how))


# --- limits for visitors -------------------------------------------------------------------------


class Gate:
    """One per app: the limits, the visitors' queue and their rate limit."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits.from_env()
        self._slots = threading.BoundedSemaphore(self.limits.concurrent)
        self._recent: dict[str, deque] = {}
        self._lock = threading.Lock()

    def admit(self, who: Identity, client: str, text_chars: int, settings):
        """The generation settings a caller gets (a visitor's max new tokens capped), or a
        LimitError that says which limit and what to do. The owner has no limits."""
        if who.owner:
            return settings
        lim = self.limits
        if text_chars > lim.max_input_chars:
            raise LimitError(f"The message is too long for a visitor: {text_chars:,} characters, "
                             f"at most {lim.max_input_chars:,}. Shorten it, or clear the chat.")
        self.throttle(client)
        if settings.max_new_tokens > lim.max_new_tokens:
            settings = dataclasses.replace(settings, max_new_tokens=lim.max_new_tokens)
        return settings

    def throttle(self, client: str) -> None:
        """Count one request of a visitor at `client`; LimitError past `per_minute`."""
        client = client or "anonymous"
        now = time.monotonic()
        with self._lock:
            recent = self._recent.setdefault(client, deque())
            while recent and now - recent[0] > 60:
                recent.popleft()
            if len(recent) >= self.limits.per_minute:
                wait = 60 - (now - recent[0])
                raise LimitError(f"Too many messages: a visitor may send "
                                 f"{self.limits.per_minute} a minute. Try again in "
                                 f"{max(1, round(wait))} s.")
            recent.append(now)
            if len(self._recent) > 10_000:  # forget the quiet ones rather than grow forever
                for key in [k for k, v in self._recent.items() if not v or now - v[-1] > 60]:
                    del self._recent[key]

    def slot(self, who: Identity) -> "_Slot":
        """A context manager around one generation: visitors wait for one of `concurrent`
        places (queue_wait_s at most, then LimitError); the owner never waits."""
        return _Slot(None if who.owner else self._slots, self.limits.queue_wait_s)


class _Slot:
    def __init__(self, semaphore: threading.BoundedSemaphore | None, wait_s: float):
        self.semaphore, self.wait_s = semaphore, wait_s

    def __enter__(self):
        if self.semaphore is not None and not self.semaphore.acquire(timeout=self.wait_s):
            raise LimitError(f"Too many people are chatting right now (all answer places were "
                             f"busy for {self.wait_s:.0f} s). Try again in a minute.")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.semaphore is not None:
            self.semaphore.release()


# --- secrets ---------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_KEY", re.IGNORECASE)


def secret_values(environ: dict | None = None) -> list[str]:
    """Values of the environment's secrets (by name: *TOKEN*, *SECRET*, *PASSWORD*, *API_KEY*),
    longest first; short values are left out (they would blank out ordinary words)."""
    environ = os.environ if environ is None else environ
    found = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v or "") >= 8}
    return sorted(found, key=len, reverse=True)


def scrub(text: str, extra: list[str] | None = None) -> str:
    """`text` with every secret value replaced by '***' (errors, logs, cards pass through it)."""
    for value in [*(extra or []), *secret_values()]:
        if value:
            text = text.replace(value, "***")
    return text


def trust_remote_code() -> bool:
    """Models may run their own code only when the owner turns it on (FINETUNE_TRUST_REMOTE_CODE=1)."""
    return os.environ.get("FINETUNE_TRUST_REMOTE_CODE", "").strip().lower() in ("1", "true", "yes")
