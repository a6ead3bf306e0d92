"""The fast training path: the same loss on the same tokens as plain TRL, with less work per step.

    python -m finetune bench train --json    # this path against plain TRL + PEFT, same run

What it changes, and only inside TRL's SFTTrainer (TRL and PEFT stay the engine):
- Padding-free batches: the rows of a batch are laid end to end in one sequence (TRL's own
  collator, `padding_free=True`), so no layer computes anything on padding.
- The rows' shared beginning (system prompt, template) computed once a batch
  (`SharedPrefixCollator`), every row attending to it as if it were its own.
- Attention row by row (`sdpa_rows`): SDPA with `is_causal` on each row's slice of the packed
  sequence, from the row starts TRL's collator gives (`cu_seq_lens_q`). transformers' own answer
  to packed sequences on SDPA is a (tokens x tokens) block mask, whose attention costs grow with
  the square of the whole batch (~10x the work for 8 rows) and whose weights stay in memory for
  the backward pass. Flash attention (GPU, when installed) does the same natively. On a CPU the
  rows are one autograd function (`_rows_function`) that keeps the batch's queries, keys and
  values once, not a joined copy for each row that sees the shared prefix.
- Logits only where the loss is: the hidden states of the positions whose next token is an answer
  token go through the lm-head (`logits_to_keep` as a mask); the prompt never meets the 49k-word
  head. The loss is TRL's: the summed cross-entropy of the answer tokens over `num_items_in_batch`.
  On a CPU, for heads that are the output layer alone, it is taken in chunks of answer positions
  with their gradient in the same pass (`_answer_cross_entropy`): no whole logits held.
- No per-step pass over the logits for metrics (TRL logs entropy and token accuracy every step).
- Validation returns the loss only (no logits gathered across batches).
- On a CPU with glibc's malloc, freed activations go back to the system
  (`release_freed_memory`); where tcmalloc serves the process (`allocator`) it reuses them.
- On a CPU, PEFT's LoRA layers, the gated MLPs holding them and Llama's RMSNorm in one pass each
  (`fused_lora`).
"""

from __future__ import annotations

import functools

ROW_ATTENTION = "sdpa_rows"
# The last batch's row bounds: every layer gets the same tensor, read from the device once. Held
# by reference (compared with `is`), so a new batch at the same address is never mistaken for it.
_last_bounds: list = [None, None]


def _row_bounds(query, kwargs) -> tuple[list[int], list[int]] | None:
    """Row starts (and the end) of a packed batch of one sequence, and for each row the
    position it starts at (0, or the length of a shared prefix laid once at the start: see
    `SharedPrefixCollator`); None when not packed."""
    if query.shape[0] != 1:
        return None
    cu = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    source = cu if cu is not None else position_ids
    if source is None:
        return None
    if _last_bounds[0] is source:
        return _last_bounds[1]
    if cu is not None:
        bounds = [int(x) for x in cu.tolist()]
    else:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist()
        bounds = [int(x) for x in starts] + [int(position_ids.shape[-1])]
        if not bounds or bounds[0] != 0:
            bounds = [0] + bounds
    firsts = [0] * (len(bounds) - 1)
    if position_ids is not None and len(bounds) > 2:
        firsts = [int(x) for x in position_ids[0, bounds[:-1]].tolist()]
    result = (bounds, firsts)
    _last_bounds[:] = [source, result]
    return result


def row_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA on each row of a padding-free batch (causal within the row, nothing across rows);
    plain SDPA for everything else (padded batches, generation with a cache)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = None
    if attention_mask is None and query.shape[2] == key.shape[2]:
        rows = _row_bounds(query, kwargs)
    if rows is None or len(rows[0]) <= 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds, firsts = rows
    rest = {k: v for k, v in kwargs.items() if k not in ("is_causal", "position_ids")}
    if query.device.type == "cpu" and not rest.get("dropout") and rest.get("softcap") is None:
        return _rows_function().apply(query, key, value, bounds, firsts, rest.get("scaling")), None
    outs = [sdpa_attention_forward(module, q, k, v, mask, is_causal=own, **rest)[0]
            for _, _, q, k, v, own, mask in _rows(query, key, value, bounds, firsts)]
    return torch.cat(outs, dim=1), None  # (batch, tokens, heads, head_dim), as SDPA returns


