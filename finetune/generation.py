"""Prompts through the chat template, batched greedy generation, completion-only loss, streaming.

    python -m finetune chat runs/NAME --prompt "..."   # streams an answer through `stream`
    python -m finetune eval runs/NAME                  # `generate_batch` and `completion_nll`

Shared by `finetune.evaluate` (batches), `finetune.chat` (streaming) and `finetune.bench.chat`.
Tokenization follows TRL: the template renders text, which is tokenized without extra special
tokens, so evaluation sees exactly the token sequences training saw. The callers set the CPU
thread count once per answer or evaluation (`hardware.use_inference_threads`), so nothing here
looks at runs.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Iterable, Iterator, Sequence

from finetune.config import GenerationSettings

Message = dict[str, str]


# --- messages -----------------------------------------------------------------------------------


def flatten_content(content: Any) -> str:
    """Text of a message's content: a string, or Gradio 6's list of blocks ({'type': 'text',
    'text': ...}, files, components); non-text blocks are left out."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return content["text"]
        if "content" in content:
            return flatten_content(content["content"])
        return ""
    if isinstance(content, (list, tuple)):
        return "\n".join(t for t in (flatten_content(c) for c in content) if t)
    text = getattr(content, "text", None)  # gradio ChatMessage / TextMessage objects
    if isinstance(text, str):
        return text
    inner = getattr(content, "content", None)
    return flatten_content(inner) if inner is not None else ""


def to_messages(history: Iterable[Any], system: str = "") -> list[Message]:
    """Plain {'role', 'content': str} messages from a chat history (dicts or gradio objects)."""
    out: list[Message] = []
    if system and system.strip():
        out.append({"role": "system", "content": system.strip()})
    for m in history or []:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if role not in ("system", "user", "assistant"):
            continue
        meta = m.get("metadata") if isinstance(m, dict) else getattr(m, "metadata", None)
        if meta and meta.get("title"):  # gradio "thought"/tool bubbles are not part of the chat
            continue
        out.append({"role": role, "content": flatten_content(content)})
    return out


def with_system(messages: list[Message], system: str) -> list[Message]:
    """Add a system message when there is none (what training does with `system_prompt`)."""
    if not system or any(m["role"] == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}] + messages


# --- tokens -------------------------------------------------------------------------------------


def prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer, prompt: list[Message], answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer as one conversation, and where the answer starts."""
    head = prompt_ids(tokenizer, prompt)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                              tokenize=False)
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    start = 0
    for a, b in zip(head, full):  # templates normally extend the prompt; be safe if not
        if a != b:
            break
        start += 1
    return full, start


def stop_token_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    eos = getattr(model.generation_config, "eos_token_id", None)
    for t in (eos if isinstance(eos, (list, tuple)) else [eos]) + [tokenizer.eos_token_id]:
        if t is not None and t not in ids:
            ids.append(int(t))
    return ids


def generation_config(model, tokenizer, settings: GenerationSettings):
    """Greedy when temperature is 0, otherwise sampling; stops at the model's end tokens."""
    import copy

    cfg = copy.deepcopy(model.generation_config)
    cfg.max_new_tokens = settings.max_new_tokens
    cfg.max_length = None
    cfg.min_new_tokens = None
    cfg.eos_token_id = stop_token_ids(model, tokenizer)
    cfg.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else cfg.eos_token_id[0]
    if settings.temperature > 0:
        cfg.do_sample, cfg.temperature, cfg.top_p = True, settings.temperature, settings.top_p
    else:  # unset sampling knobs so greedy decoding raises no warnings about them
        cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = False, None, None, None
    if settings.repetition_penalty != 1.0:  # 1.0 keeps whatever the model ships with
        cfg.repetition_penalty = settings.repetition_penalty
    return cfg


def _left_pad(seqs: Sequence[list[int]], pad_id: int, device: str):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def generate_batch(model, tokenizer, prompts: Sequence[list[Message]], max_new_tokens: int,
                   batch_size: int = 8, on_batch=None) -> list[str]:
    """Greedy answers for many prompts, batched with left padding (shortest prompts together).

    `on_batch(done, total)` is called after each batch."""
    import torch

    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    cfg = generation_config(model, tokenizer, GenerationSettings(max_new_tokens))
    device = str(model.device)
    done = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = _left_pad([encoded[i] for i in idx], cfg.pad_token_id, device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True).strip()
        done += len(idx)
        if on_batch:
            on_batch(done, len(order))
    return answers


