"""LoRA layers in one pass: the frozen weight's product and the adapter's in a single
accumulating matmul, forward and backward, instead of PEFT's separate scale, add and gradient
sums over the whole (tokens x features) output; and a gated MLP (Llama, Mistral, Qwen: gate, up,
down, SiLU) whose three LoRA layers run as one step that keeps only its input and the gate's and
up's outputs for the backward pass (the SiLU and the product are recomputed there, two passes of
elementwise work, instead of holding two more (tokens x 1536) tensors a layer); and Llama's
RMSNorm as one step whose output the layers it feeds do not keep: they keep its input, which the
norm keeps anyway, and make the output again in their backward pass (`_kept_input`). The o_proj
fed by `fastpath.row_attention` keeps that attention's output, which the attention keeps anyway:
one tensor for both.

    fused_lora.apply(peft_model)     # after TRL/PEFT wrapped the model; returns layers switched

The same sums as PEFT's `lora.Linear` (y = x W^T + s (x A^T) B^T, the gradients of A, B and x),
in another order: the losses and gradients agree to float rounding (`tests/test_fused_lora.py`).
PEFT stays the adapter's owner (config, saving, merging); only the forward of plain LoRA layers,
of the MLPs holding them and of the norms changes, and a call the fused pass does not cover
(dropout, DoRA, several or disabled adapters, a quantized or merged base, autocast, mixed
precisions) takes PEFT's own path. Chosen by measurement on the CPU (`python -m finetune bench
train`); on a GPU it stays off until measured there.
"""

from __future__ import annotations

import types

_functions: dict = {}  # "linear", "mlp", "norm": the autograd functions, made on first use
_made: list = [None, None]  # (token of a `remake_later` mark, its tensor made again)
# The RMSNorm classes computed as Llama's: weight * x * rsqrt(mean(x^2) + eps), no offset.
PLAIN_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