def _rows(query, key, value, bounds, firsts):
    """Each row of a packed batch for SDPA: (start, end, its queries, the keys and values it
    sees, causal, mask). A row continuing the shared prefix (the first row, see
    `SharedPrefixCollator`) sees all of the prefix, then itself causally: its keys and values
    are the prefix's and its own, joined, and a mask (0 or -inf) says so. One split per tensor,
    not a slice per row: where autograd differentiates through them (off the CPU), a slice's
    backward writes its gradient into a zero tensor of the whole batch (rows x tokens of work),
    a split's is one concatenation."""
    import torch

    prefix = bounds[1] if firsts[0] == 0 else 0
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    qs, ks, vs = (t.split(sizes, dim=2) for t in (query, key, value))
    for i, (a, b, first) in enumerate(zip(bounds[:-1], bounds[1:], firsts)):
        if b <= a:
            continue
        k, v, mask = ks[i], vs[i], None
        own = first == 0 or first != prefix  # a row of its own: causal within it
        if not own:
            n = b - a
            k, v = torch.cat([ks[0], k], dim=2), torch.cat([vs[0], v], dim=2)
            mask = query.new_zeros(n, prefix + n)
            mask[:, prefix:] = torch.full((n, n), float("-inf"), dtype=query.dtype,
                                          device=query.device).triu(1)
            mask = mask[None, None]
        yield a, b, qs[i], k, v, own, mask


@functools.cache
def _rows_function():
    """SDPA row by row on a CPU as one autograd function (made on first use). Its backward pass
    keeps the whole batch's queries, keys, values, output and log-sum-exp, once: not the joined
    keys and values and the mask of each row continuing the shared prefix, which SDPA's own
    backward would keep (~9% of a step's kept activations on the `bench train` batch). Those are
    made again in the backward pass. SDPA's CPU kernel takes grouped keys as they are, with a mask
    too (transformers copies each key and value head once per query head for a mask: 3x on the
    bundled model). The output it returns is all the fused o_proj (`fused_lora`) keeps."""
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

    class RowsAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, query, key, value, bounds, firsts, scale):
            outs, lses = [], []
            for _, _, q, k, v, own, mask in _rows(query, key, value, bounds, firsts):
                out, lse = flash(q, k, v, 0.0, own, attn_mask=mask, scale=scale)
                outs.append(out.transpose(1, 2))
                lses.append(lse)
            out = torch.cat(outs, dim=1)  # (batch, tokens, heads, head_dim), as SDPA returns
            ctx.save_for_backward(query, key, value, out, torch.cat(lses, dim=2))
            ctx.rows = (bounds, firsts, scale)
            return out

        @staticmethod
        def backward(ctx, grad):
            query, key, value, out, lse = ctx.saved_tensors
            bounds, firsts, scale = ctx.rows
            # the rows cover every token once, the prefix (row 0) before the rows that see it
            grad_q, grad_k, grad_v = (torch.empty_like(t) for t in (query, key, value))
            for a, b, q, k, v, own, mask in _rows(query, key, value, bounds, firsts):
                dq, dk, dv = flash_backward(grad[:, a:b].transpose(1, 2), q, k, v,
                                            out[:, a:b].transpose(1, 2), lse[:, :, a:b], 0.0,
                                            own, attn_mask=mask, scale=scale)
                grad_q[:, :, a:b] = dq
                seen = k.shape[2] - (b - a)  # the prefix's share of its keys, if any
                grad_k[:, :, a:b] = dk[:, :, seen:]
                grad_v[:, :, a:b] = dv[:, :, seen:]
                if seen:
                    grad_k[:, :, :seen] += dk[:, :, :seen]
                    grad_v[:, :, :seen] += dv[:, :, :seen]
            return grad_q, grad_k, grad_v, None, None, None

    return RowsAttention


