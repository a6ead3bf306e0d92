"""The fast training path learns what plain TRL learns: same loss and gradients on the same rows."""

import torch
import torch.nn.functional as F

from finetune import fastpath


def _rows():
    torch.manual_seed(1)
    rows = []
    for n, answer in [(20, 5), (33, 9), (12, 3), (7, 2)]:
        ids = torch.randint(5, 700, (n,)).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n - answer) + ids[n - answer:]})
    return rows


def test_padding_free_rows_and_answer_logits_give_plain_trls_loss_and_gradients(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    fast = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert fastpath.prepare_model(fast) == fastpath.ROW_ATTENTION
    rows = _rows()
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    packed = fastpath.collator(type("Tok", (), {"pad_token_id": 0}), packing=False)(rows)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].shape[1] == sum(len(r["input_ids"]) for r in rows)  # no padding

    n_items = (padded["labels"] != -100).sum()
    logits = plain(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           padded["labels"][:, 1:].reshape(-1), reduction="sum") / n_items
    got, out = fastpath.answer_loss(fast, packed, n_items)
    assert out.logits.shape[0] == n_items  # the lm-head ran on answer positions only
    assert torch.allclose(got, want, atol=1e-5)
    want.backward()
    got.backward()
    for a, b in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_rows_of_a_packed_batch_do_not_see_each_other(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    fastpath.prepare_model(model)
    first, second = torch.randint(5, 700, (1, 9)), torch.randint(5, 700, (1, 6))
    alone = model(input_ids=second).logits[0]
    packed = model(input_ids=torch.cat([first, second], dim=1),
                   position_ids=torch.cat([torch.arange(9), torch.arange(6)])[None]).logits[0, 9:]
    assert torch.allclose(alone, packed, atol=1e-5)


def test_a_shared_prefix_computed_once_gives_the_same_loss_and_gradients(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    fast = AutoModelForCausalLM.from_pretrained(tiny_model)
    fastpath.prepare_model(fast)
    shared = torch.randint(5, 700, (11,)).tolist()  # a system prompt every row starts with
    rows = [{"input_ids": shared + r["input_ids"], "labels": [-100] * 11 + r["labels"]}
            for r in _rows()]
    collate = fastpath.collator(type("Tok", (), {"pad_token_id": 0}), packing=False, model=fast)
    packed = collate(rows)
    real = sum(len(r["input_ids"]) for r in rows)
    assert packed["input_ids"].shape[1] == real - 11 * (len(rows) - 1)  # the prefix laid once
    assert int(packed["row_tokens"]) == real  # tokens/s counts what the rows hold

    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    n_items = (padded["labels"] != -100).sum()
    logits = plain(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           padded["labels"][:, 1:].reshape(-1), reduction="sum") / n_items
    got, _ = fastpath.answer_loss(fast, packed, n_items)
    assert torch.allclose(got, want, atol=1e-5)
    want.backward()
    got.backward()
    for a, b in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_the_chunked_answer_loss_is_the_cross_entropy_of_the_whole_logits(monkeypatch):
    """Taken a few answer positions at a time, with the gradient made in the same pass: the loss
    and the hidden states' gradient are those of F.cross_entropy on all the logits at once."""
    monkeypatch.setattr(fastpath, "LOSS_CHUNK", 3)
    torch.manual_seed(2)
    weight = torch.randn(50, 8)
    targets = torch.randint(0, 50, (10,))
    hidden = torch.randn(10, 8, requires_grad=True)
    want = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (want_grad,) = torch.autograd.grad(want * 0.5, hidden)
    got = fastpath._answer_cross_entropy().apply(hidden, weight, targets)
    (got_grad,) = torch.autograd.grad(got * 0.5, hidden)
    assert torch.allclose(got, want, rtol=1e-6)
    assert torch.allclose(got_grad, want_grad, atol=1e-6)
