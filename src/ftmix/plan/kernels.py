"""One micro step as the list of its matmul and attention kernels, with their FLOPs (issue 22).

Torch-free. FLOPs are counted as torch's ``FlopCounterMode`` counts them (torch 2.13,
``torch/utils/flop_counter.py``), so the list can be checked against the real step:

- a matmul of an (m x k) by a (k x n) operand is 2 m k n (``mm_flop``, ``addmm_flop``, ``bmm_flop``;
  a bias adds nothing);
- SDPA's fused attention (flash, memory-efficient, cuDNN) is two batched matmuls forward,
  4 b h s_q s_k d, and five backward (the scores recomputed, then the gradients of both products:
  ``sdpa_backward_flop_count``), with no discount for the causal mask (torch's own note: "We aren't
  accounting for causal attention here"); eager attention is its two ``matmul``s and autograd's
  gradients of them, each computed only for an input that needs one;
- autograd computes a gradient only where one is needed: a frozen weight gets no weight gradient,
  and a matmul whose input needs no gradient (the first layer's projections under LoRA, with
  nothing trained below them) gets no input gradient either.

Gradient checkpointing (non-reentrant, per decoder layer) runs each layer's forward again in its
backward, all but its last matmul (torch's early stop). bitsandbytes' 4-bit linears (``MatMul4Bit``) multiply by the de-quantized weight:
the same products as a 16-bit linear. The output head is one matmul (and its gradients).
Not listed: elementwise kernels, norms, the loss, de-quantization and the optimizer (no FLOPs in
torch's count), DoRA's weight norms, mixture-of-experts layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ftmix.catalog import ModelSpec
from ftmix.errors import FtmixError
from ftmix.mixture import Mixture, resolve_saved_modules, resolve_targets


@dataclass(frozen=True)
class Kernel:
    """One kernel of a micro step, ``count`` times (once per decoder layer, say)."""

    name: str
    kind: str  # "matmul" or "attention"
    phase: str  # "forward", "backward" or "recompute"
    flops: float  # per launch
    count: int

    @property
    def total_flops(self) -> float:
        return self.flops * self.count


def _matmul(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def parallel_attention(model: ModelSpec) -> bool:
    """Attention and MLP read the same normed input (Phi-2; Falcon's one-norm layers)."""
    return model.model_type == "phi" or (model.model_type == "falcon" and model.norms_per_layer == 1)


def _check(model: ModelSpec, m: Mixture) -> None:
    if any(lin.name.startswith("experts.") or lin.role == "router" for lin in model.linears):
        raise FtmixError(f"{model.name}: the kernel list does not model mixture-of-experts layers yet")
    if m.dora:
        raise FtmixError("--dora: the kernel list does not model DoRA's weight norms yet")


def layer_kernels(model: ModelSpec, m: Mixture, stream_needs_grad: bool) -> list[Kernel]:
    """One decoder layer's kernels, forward and backward, given whether its input needs a gradient."""
    tokens = m.micro_batch * m.seq_len
    targets = set(resolve_targets(m, model)) if m.lora else set()
    full = m.lora == 0
    out: list[Kernel] = []

    def linear(lin, input_needs_grad: bool) -> bool:
        """Append a linear's kernels; return whether its output needs a gradient."""
        out.append(Kernel(f"{lin.name}", "matmul", "forward", _matmul(tokens, lin.d_in, lin.d_out), 1))
        if full:
            if input_needs_grad:
                out.append(Kernel(f"{lin.name} input gradient", "matmul", "backward",
                                  _matmul(tokens, lin.d_in, lin.d_out), 1))
            out.append(Kernel(f"{lin.name} weight gradient", "matmul", "backward",
                              _matmul(tokens, lin.d_in, lin.d_out), 1))
            return True
        adapted = lin.name in targets
        if input_needs_grad:  # the frozen base still passes the gradient down
            out.append(Kernel(f"{lin.name} input gradient (frozen)", "matmul", "backward",
                              _matmul(tokens, lin.d_in, lin.d_out), 1))
        if adapted:
            r = m.lora
            out.append(Kernel(f"{lin.name} lora_A", "matmul", "forward", _matmul(tokens, lin.d_in, r), 1))
            out.append(Kernel(f"{lin.name} lora_B", "matmul", "forward", _matmul(tokens, r, lin.d_out), 1))
            out.append(Kernel(f"{lin.name} lora_B weight gradient", "matmul", "backward",
                              _matmul(tokens, r, lin.d_out), 1))
            out.append(Kernel(f"{lin.name} lora_B input gradient", "matmul", "backward",
                              _matmul(tokens, r, lin.d_out), 1))
            out.append(Kernel(f"{lin.name} lora_A weight gradient", "matmul", "backward",
                              _matmul(tokens, lin.d_in, r), 1))
            if input_needs_grad:
                out.append(Kernel(f"{lin.name} lora_A input gradient", "matmul", "backward",
                                  _matmul(tokens, lin.d_in, r), 1))
        return adapted or input_needs_grad

    by_role = {role: [lin for lin in model.linears if lin.role == role] for role in
               ("attn_in", "attn_out", "mlp_in", "mlp_out")}
    attn_grads = [linear(lin, stream_needs_grad) for lin in by_role["attn_in"]]
    out += attention_kernels(model, m, attn_grads)
    attended = any(attn_grads)
    after_attn = any([linear(lin, attended) for lin in by_role["attn_out"]]) or stream_needs_grad
    mlp_input = stream_needs_grad if parallel_attention(model) else after_attn
    mlp_mid = any([linear(lin, mlp_input) for lin in by_role["mlp_in"]])
    for lin in by_role["mlp_out"]:
        linear(lin, mlp_mid)
    return out


def attention_kernels(model: ModelSpec, m: Mixture, qkv_grads: list[bool]) -> list[Kernel]:
    """The attention products QK^T and PV of one layer: fused (SDPA; FlashAttention-2 counted as
    SDPA's flash kernel) or eager's two matmuls, GQA's K/V heads expanded to the query heads.
    ``qkv_grads``: whether Q, K and V need a gradient (one flag for a fused projection)."""
    b, s, h, d = m.micro_batch, m.seq_len, model.heads, model.head_dim
    product = 2.0 * b * h * s * s * d  # one of the two batched matmuls
    q, k, v = qkv_grads if len(qkv_grads) == 3 else qkv_grads * 3 if len(qkv_grads) == 1 else [any(qkv_grads)] * 3
    if m.attn != "eager":
        out = [Kernel("attention (fused)", "attention", "forward", 2 * product, 1)]
        if q or k or v:
            out.append(Kernel("attention backward (fused)", "attention", "backward", 5 * product, 1))
        return out
    out = [Kernel("attention QK^T", "matmul", "forward", product, 1),
           Kernel("attention PV", "matmul", "forward", product, 1)]
    # out = P V: P's gradient if Q or K needs one, V's if V does; scores = Q K^T: each side's if it needs one
    grads = sum([q or k, v, q, k])
    if grads:
        out.append(Kernel("attention gradients", "matmul", "backward", grads * product, 1))
    return out


def head_kernels(model: ModelSpec, m: Mixture, stream_needs_grad: bool) -> list[Kernel]:
    tokens = m.micro_batch * m.seq_len
    flops = _matmul(tokens, model.hidden, model.vocab)
    trained = m.lora == 0 or "lm_head" in resolve_saved_modules(m, model) or (
        model.tied_embeddings and "embed_tokens" in resolve_saved_modules(m, model))
    out = [Kernel("lm_head", "matmul", "forward", flops, 1)]
    if stream_needs_grad:
        out.append(Kernel("lm_head input gradient", "matmul", "backward", flops, 1))
    if trained:
        out.append(Kernel("lm_head weight gradient", "matmul", "backward", flops, 1))
    return out


def step_kernels(model: ModelSpec, m: Mixture) -> list[Kernel]:
    """Every matmul and attention kernel of one micro step (forward, backward, GC's recompute)."""
    return list(_step_kernels(model, m))


@lru_cache(maxsize=4096)
def _step_kernels(model: ModelSpec, m: Mixture) -> tuple[Kernel, ...]:
    _check(model, m)
    saved = resolve_saved_modules(m, model) if m.lora else ()
    embedding_trained = m.lora == 0 or "embed_tokens" in saved or (model.tied_embeddings and "lm_head" in saved)
    # GC under LoRA makes the embedding's output require a gradient (``enable_input_require_grads``)
    needs = embedding_trained or (m.gc and m.lora > 0)
    # torch's non-reentrant checkpoint stops recomputing once every saved tensor is back
    # (``set_checkpoint_early_stop``, on by default): the layer's last matmul, whose product nothing
    # saved needs, is not run again: the MLP output projection, or with LoRA on it (PEFT runs the
    # base, then lora_A, whose output lora_B saves, then lora_B) its lora_B
    targets = set(resolve_targets(m, model)) if m.lora else set()
    last = {f"{lin.name} lora_B" if lin.name in targets else lin.name
            for lin in model.linears if lin.role == "mlp_out"}
    out: list[Kernel] = []
    # the first layer differs from the rest only in whether its input needs a gradient; every layer
    # after one with a backward gets one
    first = layer_kernels(model, m, needs)
    after = needs or any(k.phase == "backward" for k in first)
    groups = [(first, model.layers)] if after == needs else \
        [(first, 1), (layer_kernels(model, m, after), model.layers - 1)]
    for layer, count in groups:
        out += [Kernel(k.name, k.kind, k.phase, k.flops, k.count * count) for k in layer]
        if m.gc:
            out += [Kernel(k.name, k.kind, "recompute", k.flops, k.count * count)
                    for k in layer if k.phase == "forward" and k.name not in last]
    out += head_kernels(model, m, after)
    return tuple(_merged(out))


def _merged(kernels: list[Kernel]) -> list[Kernel]:
    """Layers that run the same kernels are one entry counted per layer."""
    merged: dict[tuple, int] = {}
    for k in kernels:
        key = (k.name, k.kind, k.phase, k.flops)
        merged[key] = merged.get(key, 0) + k.count
    return [Kernel(name, kind, phase, flops, count) for (name, kind, phase, flops), count in merged.items()]


def step_flops(model: ModelSpec, m: Mixture) -> float:
    """FLOPs of one micro step on one rank, as torch's FlopCounterMode counts them."""
    return sum(k.total_flops for k in step_kernels(model, m))