def _row_mask(*args, attention_mask=None, **kwargs):
    """No mask for padding-free batches (row_attention keeps rows apart); SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ROW_ATTENTION, row_attention)
    AttentionMaskInterface.register(ROW_ATTENTION, _row_mask)


def release_freed_memory() -> bool:
    """glibc only: serve buffers of 1 MB and more from mmap, so that a freed activation goes back
    to the system. By default glibc raises that limit to the largest buffer freed so far, after
    which activations come from the heap, which fragments: measured on the bundled model (8 rows,
    AMD EPYC, no avx512_bf16) the peak RSS went from 3.7 to 2.4 GB over three steps. The price is
    a page fault a page when a buffer is first written: on the `bench train` batch (one core,
    fused layers) a step took 7.9 s with this setting and 5.4 s without, at 1.68 against 2.05 GB
    peak, so the fused layers (`fused_lora`) allocate as little as they can. Nothing to do where
    tcmalloc serves the process (`allocator`): it reuses freed memory without either cost. True
    when the setting took."""
    import ctypes
    import sys

    from finetune import allocator

    if not sys.platform.startswith("linux") or allocator.in_use():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        return False


def prepare_model(model) -> str:
    """Switch a freshly loaded model to row-by-row attention where it uses SDPA or eager attention
    (flash attention is padding-free already), and on a CPU let freed memory go back to the
    system (`release_freed_memory`); returns the attention in use."""
    if model.device.type == "cpu":
        release_freed_memory()
    current = getattr(model.config, "_attn_implementation", None)
    if current not in ("sdpa", "eager"):
        return str(current)
    register()
    try:
        model.set_attn_implementation(ROW_ATTENTION)
    except (ValueError, TypeError):  # a model outside the attention interface: leave it as it is
        return str(current)
    return ROW_ATTENTION


def fuse_adapters(model) -> int:
    """On a CPU, the model's LoRA layers computed in one pass (`fused_lora`); how many were
    switched (0 on other devices, where it is not measured yet)."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return 0
    from finetune import fused_lora

    return fused_lora.apply(model)


def sft_overrides() -> dict:
    """SFTConfig settings of the fast path (validation reports its loss alone)."""
    return {"prediction_loss_only": True}


def collator(tokenizer, packing: bool, model=None):
    """TRL's collator in padding-free mode, and with row-by-row attention the rows' shared prefix
    computed once (`SharedPrefixCollator`); None with packing, where TRL makes its own
    (padding-free too). TRL refuses `padding_free=True` together with `max_length` unless
    packing, though it truncates rows to `max_length` while preparing the data either way:
    passing the collator keeps both."""
    if packing:
        return None
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    plain = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return SharedPrefixCollator(plain) if attention == ROW_ATTENTION else plain


class SharedPrefixCollator:
    """Padding-free batches whose rows' common beginning (system prompt, template: 23 of ~97
    tokens a row on sample:contacts) is laid once at the start; each row follows with the rest of
    its tokens, positions continuing from the prefix, and `row_attention` lets it see the prefix.
    The prefix carries no loss (it stops before any answer token and before the token that
    follows it), so every row computes exactly what it computes alone, its gradient included,
    and the prefix's work is done once instead of once a row. `row_tokens` counts the rows'
    own tokens (what plain TRL trains on), for the tokens/s metric."""

    def __init__(self, plain):
        self.plain = plain

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = [list(e["input_ids"]) for e in examples]
        labels = [list(e.get("labels", e["input_ids"])) for e in examples]
        size = 0
        if len(ids) > 1:
            first_answer = min(next((i for i, x in enumerate(lab) if x != -100), len(lab))
                               for lab in labels)
            limit = min(min(len(i) for i in ids) - 1, first_answer - 1)
            while size < limit and all(row[size] == ids[0][size] for row in ids):
                size += 1
        real = sum(len(i) for i in ids)
        if size < 2:
            out = self.plain(examples)
            out["row_tokens"] = torch.tensor(real)
            return out
        seq, lab, pos, cu = ids[0][:size], [-100] * size, list(range(size)), [0, size]
        for row, row_labels in zip(ids, labels):
            seq += row[size:]
            lab += row_labels[size:]
            pos += range(size, len(row))
            cu.append(len(seq))
        cu_t = torch.tensor(cu, dtype=torch.int32)
        return {"input_ids": torch.tensor([seq]), "labels": torch.tensor([lab]),
                "position_ids": torch.tensor([pos]), "cu_seq_lens_q": cu_t,
                "cu_seq_lens_k": cu_t, "max_length_q": int(cu_t.diff().max()),
                "max_length_k": int(cu_t.diff().max()), "row_tokens": torch.tensor(real)}


