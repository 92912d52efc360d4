"""Activation memory of a Llama-style decoder, term by term, in bytes per token (s x b = 1).

Each term is what autograd saves for backward in transformers 5.24 + PEFT 0.21 (counted to the
byte with ``ftmix.measure.memcount.saved_tensor_bytes`` on CPU; tests/estimate/test_activations_measured.py
re-measures it). Differences from the study's ``s*b*h*(34 + 5*a*s/h)`` (Korthikanti et al. 2022,
eq. 1): RMSNorm upcasts its input to fp32 (4h per norm); SwiGLU saves gate, SiLU output and up
(3 x I); grouped-query attention saves K/V at the KV width under SDPA/FA2 but repeated under eager;
SDPA and FlashAttention-2 keep only a log-sum-exp (4 bytes per head) instead of the s x s scores;
eager keeps the fp32 softmax output plus its 16-bit copy ((4 + e) * a * s per token); frozen weights
need no saved input; PEFT's fp32 adapters save an fp32 copy of each targeted layer's input.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmix.catalog import ModelSpec
from ftmix.mixture import Mixture, resolve_targets

FP32 = 4
RSQRT_BYTES = 4  # RMSNorm keeps rsqrt(variance) in fp32, one value per token


@dataclass(frozen=True)
class LayerActivations:
    """Bytes per token one decoder layer saves, split so GC and the backward peak can reuse parts."""

    attention: float  # norm 1, projections' inputs, Q/K/V, kernel state (linear in s)
    scores: float  # eager attention's s x s storage per token (0 for sdpa/fa2)
    mlp: float  # norm 2 and the MLP

    @property
    def total(self) -> float:
        return self.attention + self.scores + self.mlp


def saves_frozen_inputs(m: Mixture) -> bool:
    """Whether every linear saves its input, trainable or not: in full fine-tuning (weight
    gradients need it), and under ZeRO-3, whose ``LinearFunctionForZeroStage3``
    (``deepspeed/runtime/zero/linear.py``) replaces ``F.linear`` and saves input and weight
    whatever needs a gradient (measured by the twin). bitsandbytes' quantized linears run their own
    matmul, not ``F.linear``: under ZeRO-3 they save no input (measured: the twin of a QLoRA run)."""
    return m.lora == 0 or (m.zero == 3 and m.quantize == "none")


def repeats_kv(m: Mixture) -> bool:
    """Whether grouped-query K/V are repeated to the query heads' width before attention: eager
    always (``repeat_kv``); SDPA whenever a padding mask is passed (transformers 5.24
    ``use_gqa_in_sdpa``: CUDA's GQA path needs ``attention_mask is None``, so padded batches take
    ``repeat_kv``; packed batches of full rows have no mask); FlashAttention-2 never."""
    return m.attn == "eager" or (m.attn == "sdpa" and not m.packing)


def element_bytes(m: Mixture) -> int:
    return m.element_bytes


def adapters_fp32(m: Mixture) -> bool:
    """PEFT keeps adapters in fp32 under mixed precision; DeepSpeed's engine casts the whole module to
    16 bits (ZeRO >= 1); pure 16-bit training keeps them in 16 bits (ftmix passes PEFT
    ``autocast_adapter_dtype=False``, as litgpt's own LoRA does)."""
    return m.lora > 0 and m.zero == 0 and m.precision in ("bf16", "fp16")


def inputs_saved(model: ModelSpec, m: Mixture, role: str, width: int, targets: tuple[str, ...]) -> float:
    """Bytes a group of linears sharing one input saves: the 16-bit input once if any trains it in
    16 bits (once per linear when the input is fp32 under autocast); with PEFT's fp32 adapters under HF Trainer's autocast, one 16-bit copy per adapter
    (PEFT's ``_cast_input_dtype`` makes an fp32 copy, autocast casts it back for the matmul and
    autograd keeps that cast); plus the r-wide lora_A output per adapter, 16-bit either way."""
    e = element_bytes(m)
    group = [lin for lin in model.linears if lin.role == role]
    full = saves_frozen_inputs(m)
    wrapped = [lin for lin in group if lin.name in targets]
    saved = 0.0
    if autocast_fp32_weights(m):
        # an fp32 input is cast to 16 bits by each linear's autocast separately: one copy each
        saved += e * width * len(group)
    elif full or (wrapped and not adapters_fp32(m)):
        saved += e * width
    if wrapped and adapters_fp32(m):
        saved += e * width * len(wrapped)
    saved += e * m.lora * len(wrapped)  # lora_A output, saved by lora_B
    return saved


def autocast_fp32_weights(m: Mixture) -> bool:
    """Mixed-precision full fine-tuning without DeepSpeed: HF Trainer keeps the model in fp32 and
    runs the forward under autocast, so the residual stream stays fp32 (the embedding is not
    autocast) and every linear's weight is cast to 16 bits, a copy autograd keeps for backward."""
    return m.zero == 0 and m.lora == 0 and m.precision in ("bf16", "fp16")


def quantized_stream(m: Mixture) -> bool:
    """QLoRA as PEFT prepares it, without DeepSpeed (whose engine casts the module back to 16 bits):
    ``prepare_model_for_kbit_training`` upcasts the embedding, norms and head to fp32, so the
    residual stream is fp32, and bitsandbytes' ``Linear4bit.forward`` casts each output back to its
    input's dtype (``.to(inp_dtype)``): the MLP's gate, up and activation outputs are fp32 too;
    the fp32 head runs under autocast, which keeps its 16-bit weight copy (measured by the twin).
    Pure 16-bit QLoRA (``bf16-true``, litgpt's way) prepares nothing: all stays 16-bit."""
    return m.quantize != "none" and m.zero == 0 and not m.pure16


def fp32_residual(m: Mixture) -> bool:
    return autocast_fp32_weights(m) or quantized_stream(m)


def linear_output_bytes(m: Mixture) -> int:
    """Bytes per element of a decoder linear's output: fp32 from a quantized linear on an fp32 stream."""
    return FP32 if quantized_stream(m) else element_bytes(m)


def autocast_weight_copies(model: ModelSpec, m: Mixture) -> float:
    """Bytes of autocast's 16-bit weight copies that autograd saves for backward: every linear and
    the head when the model is fp32, every LoRA matrix when PEFT's adapters are (measured). With
    GC a layer's copies are dropped with its other saved tensors and made again in its recompute.
    Without GC under LoRA, the first layer's attention lora_A copies are not kept: its input (the
    embedding's output) needs no gradient, so autograd saves only what the weight gradient needs."""
    head = element_bytes(m) * model.vocab * model.hidden if fp32_residual(m) else 0.0
    if m.gc:
        return head
    first = 0.0
    if m.lora and adapters_fp32(m):
        targets = resolve_targets(m, model)
        first = element_bytes(m) * sum(m.lora * lin.d_in for lin in model.linears
                                       if lin.name in targets and lin.role == "attn_in")
    return model.layers * autocast_copies_per_layer(model, m) - first + head


def autocast_copies_per_layer(model: ModelSpec, m: Mixture) -> float:
    if autocast_fp32_weights(m):
        return element_bytes(m) * sum(lin.d_in * lin.d_out for lin in model.linears)
    if adapters_fp32(m):
        targets = resolve_targets(m, model)
        return element_bytes(m) * sum(m.lora * (lin.d_in + lin.d_out) for lin in model.linears if lin.name in targets)
    return 0.0


def norm_saved(model: ModelSpec, m: Mixture) -> float:
    e, h = element_bytes(m), model.hidden
    if autocast_fp32_weights(m):
        e = FP32  # the normed output that the weight gradient needs is fp32 there
    if model.norm == "rms":
        return FP32 * h + RSQRT_BYTES + (e * h if m.lora == 0 else 0)  # fp32 upcast; normed for weight grad
    return e * h + 2 * FP32  # torch layer_norm: input, mean, rstd


def layer_activations(model: ModelSpec, m: Mixture) -> LayerActivations:
    e, h, inter = element_bytes(m), model.hidden, model.intermediate
    targets = resolve_targets(m, model) if m.lora else ()
    norm = norm_saved(model, m)
    kv_width = model.q_dim if repeats_kv(m) else model.kv_dim
    attention = norm + inputs_saved(model, m, "attn_in", h, targets)
    attention += e * (model.q_dim + 2 * kv_width)  # Q (after RoPE), K, V
    if m.attn == "eager":
        scores = model.heads * m.seq_len * (FP32 + (e if e != FP32 else 0))
        attention += inputs_saved(model, m, "attn_out", model.q_dim, targets)
    else:
        # a padding mask reaches SDPA as booleans; torch converts it to an additive mask in the
        # query's dtype (b x 1 x s x s) that the kernel keeps for backward: e * s per token per layer
        scores = e * m.seq_len if (m.attn == "sdpa" and not m.packing) else 0.0
        attention += e * model.q_dim + FP32 * model.heads  # kernel output (= o_proj input) and log-sum-exp
        if adapters_fp32(m):
            attention += inputs_saved(model, m, "attn_out", model.q_dim, targets)
        else:
            attention += _lora_only(model, m, "attn_out", targets)
    mlp_norm = norm if model.norms_per_layer > 1 else 0.0
    if model.norms_per_layer > 1:
        mlp_in = inputs_saved(model, m, "mlp_in", h, targets)
    else:  # parallel block (phi-2): the MLP reads the attention's normed input, already counted
        mlp_in = _lora_only(model, m, "mlp_in", targets) + _fp32_casts(model, m, "mlp_in", h, targets)
    out = linear_output_bytes(m)
    if model.gated_mlp:
        act = 3 * out * inter  # SiLU input, SiLU output, up (the product's operands)
    elif model.model_type == "phi":
        act = 3 * out * inter  # gelu_new, a tanh formula: input, cube term, tanh output
    else:
        act = out * inter  # nn.GELU keeps its input
    mlp = mlp_norm + mlp_in + act + inputs_saved(model, m, "mlp_out", inter, targets)
    attention += dora_saved(model, m, ("attn_in", "attn_out"), targets)
    mlp += dora_saved(model, m, ("mlp_in", "mlp_out"), targets)
    return LayerActivations(attention=attention, scores=scores, mlp=mlp)


def int8_inputs_saved(model: ModelSpec, m: Mixture) -> float:
    """Bytes per token per layer LLM.int8 layers hold for backward: ``MatMul8bitLt`` keeps its
    input ``A`` as a context attribute (``ctx.tensors = (CAt, subA, A)``, not ``save_for_backward``),
    so GC's saved-tensor hooks never drop it: every layer's stays, with GC as without. Measured by
    the twin: the MLP's normed input (the residual stream's dtype), the attention output o_proj
    reads (16-bit) and the product down_proj reads (the linear outputs' dtype); the attention's
    normed input only under GC (without GC the twin finds it counted with what the layer saves
    anyway). The outlier columns ``subA`` (threshold 6.0) depend on the data
    and are left out."""
    if m.quantize != "bnb.int8" or not m.lora:
        return 0.0
    inputs = residual_bytes(m) * model.hidden * (model.norms_per_layer - (0 if m.gc else 1))
    return inputs + element_bytes(m) * model.q_dim + linear_output_bytes(m) * model.intermediate


def dora_weights(model: ModelSpec, m: Mixture) -> float:
    """Bytes per layer (not per token) DoRA saves for backward: each wrapped linear's combined
    weight W + s B A in 16 bits under autocast, whose row norm ``get_weight_norm`` takes
    (``torch.linalg.norm`` keeps its input), the norm, the r x d_in product ``get_lora_weight``
    makes from an identity, and three fp32 d_out vectors of the magnitude's scale (measured by
    the twin: PEFT 0.21). They stay for every layer under GC too (measured: the twin's loss-head
    peak holds both layers' with GC as without)."""
    if not m.dora or not m.lora:
        return 0.0
    e, targets = element_bytes(m), set(resolve_targets(m, model))
    return sum(e * (lin.d_in * lin.d_out + lin.d_out + m.lora * lin.d_in) + 3 * FP32 * lin.d_out
               for lin in model.linears if lin.name in targets)


def dora_saved(model: ModelSpec, m: Mixture, roles: tuple[str, ...], targets: tuple[str, ...]) -> float:
    """Bytes per token DoRA adds per wrapped linear (PEFT ``DoraLinearLayer.forward``: ``(mag_norm_scale
    - 1) * base_result + mag_norm_scale * lora_result * scaling``, the magnitude trained): the base
    output and the adapter's output, saved for the magnitude's gradient (measured by the twin)."""
    if not m.dora:
        return 0.0
    outs = sum(lin.d_out for lin in model.linears if lin.role in roles and lin.name in targets)
    return outs * (linear_output_bytes(m) + element_bytes(m))


def _lora_only(model: ModelSpec, m: Mixture, role: str, targets: tuple[str, ...]) -> float:
    """For 16-bit-trained layers whose input some other op already saves: only the adapters' r."""
    if m.lora == 0:
        return 0.0
    wrapped = [lin for lin in model.linears if lin.role == role and lin.name in targets]
    return element_bytes(m) * m.lora * len(wrapped)


def _fp32_casts(model: ModelSpec, m: Mixture, role: str, width: int, targets: tuple[str, ...]) -> float:
    if not adapters_fp32(m):
        return 0.0
    return element_bytes(m) * width * sum(1 for lin in model.linears if lin.role == role and lin.name in targets)


def residual_bytes(m: Mixture) -> int:
    """Bytes per element of the residual stream: fp32 when autocast runs an fp32 model."""
    return FP32 if fp32_residual(m) else element_bytes(m)


def checkpoint_bytes(model: ModelSpec, m: Mixture) -> float:
    """Non-reentrant GC keeps each layer's input hidden state: h residual elements per token per layer."""
    return residual_bytes(m) * model.hidden


def shared_inputs_bytes(model: ModelSpec, m: Mixture) -> float:
    """Bytes per token of what every layer reads and autograd keeps once for the whole model: RoPE's
    cos and sin (head_dim wide each, in the residual stream's dtype) and, with GC, the other
    inputs the checkpoints hold: the attention mask (SDPA's boolean s x s per sequence when padded,
    eager's additive one in the model's dtype; none for FlashAttention-2 or packed rows) and the int64
    position ids (measured by the device-memory twin)."""
    shared = 2 * residual_bytes(m) * model.head_dim
    if m.gc:
        mask = {"sdpa": 0 if m.packing else 1, "eager": residual_bytes(m)}.get(m.attn, 0)
        shared += mask * m.seq_len + 8
    return shared


def first_layer_unsaved(model: ModelSpec, m: Mixture) -> float:
    """Bytes per token the first layer does not save under LoRA without GC: its input, the frozen
    embedding's output, needs no gradient, so its input norm records nothing, and under eager
    attention ``Q @ K^T`` keeps Q only when K needs a gradient (k_proj trained) and K only when Q
    does (measured by the device-memory twin). GC's ``enable_input_require_grads`` makes the input
    require one."""
    if not m.lora or m.gc or embedding_trained(model, m):
        return 0.0
    unsaved = norm_saved(model, m)
    if m.attn == "eager":
        targets = resolve_targets(m, model)
        unsaved += element_bytes(m) * model.q_dim * (("k_proj" not in targets) + ("q_proj" not in targets))
    return unsaved


def backward_transient(model: ModelSpec, m: Mixture, layer: LayerActivations) -> float:
    """Working set of one layer's backward on top of what it saved (measured on CPU, see module doc).

    The MLP backward holds about three I-wide gradients and one h-wide one; eager attention's
    softmax backward holds (4 + e) bytes per score while the layer's MLP part is already freed.
    """
    e = element_bytes(m)
    mlp = e * (3 * model.intermediate + model.hidden)
    scores = layer.scores - layer.mlp if m.attn == "eager" else 0.0
    return max(mlp, scores)


def layer_forward_moment(model: ModelSpec, m: Mixture) -> float:
    """Bytes per token alive at the last decoder layer's forward peak: what earlier layers stored
    (with GC their checkpoints, the last layer's input included) and the shared inputs, plus the
    layer's own working set. Eager attention's peak is the fp32 softmax beside its fp32 input and
    the 16-bit scores, with the normed input, Q, K, V and, for grouped-query attention, K and V
    repeated to the query width, or, on short rows, the MLP's as under SDPA; SDPA's is the MLP's
    (normed input, attention sum, three I-wide tensors). Measured by the device-memory twin
    (ZeRO-3, two ranks, where it is the peak)."""
    e, h = element_bytes(m), model.hidden
    stored = (model.layers * checkpoint_bytes(model, m) if m.gc
              else (model.layers - 1) * layer_activations(model, m).total + checkpoint_bytes(model, m))
    qkv = e * (h + model.q_dim + 2 * model.kv_dim)
    mlp = e * (2 * h + 3 * model.intermediate)
    if m.attn == "eager":
        repeated = 2 * e * model.q_dim if repeats_kv(m) and model.kv_heads < model.heads else 0
        working = max(qkv + repeated + model.heads * m.seq_len * (e + 2 * FP32), mlp)
    else:
        working = max(qkv + e * model.q_dim + FP32 * model.heads, mlp)
    return stored + shared_inputs_bytes(model, m) + working


def loss_forward_extra(model: ModelSpec, m: Mixture) -> float:
    """Bytes per token alive at the loss's forward besides the logits: the model's last hidden
    state (still referenced by its output) and the shifted int64 labels."""
    return residual_bytes(m) * model.hidden + 8


def autocast_cache(model: ModelSpec, m: Mixture) -> float:
    """Bytes of 16-bit weight copies autocast's cache holds to the end of the forward: every layer's.
    Without GC autograd keeps them anyway (``autocast_weight_copies``); with GC they still live
    through the loss's forward (measured). Autocast caches casts of leaf tensors only: Falcon's
    ``FalconLinear`` multiplies by ``weight.T``, a view, so its base weights' copies are not cached
    (a real tiny Falcon, full fine-tuning + GC, two micro steps: the twin's peak is in the backward,
    0.874 GB, where the cache would have made it 0.934 in the second forward)."""
    if not m.gc:
        return 0.0
    if model.model_type == "falcon" and autocast_fp32_weights(m):
        return 0.0
    return model.layers * autocast_copies_per_layer(model, m)


def head_gradient_bytes(model: ModelSpec, m: Mixture) -> float:
    """Bytes of the output head's new weight gradient, V x h 16-bit elements (fp32 when autocast
    runs an fp32 model)."""
    return residual_bytes(m) * model.vocab * model.hidden


def norm_backward_transient(model: ModelSpec, m: Mixture) -> float:
    """Bytes per token an RMSNorm's backward holds besides what it saved: five fp32 h-wide
    temporaries (pow, mean and mul backward) and the input gradient cast back to 16 bits (measured)."""
    return 5 * FP32 * model.hidden + element_bytes(m) * model.hidden


def logits_moments(model: ModelSpec, m: Mixture) -> tuple[float, float]:
    """(forward, backward) peak bytes per token of the loss head.

    transformers' ForCausalLMLoss upcasts the logits to fp32 (``logits.float()``) and cross-entropy
    saves the fp32 log-softmax (4V). Forward peak: 16-bit logits + fp32 copy + log-softmax =
    (e + 4 + 4)V when e = 2; backward peak: log-softmax, its gradient and the input gradient, plus
    the 16-bit logits' gradient = 12V (measured). With fp32 logits the copy is free: 8V / 12V.
    """
    e, v = element_bytes(m), model.vocab
    forward = (e + FP32 + FP32) * v if e != FP32 else 2 * FP32 * v
    return forward, 3 * FP32 * v


def final_norm_bytes(model: ModelSpec, m: Mixture) -> float:
    """The final norm's saved tensors, and the head's 16-bit input when the head is trained (full
    fine-tuning, ZeRO-3's linear, or PEFT ``modules_to_save`` of the head)."""
    head_trained = saves_frozen_inputs(m) or m.zero == 3 or (m.lora and head_saved(model, m))
    return norm_saved(model, m) + (element_bytes(m) * model.hidden if head_trained else 0)


def head_saved(model: ModelSpec, m: Mixture) -> bool:
    """PEFT trains a copy of the output head (``modules_to_save``; a tied head is the embedding's)."""
    saved = set(m.saved_modules)
    return "lm_head" in saved or (model.tied_embeddings and "embed_tokens" in saved)


def embedding_trained(model: ModelSpec, m: Mixture) -> bool:
    saved = set(m.saved_modules)
    return "embed_tokens" in saved or (model.tied_embeddings and "lm_head" in saved)
