"""Fused LoRA layers learn what PEFT's learn: the same loss and gradients, and PEFT's own path
wherever the fused pass does not apply."""

import copy

import pytest
import torch

from finetune import fused_lora, models


def _pair(tiny_model, dropout=0.0):
    """The tiny model with LoRA on every linear layer twice: PEFT's as it is, and fused. B starts
    non-zero so the adapters take part in the loss."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           models.lora_config(8, 16, dropout, "all-linear", False))
    for name, p in plain.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    fused = copy.deepcopy(plain)
    return plain, fused, fused_lora.apply(fused)


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.requires_grad}


def test_fused_layers_give_peft_s_loss_and_gradients(tiny_model):
    plain, fused, switched = _pair(tiny_model)
    layers = plain.config.num_hidden_layers
    assert switched == 7 * layers  # q, k, v, o, gate, up, down
    swapped = [type(m).__name__ for m in fused.modules() if hasattr(m, "_plain_forward")]
    assert swapped.count("LlamaMLP") == layers
    assert swapped.count("LlamaRMSNorm") == 2 * layers + 1  # and the final norm
    ids = torch.randint(5, 700, (2, 23))
    want, want_grads = _loss_and_grads(plain, ids)
    got, got_grads = _loss_and_grads(fused, ids)
    assert torch.allclose(got, want, rtol=1e-5)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) == 2 * switched
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-6, rtol=1e-4), name


def test_a_fused_model_trains_saves_and_loads_as_peft_s(tiny_model, tmp_path):
    """A few optimizer steps on each: the same adapter weights, saved by PEFT, loaded back by PEFT,
    answer the same."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain, fused, _ = _pair(tiny_model)
    ids = torch.randint(5, 700, (2, 19))
    for model in (plain, fused):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(3):
            _loss_and_grads(model, ids)
            opt.step()
    fused.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                       tmp_path / "adapter")
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        assert torch.allclose(fused(input_ids=ids).logits, want, atol=1e-4)
        assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-4)


@pytest.mark.parametrize("case", ["dropout", "disabled", "merged"])
def test_calls_the_fused_pass_does_not_cover_take_peft_s_path(tiny_model, case, monkeypatch):
    plain, fused, _ = _pair(tiny_model, dropout=0.1 if case == "dropout" else 0.0)
    ids = torch.randint(5, 700, (1, 11))
    plain.eval(), fused.eval()  # dropout off in both: the same answer either way
    if case == "disabled":
        contexts = [m.disable_adapter() for m in (plain, fused)]
    else:
        contexts = [torch.no_grad(), torch.no_grad()]
    if case == "merged":
        for m in (plain, fused):
            m.merge_adapter()
    fusable, taken = fused_lora._fusable, []
    monkeypatch.setattr(fused_lora, "_fusable",
                        lambda *a: taken.append(fusable(*a)) or taken[-1])
    with contexts[0], torch.no_grad():
        want = plain(input_ids=ids).logits
    with contexts[1], torch.no_grad():
        got = fused(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert taken and not any(taken)  # every layer was asked, and went PEFT's way


def test_a_norm_output_changed_in_place_is_kept_as_it_is(tiny_model):
    """A layer fed by a fused norm keeps the norm's input and makes the output again in its
    backward pass, unless the output was changed in place in between: then it keeps it."""
    from peft.tuners.lora.layer import Linear

    _, fused, _ = _pair(tiny_model)
    base = fused.get_base_model().model
    norm, layer = base.layers[0].input_layernorm, base.layers[0].self_attn.q_proj
    assert type(layer) is Linear
    a = layer.lora_A["default"].weight
    x = torch.randn(1, 5, fused.config.hidden_size)
    for change in (False, True):
        out = norm(x * 1.0)
        if change:
            out.mul_(2.0)
        (got,) = torch.autograd.grad(layer(out).square().sum(), a)  # A's gradient reads the input
        want_out = norm._plain_forward(x * 1.0) * (2.0 if change else 1.0)
        (want,) = torch.autograd.grad(layer._peft_forward(want_out).square().sum(), a)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), change


def test_fused_layers_on_row_attention_give_peft_s_gradients(tiny_model):
    """Packed rows sharing a prefix, attention row by row (one autograd function whose output
    o_proj keeps as its input); every adapter's gradient is PEFT's on the same batch."""
    from finetune import fastpath

    plain, fused, _ = _pair(tiny_model)
    for model in (plain, fused):
        fastpath.prepare_model(model.get_base_model())
    torch.manual_seed(3)
    prefix = torch.randint(5, 700, (6,)).tolist()
    rows = [{"input_ids": prefix + torch.randint(5, 700, (n,)).tolist()} for n in (9, 4, 13)]
    for row in rows:
        row["labels"] = [-100] * 8 + row["input_ids"][8:]
    collate = fastpath.collator(type("Tok", (), {"pad_token_id": 0}), False, plain)
    batch = collate(rows)
    assert batch["input_ids"].shape[1] == 6 + 9 + 4 + 13  # the prefix laid once
    grads = []
    for model in (plain, fused):
        model.zero_grad()
        loss, _ = fastpath.answer_loss(model, batch)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6, rtol=1e-4), name