def greedy_answers(model, tokenizer, rows: Sequence[tuple[list[Message], str]],
                   max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """`generate_batch`'s greedy answers to the prompts of `rows` (prompt, reference), found
    cheaply where the model would write the reference: one forward pass over prompt + reference
    tells whether each reference token, and the end token after it, is the model's top choice
    given the tokens before; if so, greedy decoding writes exactly those tokens and stops, so the
    answer is the reference as decoded. Only the other rows are generated. Late in a run most
    validation rows are right, and their answers then cost a fraction of a training step instead
    of a prefill and a token-by-token decode (~8 s for 8 rows on the bundled model, 2 cores).
    A generation setting that changes the top choice (a repetition penalty, banned words, ...)
    makes every row go through `generate_batch`."""
    import torch

    cfg = generation_config(model, tokenizer, GenerationSettings(max_new_tokens))
    stops = set(cfg.eos_token_id)
    answers: list[str | None] = [None] * len(rows)
    plain = (cfg.repetition_penalty in (None, 1.0) and not cfg.no_repeat_ngram_size
             and not cfg.bad_words_ids and not cfg.suppress_tokens
             and not cfg.begin_suppress_tokens and not cfg.sequence_bias)
    targets: list[tuple[int, list[int], int]] = []  # (row, prompt + answer ids, answer start)
    for i, (prompt, reference) in enumerate(rows if plain else []):
        ids, start = completion_ids(tokenizer, prompt, reference)
        end = next((k for k in range(start, len(ids)) if ids[k] in stops), None)
        if end is not None and start > 0 and end - start + 1 <= max_new_tokens:
            targets.append((i, ids[:end + 1], start))
    device = str(model.device)
    for b in range(0, len(targets), batch_size):
        batch = targets[b:b + batch_size]
        ids, mask = _left_pad([t for _, t, _ in batch], cfg.pad_token_id, device)
        keep = max(len(t) - start for _, t, start in batch) + 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           logits_to_keep=keep).logits
        top = logits.argmax(-1).tolist()  # top[r][j]: the choice after position width-keep+j
        for r, (i, t, start) in enumerate(batch):
            n = len(t) - start  # answer tokens, the end token included
            chosen = top[r][keep - n - 1:keep - 1]
            if chosen == t[start:]:
                answers[i] = tokenizer.decode(t[start:], skip_special_tokens=True).strip()
    todo = [i for i, a in enumerate(answers) if a is None]
    if todo:
        made = generate_batch(model, tokenizer, [rows[i][0] for i in todo], max_new_tokens,
                              batch_size=batch_size)
        for i, a in zip(todo, made):
            answers[i] = a
    return [a or "" for a in answers]


def completion_nll(model, tokenizer, rows: Sequence[tuple[list[Message], str]],
                   max_length: int = 2048, batch_size: int = 8, on_batch=None) -> tuple[float, int]:
    """Summed negative log-likelihood of the answer tokens (prompt tokens not counted), and how
    many answer tokens there were. Rows longer than `max_length` tokens are cut at the end.

    The vocabulary projection runs through TRL's fused LM head (the one SFTTrainer trains
    with): it never builds the (batch, length, vocabulary) logits, only one tile at a time of at
    most 4,096 tokens x 32,768 words (`hardware.LOSS_TILE_TOKENS`, `LOSS_TILE_WORDS`: 256 MB in
    bf16), where a 150k-word vocabulary at batch 16 x 1,024 tokens took ~25 GB (bf16 logits, an
    fp32 copy and its log-softmax); on a GPU only the answer positions are projected."""
    import torch

    seqs = []
    for prompt, answer in rows:
        ids, start = completion_ids(tokenizer, prompt, answer)
        ids = ids[:max_length]
        labels = [-100] * min(start, len(ids)) + ids[start:]
        seqs.append((ids, labels))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scorer = fused_scorer(model)
    device = str(model.device)
    total_nll, total_tokens, done = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (s, lab) in enumerate(batch):
            ids[r, :len(s)] = torch.tensor(s)
            labels[r, :len(lab)] = torch.tensor(lab)
            mask[r, :len(s)] = 1
        with torch.inference_mode():
            out = scorer(input_ids=ids.to(device), attention_mask=mask.to(device),
                         labels=labels.to(device), fused_lm_head=True)
            nll = -out.log_probs.sum()  # 0 at prompt and padding positions
        total_nll += float(nll)
        total_tokens += int((labels[:, 1:] != -100).sum())
        done += len(batch)
        if on_batch:
            on_batch(done, len(order))
    return total_nll, total_tokens