def _function(name: str):
    """The autograd function `name` (torch is imported on first use)."""
    if _functions:
        return _functions[name]
    import torch

    def lora_out(flat, weight, bias, a, b, scale):
        """(flat W^T + bias + s (flat A^T) B^T, flat A^T): one accumulating matmul."""
        low = flat @ a.t()  # (tokens, r)
        out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
        return out.addmm_(low, b.t(), alpha=scale), low

    def lora_grads(g, flat, weight, a, b, scale, low, grad_x=None, want_x=True):
        """(the input's gradient, added to `grad_x` when given; A's; B's) of `lora_out`, for
        the output's gradient g."""
        g_low = g @ b  # (tokens, r)
        grad_a = (g_low.t() @ flat).mul_(scale) if a.requires_grad else None
        grad_b = (low.t() @ g).mul_(scale).t() if b.requires_grad else None
        if want_x:
            grad_x = g @ weight if grad_x is None else grad_x.addmm_(g, weight)
            grad_x.addmm_(g_low, a, alpha=scale)
        return grad_x, grad_a, grad_b

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, a, b, scale):
            flat = x.reshape(-1, x.shape[-1])
            out, low = lora_out(flat, weight, bias, a, b, scale)
            ctx.save_for_backward(_kept_input(ctx, x, flat), weight, a, b, low)
            ctx.scale, ctx.shape = scale, x.shape
            return out.view(*x.shape[:-1], weight.shape[0])

        @staticmethod
        def backward(ctx, grad):
            kept, weight, a, b, low = ctx.saved_tensors
            flat = _input(ctx, kept)
            g = grad.reshape(-1, grad.shape[-1])
            grad_x, grad_a, grad_b = lora_grads(g, flat, weight, a, b, ctx.scale, low,
                                                want_x=ctx.needs_input_grad[0])
            if grad_x is not None:
                grad_x = grad_x.view(ctx.shape)
            return grad_x, None, None, grad_a, grad_b, None

    class LoraMLP(torch.autograd.Function):
        """down(silu(gate(x)) * up(x)), each a LoRA layer given as (W, bias, A, B, scale)."""

        @staticmethod
        def forward(ctx, x, gw, gbias, ga, gb, gs, uw, ubias, ua, ub, us, dw, dbias, da, db,
                    ds):
            flat = x.reshape(-1, x.shape[-1])
            gate, low_g = lora_out(flat, gw, gbias, ga, gb, gs)
            up, low_u = lora_out(flat, uw, ubias, ua, ub, us)
            mid = torch.nn.functional.silu(gate).mul_(up)
            y, low_d = lora_out(mid, dw, dbias, da, db, ds)
            ctx.save_for_backward(_kept_input(ctx, x, flat), gate, up, low_g, low_u, low_d,
                                  gw, ga, gb, uw, ua, ub, dw, da, db)
            ctx.scales, ctx.shape = (gs, us, ds), x.shape
            return y.view(*x.shape[:-1], dw.shape[0])

        @staticmethod
        def backward(ctx, grad):
            (kept, gate, up, low_g, low_u, low_d, gw, ga, gb, uw, ua, ub, dw, da,
             db) = ctx.saved_tensors
            flat = _input(ctx, kept)
            gs, us, ds = ctx.scales
            g = grad.reshape(-1, grad.shape[-1])
            # Four (tokens x intermediate) buffers in all, each reused once free: on a CPU every
            # new buffer costs page faults (`fastpath.release_freed_memory`).
            act = torch.nn.functional.silu(gate)
            mid = act * up
            grads = [None] * 16  # the inputs' order: x, then (W, bias, A, B, scale) x 3
            g_mid, grads[13], grads[14] = lora_grads(g, mid, dw, da, db, ds, low_d)
            g_up = torch.mul(g_mid, act, out=mid)
            g_gate = torch.ops.aten.silu_backward.grad_input(g_mid.mul_(up), gate, grad_input=act)
            want_x = ctx.needs_input_grad[0]
            grad_x, grads[3], grads[4] = lora_grads(g_gate, flat, gw, ga, gb, gs, low_g,
                                                    want_x=want_x)
            grad_x, grads[8], grads[9] = lora_grads(g_up, flat, uw, ua, ub, us, low_u, grad_x,
                                                    want_x=want_x)
            if grad_x is not None:
                grads[0] = grad_x.view(ctx.shape)
            return tuple(grads)

    class RMSNorm(torch.autograd.Function):
        """weight * x / rms(x) (Llama's RMSNorm, `_norm_output`), keeping x and 1/rms(x) for a
        backward pass with one new buffer."""

        @staticmethod
        def forward(ctx, x, weight, eps):
            out, rstd = _norm_output(x, weight, eps)
            ctx.save_for_backward(x, weight, rstd)
            return out

        @staticmethod
        def backward(ctx, grad):
            # rstd * (g - n * mean(g * n)), g = grad * weight, n = x * rstd: one new buffer
            x, weight, rstd = ctx.saved_tensors
            g = grad * weight
            coef = torch.linalg.vecdot(g, x).unsqueeze(-1).mul_(rstd.pow(3)).div_(x.shape[-1])
            return g.mul_(rstd).addcmul_(x, coef, value=-1), None, None

    _functions.update(linear=LoraLinear, mlp=LoraMLP, norm=RMSNorm)
    return _functions[name]


def _norm_output(x, weight, eps):
    """(Llama's RMSNorm of x, 1/rms(x)): transformers' formula, weight * (x * rstd), its mean
    square summed in another order and no buffer but the output's; computed the same way
    forward and when made again in `_input`."""
    import torch

    rstd = torch.linalg.vecdot(x, x).unsqueeze(-1).div_(x.shape[-1]).add_(eps).rsqrt_()
    return torch.mul(x, rstd).mul_(weight), rstd


def remake_later(out, recipe, *inputs) -> None:
    """Mark `out` as `recipe(*inputs)`, so that a fused layer it feeds keeps `inputs` (tensors
    that their own layers keep anyway) instead of `out`, and makes `out` again in its backward
    pass (`_kept_input`)."""
    out._made_again = (recipe, inputs, object(), out._version)


