"""The one token counter: tokens per row as training sees them, the tokens that carry the loss,
and one row rendered through the chat template with those tokens marked.

Planning (`finetune.plan`), the Data tab, `data inspect` and evaluation all count with it.
It uses the `tokenizers` library and the model's Jinja chat template directly (no transformers
import), so `data inspect` stays fast on 100,000 rows; without a tokenizer it estimates (and
says so).

    python -m finetune data inspect my.jsonl --max-length 512
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from finetune.data.types import prompt_and_answer

EXACT_ROWS = 4000  # up to this many rows are all tokenized exactly (BPE: ~100 us a row here)
SAMPLE_ROWS = 2000  # larger files: rows tokenized exactly to measure tokens per character
CHARS_PER_TOKEN = 3.5  # measured on the samples with SmolLM2: 2.8 (JSON, names) to 4.2 (prose)
EST_TOKENS_PER_TURN = 5  # ChatML: <|im_start|>role\n ... <|im_end|>\n
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class TokenCounter:
    """Token lengths per normalized row: exact tokenizer counts of the text, plus the chat
    template's tokens per turn measured once per pattern of roles; or an estimate.

    `TokenCounter(folder)` reads tokenizer.json and the chat template from a model folder
    (None: estimate); `TokenCounter.from_tokenizer(tok)` wraps a loaded transformers tokenizer."""

    def __init__(self, tokenizer_dir: str | Path | None = None):
        self.tokenizer = None
        self.template = None
        self.folder = Path(tokenizer_dir) if tokenizer_dir is not None else None  # the model's
        self.bos = self.eos = ""
        self._overhead: dict[tuple, int] = {}
        self.estimated_rows = 0
        self.total_rows = 0
        self.description = (f"an estimate (~{CHARS_PER_TOKEN:g} characters a token; the model's "
                            "tokenizer is not at hand yet: python -m finetune models)")
        if tokenizer_dir is None:
            return
        from tokenizers import Tokenizer

        tokenizer_dir = Path(tokenizer_dir)
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - an unreadable tokenizer must not stop inspection
            self.description = (f"an estimate (~{CHARS_PER_TOKEN:g} characters a token; the "
                                f"tokenizer in {tokenizer_dir} could not be read: {e})")
            return
        settings = _read_json(tokenizer_dir / "tokenizer_config.json")
        self._use(tokenizer, _chat_template(tokenizer_dir, settings), _token(settings.get("bos_token")),
                  _token(settings.get("eos_token")), f"the tokenizer of {tokenizer_dir.name}")

    @classmethod
    def from_tokenizer(cls, tok, name: str = "the model") -> "TokenCounter":
        """A counter over a loaded transformers tokenizer (its fast backend and chat template)."""
        counter = cls(None)
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            counter._use(backend, tok.chat_template, tok.bos_token or "", tok.eos_token or "",
                         f"the tokenizer of {name}")
        return counter

    def _use(self, tokenizer, template, bos: str, eos: str, description: str) -> None:
        self.tokenizer, self.template, self.bos, self.eos = tokenizer, template, bos, eos
        self.description = description

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None and self.estimated_rows == 0

    # --- lengths ---------------------------------------------------------------------------------

    def lengths(self, rows: list[dict], max_length: int | None = None) -> list[int]:
        """Tokens per row. Large files: exact for SAMPLE_ROWS sampled rows and for the rows whose
        estimate lies near max_length (so the truncation count stays right); the others are
        estimated at the sample's tokens per character. `estimated_rows` says how many."""
        texts = [r["text"] if "text" in r else "\n".join(m["content"] for m in r["messages"])
                 for r in rows]
        self.total_rows = len(rows)
        if self.tokenizer is None:
            counts = [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
            self.estimated_rows = len(rows)
        elif len(texts) <= EXACT_ROWS:
            counts = self.encode_lengths(texts)
            self.estimated_rows = 0
        else:
            counts = self._sampled(texts, max_length)
        return [n + self._extra(r) for n, r in zip(counts, rows)]

    def lengths_and_cut(self, rows: list[dict],
                        choose_cut: Callable[[list[int]], int]) -> tuple[list[int], int]:
        """Lengths, and the max length `choose_cut` picks from them; for sampled files the rows
        near that cut are then counted exactly, so the truncation count is right."""
        lengths = self.lengths(rows)
        cut = choose_cut(lengths)
        if self.estimated_rows and self.tokenizer is not None:
            lengths = self.lengths(rows, cut)
        return lengths, cut

    def answer_lengths(self, rows: list[dict]) -> list[int]:
        """Tokens that carry the loss per row: the answer plus its end-of-turn token (the whole
        text plus EOS for text rows)."""
        texts = [r["text"] if "text" in r else prompt_and_answer(r)[1] for r in rows]
        return [n + 1 for n in self.encode_lengths(texts)]

    def encode_lengths(self, texts: list[str]) -> list[int]:
        """Tokens of each text alone (no template, no special tokens); estimated without a
        tokenizer."""
        if self.tokenizer is None:
            return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
        return [len(e.ids) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def _sampled(self, texts: list[str], max_length: int | None) -> list[int]:
        import random

        exact = dict.fromkeys(random.Random(0).sample(range(len(texts)), SAMPLE_ROWS))
        measured = self.encode_lengths([texts[i] for i in exact])
        ratio = sum(measured) / max(1, sum(len(texts[i]) for i in exact))
        counts = [math.ceil(len(t) * ratio) for t in texts]
        for i, n in zip(exact, measured):
            counts[i] = n
        if max_length:
            near = sorted((i for i, n in enumerate(counts)
                           if 0.75 * max_length <= n <= 1.33 * max_length and i not in exact),
                          key=lambda i: abs(counts[i] - max_length))[:SAMPLE_ROWS]
            for i, n in zip(near, self.encode_lengths([texts[i] for i in near])):
                counts[i] = n
                exact[i] = None
        self.estimated_rows = len(texts) - len(exact)
        return counts

    @property
    def note(self) -> str:
        """How the last lengths() call counted, for people."""
        if self.tokenizer is None or not self.estimated_rows:
            return self.description
        return (f"{self.description}: exact for {self.total_rows - self.estimated_rows:,} rows "
                f"(a sample, and all near the max length); the other {self.estimated_rows:,} "
                "estimated at the sample's tokens per character")

    def _extra(self, row: dict) -> int:
        if "text" in row:
            return 1  # the EOS token training appends
        roles = tuple(m["role"] for m in row["messages"])
        if roles not in self._overhead:
            self._overhead[roles] = self._measure(roles)
        return self._overhead[roles]

    def _measure(self, roles: tuple) -> int:
        """Template tokens for a conversation with these roles: render it with one-letter
        contents and subtract the contents' own tokens."""
        if self.tokenizer is None or not self.template:
            return EST_TOKENS_PER_TURN * len(roles)
        messages = [{"role": r, "content": "x"} for r in roles]
        try:
            rendered = self._render(messages)
        except Exception:  # noqa: BLE001 - a template we cannot render: fall back to the estimate
            return EST_TOKENS_PER_TURN * len(roles)
        return len(self._ids(rendered)) - len(self._ids("\n".join("x" for _ in roles)))

    # --- one row as the model sees it --------------------------------------------------------------

    def render(self, row: dict, max_length: int | None = None) -> dict:
        """The row through the chat template, as spans [(text, label)]: None for context (no
        loss), "loss" for the tokens the model is trained to write (the answer, as TRL's
        prompt/completion masking does), "cut" beyond max_length. Exact with a tokenizer and its
        template; otherwise ChatML text split by estimated characters."""
        if self.tokenizer is None or not self.template:
            return _render_estimate(row, max_length)
        ids, _, prompt_len = self.token_ids(row)
        cut = len(ids) if not max_length else min(len(ids), max_length)
        bounds = [(0, min(prompt_len, cut), None), (min(prompt_len, cut), cut, "loss"),
                  (cut, len(ids), "cut")]
        spans = [(self.decode(ids[a:b]), label) for a, b, label in bounds if b > a]
        return {"spans": spans, "tokens": len(ids), "loss_tokens": max(0, cut - prompt_len),
                "truncated": len(ids) - cut, "exact": True}

    def token_ids(self, row: dict) -> tuple[list[int], list[int], int]:
        """(ids of the row as training renders it, ids of its prompt as chat and evaluation send
        it, where the loss starts). The loss starts where the two part (TRL's
        `common_prefix_length`), and runs to the end of the row. Needs a tokenizer and a
        template. Text rows: the text plus EOS, all of it carrying loss."""
        if "text" in row:
            return self._ids(row["text"]) + self._ids(self.eos), [], 0
        prompt, answer = prompt_and_answer(row)
        prompt_ids = self._ids(self._render(prompt, add_generation_prompt=True))
        ids = self._ids(self._render(prompt + [{"role": "assistant", "content": answer}]))
        start = 0
        while start < min(len(ids), len(prompt_ids)) and ids[start] == prompt_ids[start]:
            start += 1
        return ids, prompt_ids, start

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        """The id of one token (e.g. the EOS string), None when the vocabulary lacks it."""
        return self.tokenizer.token_to_id(token) if self.tokenizer is not None and token else None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render_template(self.template, messages, add_generation_prompt, self.bos, self.eos)


def render_template(template: str, messages: list[dict], add_generation_prompt: bool = False,
                    bos: str = "", eos: str = "") -> str:
    """A chat template rendered the way transformers does it (sandboxed Jinja)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt)


def _render_estimate(row: dict, max_length: int | None) -> dict:
    if "text" in row:
        prompt, full = "", row["text"]
    else:
        messages, answer = prompt_and_answer(row)
        prompt = render_template(CHATML, messages, add_generation_prompt=True)
        full = render_template(CHATML, messages + [{"role": "assistant", "content": answer}])
    cut_at = len(full) if not max_length else min(len(full), int(max_length * CHARS_PER_TOKEN))
    bounds = [(0, min(len(prompt), cut_at), None), (min(len(prompt), cut_at), cut_at, "loss"),
              (cut_at, len(full), "cut")]
    spans = [(full[a:b], label) for a, b, label in bounds if b > a]
    est = math.ceil
    return {"spans": spans, "tokens": est(len(full) / CHARS_PER_TOKEN),
            "loss_tokens": est(max(0, cut_at - len(prompt)) / CHARS_PER_TOKEN),
            "truncated": est((len(full) - cut_at) / CHARS_PER_TOKEN), "exact": False}


# --- helpers -----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _token(value) -> str:
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def _chat_template(tokenizer_dir: Path, settings: dict) -> str | None:
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template