def fused_scorer(model):
    """The module to call with `fused_lm_head=True` for per-token log-probabilities of the
    labels: the model itself, or for a PEFT model (an unmerged adapter) its base model, whose
    layers carry the adapter. Generation is unchanged (the patch only acts on that flag)."""
    from trl.trainer import add_fused_lm_head

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(lm, "_finetune_fused_head", False):
        add_fused_lm_head(lm, outputs=("log_probs",))
        lm._finetune_fused_head = True
    return lm


# --- streaming ----------------------------------------------------------------------------------


def stream(model, tokenizer, messages: list[Message], settings: GenerationSettings
           ) -> Iterator[str]:
    """Yield the answer in pieces as it is generated (TextIteratorStreamer + a thread).

    Generation stops at the model's end token, at `settings.max_new_tokens`, at the first stop
    string (which is not shown), or when the caller stops iterating (e.g. a Gradio cancel)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    halt = threading.Event()

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    ids = prompt_ids(tokenizer, _fit_context(model, tokenizer, messages, settings.max_new_tokens))
    input_ids = torch.tensor([ids], device=model.device)
    streamer = _token_streamer()(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cfg = generation_config(model, tokenizer, settings)
    failure: list[BaseException] = []

    def work():
        from finetune import fastdecode

        try:
            with torch.inference_mode(), \
                    fastdecode.session(model, cfg, len(ids) + settings.max_new_tokens) as extra:
                model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               generation_config=cfg, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Halt()]), **extra)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True, name="finetune-generate")
    thread.start()
    stops = settings.stop
    sent, text = 0, ""
    try:
        for piece in streamer:
            text += piece
            if stops:
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    if cut > sent:
                        yield text[sent:cut]
                    return
                # hold back a tail that could be the start of a stop string
                hold = max((k for s in stops for k in range(1, len(s))
                            if text.endswith(s[:k])), default=0)
                safe = len(text) - hold
            else:
                safe = len(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if sent < len(text):
            yield text[sent:]
    finally:
        halt.set()
        thread.join(timeout=30)
    if failure:
        raise failure[0]


@functools.cache
def _token_streamer():
    """transformers' TextIteratorStreamer, sending the text of each token as it comes.

    The stock streamer shows a word only once the next one starts (a later token may change how
    the text decodes), so the first word of an answer waited a token or more. A tokenizer that
    does not clean up spaces (`clean_up_tokenization_spaces` False, as byte-level BPE and
    SentencePiece models ship) decodes a longer run of tokens to the same text plus more, except
    for a character whose bytes are split over tokens: that shows as U+FFFD and is held back
    until its last byte arrives. A tokenizer that cleans up spaces keeps the word-by-word way."""

    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        def put(self, value):
            if getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
                return super().put(value)
            if value.dim() > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            ready = text.rstrip("\ufffd")
            printable = ready[self.print_len:]
            if ready == text and ready.endswith("\n"):  # as the stock streamer: a new cache
                self.token_cache, self.print_len = [], 0
            else:
                self.print_len = len(ready)
            self.on_finalized_text(printable)

    return TokenStreamer


def _fit_context(model, tokenizer, messages: list[Message], max_new_tokens: int) -> list[Message]:
    """Drop the oldest turns (keeping the system prompt and the last message) until the prompt
    and the answer fit the model's context."""
    from finetune.models import context_from

    limit = context_from(model.config.to_dict())
    msgs = list(messages)
    while len(prompt_ids(tokenizer, msgs)) + max_new_tokens > limit:
        first = 1 if msgs and msgs[0]["role"] == "system" else 0
        if len(msgs) - first <= 1:
            break
        del msgs[first]
    return msgs