def _kept_input(ctx, x, flat):
    """What a fused layer keeps for its backward pass to know its input: the input itself, or,
    for an input marked by `remake_later` (a fused norm's output) and not changed in place
    since, nothing: the inputs of its recipe are held and it is made again in the backward pass.
    Saves one (tokens x hidden) tensor a norm."""
    mark = getattr(x, "_made_again", None)
    if mark is not None and mark[3] != x._version:
        mark = None  # changed in place since: keep the input
    ctx.remake = mark and (*mark[:3], flat.shape[-1])
    return flat if mark is None else flat.new_empty(0)


def _input(ctx, kept):
    """The flat input of a fused layer in its backward pass (`_kept_input`); an input made again
    is shared by the layers it feeds (q, k and v) through a one-entry cache, matched by the
    mark's own token."""
    if not ctx.remake:
        return kept
    recipe, inputs, token, width = ctx.remake
    if _made[0] is not token:
        _made[:] = [token, recipe(*inputs).reshape(-1, width)]
    return _made[1]


def _norm_made_again(x, weight, eps):
    return _norm_output(x, weight, eps)[0]


def _norm_forward(module, x):
    import torch

    weight = module.weight
    if (weight.requires_grad or x.dtype != weight.dtype or not torch.is_grad_enabled()
            or torch.is_autocast_enabled(x.device.type)):
        return module._plain_forward(x)
    eps = float(module.variance_epsilon)
    out = _function("norm").apply(x, weight, eps)
    remake_later(out, _norm_made_again, x, weight, eps)
    return out


def _fusable(layer, x, args, kwargs):
    """(weight, bias, A, B, scale) when this call is plain LoRA in one precision; else None."""
    import torch

    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    names = layer.active_adapters
    if (len(names) != 1 or names[0] not in layer.lora_A
            or names[0] in getattr(layer, "lora_variant", {})):  # DoRA and the like
        return None
    name = names[0]
    base, a, b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    if type(base) is not torch.nn.Linear or not isinstance(layer.lora_dropout[name],
                                                           torch.nn.Identity):
        return None
    if b.bias is not None or torch.is_autocast_enabled(x.device.type):
        return None
    if base.weight.requires_grad or not (x.dtype == base.weight.dtype == a.weight.dtype ==
                                         b.weight.dtype):
        return None
    return base.weight, base.bias, a.weight, b.weight, float(layer.scaling[name])


def _forward(layer, x, *args, **kwargs):
    parts = _fusable(layer, x, args, kwargs)
    if parts is None:
        return layer._peft_forward(x, *args, **kwargs)
    return _function("linear").apply(x, *parts)


def _mlp_forward(module, x):
    parts = [_fusable(getattr(module, name), x, (), {})
             for name in ("gate_proj", "up_proj", "down_proj")]
    if any(p is None for p in parts):
        return module._plain_forward(x)
    return _function("mlp").apply(x, *parts[0], *parts[1], *parts[2])


def _gated_silu_mlp(module) -> bool:
    """A Llama-style MLP: down(silu(gate(x)) * up(x)), its three layers PEFT LoRA layers."""
    import torch
    from peft.tuners.lora.layer import Linear

    act = getattr(module, "act_fn", None)
    return (all(type(getattr(module, n, None)) is Linear
                for n in ("gate_proj", "up_proj", "down_proj"))
            and (isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"))


def apply(model) -> int:
    """Switch every PEFT `lora.Linear` of the model, every gated SiLU MLP made of three and every
    `PLAIN_NORMS` norm to the fused pass (per call, each falls back to its own); returns how many
    LoRA layers were switched."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            count += 1
        elif _gated_silu_mlp(module) and not hasattr(module, "_plain_forward"):
            module._plain_forward = module.forward
            module.forward = types.MethodType(_mlp_forward, module)
        elif type(module).__name__ in PLAIN_NORMS and not hasattr(module, "_plain_forward"):
            module._plain_forward = module.forward
            module.forward = types.MethodType(_norm_forward, module)
    return count