# Models whose causal-LM head is the output layer alone (no scaling or capping of the logits), so
# the loss can be taken from the hidden states chunk by chunk (`_answer_cross_entropy`).
PLAIN_HEADS = frozenset({"llama", "mistral", "qwen2", "qwen3"})
LOSS_CHUNK = 64  # answer positions a chunk: 64 x 49k logits of the bundled model are 12 MB


def _plain_head(model):
    """The output layer when the answer loss can be computed from the hidden states in chunks:
    a frozen bias-free linear head of a `PLAIN_HEADS` model on a CPU, not wrapped for several
    processes; None otherwise."""
    import torch

    if hasattr(model, "module"):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if (type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad
            or head.weight.device.type != "cpu"
            or getattr(base.config, "model_type", None) not in PLAIN_HEADS):
        return None
    return head


@functools.cache
def _answer_cross_entropy():
    """Summed cross-entropy of the answer tokens straight from their hidden states and the frozen
    head: logits made `LOSS_CHUNK` positions at a time, the gradient of the hidden states taken
    in the same pass, so no (answers x vocabulary) logits, log-softmax or gradient is ever held
    whole (~60 MB each for 8 rows of sample:contacts). The same sums as `F.cross_entropy` on
    fp32 logits."""
    import torch

    class AnswerCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            for start in range(0, hidden.shape[0], LOSS_CHUNK):
                logits = (hidden[start:start + LOSS_CHUNK] @ weight.t()).float()
                wanted = targets[start:start + LOSS_CHUNK]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
                if grad is not None:  # softmax minus the one-hot answer, back through the head
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs[torch.arange(len(wanted), device=probs.device), wanted] -= 1
                    grad[start:start + LOSS_CHUNK] = probs.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, g):
            (grad,) = ctx.saved_tensors
            return grad * g, None, None

    return AnswerCrossEntropy


def answer_loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, outputs): the model's forward with the head on the answer positions only, and TRL's
    loss (summed cross-entropy over `num_items_in_batch`, or the mean without it). With a
    `_plain_head` the loss comes from the hidden states in chunks and `outputs.logits` holds
    those hidden states."""
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    inputs.pop("row_tokens", None)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    wanted = targets != -100
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = wanted
    inputs["use_cache"] = False
    head = _plain_head(model)
    if head is None:
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        loss = F.cross_entropy(logits.float(), targets[wanted], reduction="sum")
    else:
        head.forward = lambda hidden: hidden  # the model hands back the hidden states it keeps
        try:
            outputs = model(**inputs, logits_to_keep=keep)
        finally:
            del head.forward
        hidden = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        loss = _answer_cross_entropy().apply(hidden, head.weight, targets[wanted])
    count = wanted.sum() if num_items_in_batch is None else num_items_in_batch
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1), outputs


def trainer_class():
    """SFTTrainer with the answer-only loss (same value as TRL's, no metric passes)."""
    from trl import SFTTrainer

    class FastSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            loss, outputs = answer_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if mode == "train":  # real tokens: the rows' own, the attention mask's, or the length
                if "row_tokens" in inputs:
                    tokens = inputs["row_tokens"]
                elif "attention_mask" in inputs:
                    tokens = inputs["attention_mask"].sum()
                else:
                    tokens = inputs["input_ids"].new_tensor(inputs["input_ids"].shape[1])
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(tokens).sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return FastSFTTrainer
