"""Token lengths, their histogram with the cut-off marked, and one example rendered as the model
sees it (chat template applied, the tokens that carry loss marked).

Counting uses the `tokenizers` library directly (no transformers import), so `data inspect` stays
fast on 100,000 rows; without a prepared tokenizer it estimates (and says so).

    python -m finetune data inspect my.jsonl --max-length 512
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

EXACT_ROWS = 4000  # up to this many rows are all tokenized exactly (BPE: ~100 us a row here)
SAMPLE_ROWS = 2000  # larger files: rows tokenized exactly to measure tokens per character
CHARS_PER_TOKEN = 3.5  # measured on the samples with SmolLM2: 2.8 (JSON, names) to 4.2 (prose)
EST_TOKENS_PER_TURN = 5  # ChatML: <|im_start|>role\n ... <|im_end|>\n
FITS, TRUNCATED = "fits", "longer than max length (truncated)"  # histogram bar colours
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def default_tokenizer_dir() -> Path | None:
    """The bundled model's tokenizer when it is already prepared; never downloads."""
    from finetune import models

    path = models.bundled_dir()
    return path if (path / "tokenizer.json").is_file() else None


class TokenCounter:
    """Token lengths per normalized row: exact tokenizer counts of the text, plus the chat
    template's tokens per turn measured once per pattern of roles; or an estimate."""

    def __init__(self, tokenizer_dir: str | Path | None = None):
        self.tokenizer = None
        self.template = None
        self.bos = self.eos = ""
        self._overhead: dict[tuple, int] = {}
        self.estimated_rows = 0
        self.total_rows = 0
        self.description = (f"an estimate (~{CHARS_PER_TOKEN:g} characters a token; the bundled "
                            "model's tokenizer is not prepared yet: python -m finetune models)")
        if tokenizer_dir is None:
            return
        from tokenizers import Tokenizer

        tokenizer_dir = Path(tokenizer_dir)
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - an unreadable tokenizer must not stop inspection
            self.description = (f"an estimate (~{CHARS_PER_TOKEN:g} characters a token; the "
                                f"tokenizer in {tokenizer_dir} could not be read: {e})")
            return
        settings = _read_json(tokenizer_dir / "tokenizer_config.json")
        self.eos = _token(settings.get("eos_token"))
        self.bos = _token(settings.get("bos_token"))
        self.template = _chat_template(tokenizer_dir, settings)
        self.description = f"the tokenizer of {tokenizer_dir.name}"

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None and self.estimated_rows == 0

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
            counts = self._encode(texts)
            self.estimated_rows = 0
        else:
            counts = self._sampled(texts, max_length)
        return [n + self._extra(r) for n, r in zip(counts, rows)]

    def _encode(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def _sampled(self, texts: list[str], max_length: int | None) -> list[int]:
        import random

        exact = dict.fromkeys(random.Random(0).sample(range(len(texts)), SAMPLE_ROWS))
        measured = self._encode([texts[i] for i in exact])
        ratio = sum(measured) / max(1, sum(len(texts[i]) for i in exact))
        counts = [math.ceil(len(t) * ratio) for t in texts]
        for i, n in zip(exact, measured):
            counts[i] = n
        if max_length:
            near = sorted((i for i, n in enumerate(counts)
                           if 0.75 * max_length <= n <= 1.33 * max_length and i not in exact),
                          key=lambda i: abs(counts[i] - max_length))[:SAMPLE_ROWS]
            for i, n in zip(near, self._encode([texts[i] for i in near])):
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
            rendered = render_template(self.template, messages, bos=self.bos, eos=self.eos)
        except Exception:  # noqa: BLE001 - a template we cannot render: fall back to the estimate
            return EST_TOKENS_PER_TURN * len(roles)
        encode = self.tokenizer.encode
        return len(encode(rendered, add_special_tokens=False).ids) - \
            len(encode("\n".join("x" for _ in roles), add_special_tokens=False).ids)


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


def length_stats(lengths: list[int], max_length: int | None) -> dict:
    if not lengths:
        return {}
    s = sorted(lengths)

    def pct(q):
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    out = {"min": s[0], "median": pct(0.5), "p95": pct(0.95), "max": s[-1],
           "mean": round(sum(s) / len(s), 1), "total": sum(s)}
    if max_length:
        out["max_length"] = max_length
        out["longer"] = sum(1 for n in s if n > max_length)
    return out


def histogram(lengths: list[int], max_length: int | None = None, bins: int = 24):
    """A DataFrame for gr.BarPlot: one row per bin ('tokens' label, 'rows' count) in order, and
    'part' saying whether the bin fits within max_length or would be truncated. The cut-off is
    always a bin edge; bins above it have the same width, the far tail folded into the last."""
    import pandas as pd

    if not lengths:
        return pd.DataFrame({"tokens": [], "rows": [], "part": []})
    low, top = min(lengths), max(lengths)
    edge = max_length if max_length and max_length < top else top
    width = max(1, math.ceil((edge - low + 1) / bins))
    first = math.ceil((low - edge) / width)
    last = min(math.ceil((top - edge) / width), bins)
    counts = Counter(min(math.ceil((n - edge) / width), last) for n in lengths)
    labels, rows, parts = [], [], []
    for k in range(first, last + 1):
        lo, hi = edge + (k - 1) * width + 1, edge + k * width
        labels.append(f"{lo}+" if k == last and top > hi else (str(hi) if lo == hi else f"{lo}-{hi}"))
        rows.append(counts.get(k, 0))
        parts.append(TRUNCATED if k > 0 else FITS)
    return pd.DataFrame({"tokens": labels, "rows": rows, "part": parts})


# --- one example as the model sees it ----------------------------------------------------------


def render_example(row: dict, tokenizer=None, max_length: int | None = None) -> dict:
    """The row through the chat template, as spans [(text, label)] for gr.HighlightedText.

    Labels: None for context (no loss), "loss" for the tokens the model is trained to write (the
    last assistant turn, as TRL's prompt/completion masking does), "cut" beyond max_length.
    With a transformers tokenizer the counts are exact; without one, ChatML text is shown and
    the split is by characters.
    """
    if tokenizer is None:
        return _render_estimate(row, max_length)
    if "text" in row:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        prompt_len = 0
    else:
        messages = row["messages"]
        prompt_ids = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        ids = _chat_ids(tokenizer, messages)
        prompt_len = 0
        while prompt_len < min(len(ids), len(prompt_ids)) and ids[prompt_len] == prompt_ids[prompt_len]:
            prompt_len += 1
    cut = len(ids) if not max_length else min(len(ids), max_length)
    bounds = [(0, min(prompt_len, cut), None), (min(prompt_len, cut), cut, "loss"),
              (cut, len(ids), "cut")]
    spans = [(tokenizer.decode(ids[a:b]), label) for a, b, label in bounds if b > a]
    return {"spans": spans, "tokens": len(ids), "loss_tokens": max(0, cut - prompt_len),
            "truncated": len(ids) - cut, "exact": True}


def _chat_ids(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tokenize=True, return_dict=True)
    return list(out["input_ids"])


def _render_estimate(row: dict, max_length: int | None) -> dict:
    if "text" in row:
        prompt, full = "", row["text"]
    else:
        prompt = render_template(CHATML, row["messages"][:-1], add_generation_prompt=True)
        full = render_template(CHATML, row["messages"])
    cut_at = len(full) if not max_length else min(len(full), int(max_length * CHARS_PER_TOKEN))
    bounds = [(0, min(len(prompt), cut_at), None), (min(len(prompt), cut_at), cut_at, "loss"),
              (cut_at, len(full), "cut")]
    spans = [(full[a:b], label) for a, b, label in bounds if b > a]
    est = math.ceil
    return {"spans": spans, "tokens": est(len(full) / CHARS_PER_TOKEN),
            "loss_tokens": est(max(0, cut_at - len(prompt)) / CHARS_PER_TOKEN),
            "truncated": est((len(full) - cut_at) / CHARS_PER_TOKEN), "exact": False}


def load_preview_tokenizer(path: str | Path):
    """A transformers tokenizer with its chat template, for render_example (imports transformers)."""
    from finetune import models

    path = Path(path)
    return models.load_tokenizer(models.ModelSource("local", str(path), path.name))


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
