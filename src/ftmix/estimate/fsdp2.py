"""FSDP2 per rank (torch ``fully_shard``, torch 2.13 ``distributed/fsdp/_fully_shard``), as ftmix
wraps a model (``ftmix.engines.fsdp2``): one parameter group per decoder layer and one for the root
(embedding, final norm, output head).

- Sharded states: every parameter split on dim 0, padded to a multiple of the ranks
  (``FSDPParam._init_sharded_param``); gradients and AdamW's two moments on the trainable shards.
  Mixed precision keeps the shards as built (fp32 weights for full fine-tuning, PEFT's fp32
  adapters over a 16-bit base) and ``MixedPrecisionPolicy(param_dtype=16-bit, reduce_dtype=fp32)``
  gathers them in 16 bits; pure 16-bit shards 16-bit weights with no policy.
- Gathered groups: an all-gather fills one flat buffer of the whole group (``foreach_all_gather``),
  copied out into the per-parameter unsharded tensors; in the forward the flat buffer lives on until
  the next group's all-gather (``AllGatherState``). The root stays gathered from its forward to the
  end of the backward; FULL_SHARD (``reshard_after_forward=True``) frees a layer after its forward
  and gathers it again for the backward, prefetching the next layer's flat buffer; SHARD_GRAD_OP
  keeps every layer gathered from its forward until its backward.
- Reduce-scatter: a layer's 16-bit gradients are cast into one flat fp32 input (``foreach_reduce``),
  which lives on until the next reduce-scatter (``ReduceScatterState``).
- Activations: the one-rank model's in the gathered dtype (no autocast: the policy casts).
- QLoRA (4-bit, bitsandbytes' FSDP-QLoRA way): each quantized weight is its packed codes in 16-bit
  storage elements, sharded and gathered like any 16-bit parameter; its quant state (absmax, code
  books) is whole on every rank; the rest of the base stays 16-bit (no k-bit upcast, as TRL leaves
  a sharded QLoRA model), the adapters fp32 under the policy.
- ``--offload all`` (``CPUOffloadPolicy``): the sharded parameters, gradients and AdamW states live
  in host memory and the optimizer steps there; the GPU holds the gathered groups, the
  reduce-scatter buffers and the activations.

Checked against the FSDP2 simulation (``ftmix.measure.simulate``, equal to real gloo ranks) on the
catalog and tiny models: tests/estimate/test_fsdp2.py, benchmarks/results/fsdp2_analytic.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftmix.catalog import ModelSpec
from ftmix.estimate import activations as act
from ftmix.estimate.analytic import backward_terms, data_note, runtime_overheads
from ftmix.estimate.constants import SAFETY_MARGIN
from ftmix.estimate.result import Estimate
from ftmix.estimate.states import is_quantized, quantization_constants, total_with_adapters, trainable_params
from ftmix.mixture import Mixture, resolve_saved_modules, resolve_targets

FP32 = 4


@dataclass(frozen=True)
class Tensor:
    """One parameter as FSDP2 shards it: dim 0, the rest, its bytes as stored, trained or frozen."""

    dim0: int
    rest: int
    stored: int
    trainable: bool

    def shard(self, ranks: int) -> int:
        """Elements per rank, padded (dim 0 rounded up to a multiple of the ranks)."""
        return math.ceil(self.dim0 / ranks) * self.rest


def _bytes(m: Mixture) -> tuple[int, int, int, int]:
    """(stored bytes of a trained weight, of a frozen one, gathered bytes, reduce bytes)."""
    e = m.element_bytes
    if m.precision in ("bf16", "fp16"):
        return FP32, e, 2, FP32
    return e, e, e, e


def layer_tensors(model: ModelSpec, m: Mixture) -> list[Tensor]:
    """One decoder layer's parameters: its linears (weight d_out x d_in, bias), norms, and under
    LoRA the adapters (lora_A r x d_in, lora_B d_out x r, DoRA's magnitude d_out) beside a frozen base."""
    trained, frozen, _, _ = _bytes(m)
    base_trained = m.lora == 0
    stored = trained if base_trained else frozen
    out = []
    for lin in model.linears:
        if m.bits == 4 and is_quantized(lin):
            out.append(Tensor(packed_elements(lin.d_in * lin.d_out), 1, 2, False))
        else:
            out.append(Tensor(lin.d_out, lin.d_in, stored, base_trained))
        if lin.bias:
            out.append(Tensor(lin.d_out, 1, stored, base_trained))
    out += [Tensor(model.hidden, 1, stored, base_trained)] * model.norms_per_layer * (1 if model.norm == "rms" else 2)
    if m.lora:
        targets = set(resolve_targets(m, model))
        for lin in model.linears:
            if lin.name in targets:
                out += [Tensor(m.lora, lin.d_in, trained, True), Tensor(lin.d_out, m.lora, trained, True)]
                if m.dora:
                    out.append(Tensor(lin.d_out, 1, trained, True))
    return out


def packed_elements(n: int) -> int:
    """16-bit storage elements of ``n`` 4-bit codes: bitsandbytes' ``quantize_4bit`` packs two per
    byte into a ``((n + 1) // 4, 1)`` tensor of the quant storage dtype (FSDP2 shards it on dim 0)."""
    return (n + 1) // 4


def root_tensors(model: ModelSpec, m: Mixture) -> list[Tensor]:
    """The root group: the input embedding, the final norm and an untied output head; under LoRA
    frozen, with PEFT's trained copies of ``modules_to_save`` (kept in the base's 16 bits)."""
    trained, frozen, _, _ = _bytes(m)
    full = m.lora == 0
    stored = trained if full else frozen
    out = [Tensor(model.vocab, model.embedding_params // model.vocab, stored, full)]
    out += [Tensor(model.hidden, 1, stored, full)] * (1 if model.norm == "rms" else 2)
    if not model.tied_embeddings:
        out.append(Tensor(model.vocab, model.hidden, stored, full))
        if model.lm_head_bias:
            out.append(Tensor(model.vocab, 1, stored, full))
    if m.lora:
        for name in resolve_saved_modules(m, model):
            out.append(Tensor(model.vocab, model.hidden, frozen, True))
    return out


@dataclass(frozen=True)
class Fsdp2States:
    """Bytes per rank: the sharded states (on the GPU, or on the host with offload), one gathered
    layer and the gathered root, a layer's and the root's reduce-scatter input, one layer's 16-bit
    gradients as autograd makes them, and the output head's 16-bit gradient held to the root's
    reduce-scatter."""

    parameters: float
    gradients: float
    optimizer: float
    step_temp: float  # foreach AdamW's sqrt of the second moments
    layer: float
    root: float
    layer_reduce: float
    layer_grads: float
    first_grads: float  # the MLP output projection's 16-bit gradient, the layer backward's first
    head_grad: float
    cpu: float  # per node, with offload


def fsdp2_states(model: ModelSpec, m: Mixture) -> Fsdp2States:
    n = m.world
    _, _, gathered, reduce = _bytes(m)
    layer, root = layer_tensors(model, m), root_tensors(model, m)
    everything = layer * model.layers + root
    # the quantization constants (absmax, code books) are the weights' quant state, not parameters:
    # every rank keeps them whole beside its shards
    constants = quantization_constants(model, m)
    params = sum(t.shard(n) * t.stored for t in everything) + constants
    trainable = [t for t in everything if t.trainable]
    grads = sum(t.shard(n) * t.stored for t in trainable)
    moments = 2 if m.precision in ("bf16", "fp16", "fp32") else 1  # pure 16-bit: moments in 16 bits
    opt = sum(t.shard(n) * t.stored * 2 for t in trainable) if moments == 1 else \
        sum(t.shard(n) * FP32 * 2 for t in trainable)
    step_temp = sum(t.shard(n) * (t.stored if moments == 1 else FP32) for t in trainable)
    layer_gathered = sum(t.shard(n) * n * gathered for t in layer)
    root_gathered = sum(t.shard(n) * n * gathered for t in root)
    layer_reduce = sum(t.shard(n) * n * reduce for t in layer if t.trainable)
    layer_grads = sum(t.dim0 * t.rest * gathered for t in layer if t.trainable)
    first_grads = gathered * sum(_trained_elements(lin, m, model) for lin in model.linears if lin.role == "mlp_out")
    head_grad = act.head_gradient_bytes(model, m.with_(precision="bf16-true" if gathered == 2 else "fp32")) \
        if m.lora == 0 else 0.0
    cpu = 0.0
    if m.offload == "all":
        # CPUOffloadPolicy moves the parameters FSDP2 manages; a quant state stays where it was loaded
        cpu = (params - constants + grads + opt + step_temp) * m.gpus
        params, grads, opt, step_temp = constants, 0.0, 0.0, 0.0
    return Fsdp2States(params, grads, opt, step_temp, layer_gathered, root_gathered, layer_reduce, layer_grads,
                       first_grads, head_grad, cpu)


def _trained_elements(lin, m: Mixture, model: ModelSpec) -> int:
    """Elements of one linear's trainable tensors: the weight (and bias), or its LoRA adapters."""
    if m.lora == 0:
        return lin.params
    if lin.name not in resolve_targets(m, model):
        return 0
    return m.lora * (lin.d_in + lin.d_out) + (lin.d_out if m.dora else 0)


def compute_mixture(m: Mixture) -> Mixture:
    """The one-rank mixture whose activations an FSDP2 rank holds: the policy casts the gathered
    parameters to 16 bits, so the layers compute as in pure 16-bit training (no autocast)."""
    precision = f"{m.precision}-true" if m.precision in ("bf16", "fp16") else m.precision
    return m.with_(sharding="deepspeed", zero=0, offload="none", gpus=1, nodes=1, precision=precision)


def fsdp2_estimate(model: ModelSpec, m: Mixture, gpu_memory: float | None = None, gpu: str | None = None,
                   safety_margin: float = SAFETY_MARGIN, grad_accum: int | None = None) -> Estimate:
    """Rank 0's peak: the largest of the step's moments, each the sharded states plus what FSDP2
    holds gathered or reducing then, plus the one-rank activations of that moment. ``grad_accum=1``:
    the sharded gradients are set to None after each step, so the backward's first moments run
    without them."""
    s = fsdp2_states(model, m)
    one = compute_mixture(m)
    full_shard = m.zero == 3
    layers, tokens = model.layers, m.tokens
    stored, _, _, recompute, working = backward_terms(model, one)
    per_layer = (act.checkpoint_bytes(model, one) if one.gc else act.layer_activations(model, one).total) * tokens
    freed = (act.final_norm_bytes(model, one) + act.checkpoint_bytes(model, one)) * tokens if one.gc else 0.0
    no_grads = s.gradients if grad_accum == 1 else 0.0
    logits_forward, logits_backward = act.logits_moments(model, one)
    loss_forward = (logits_forward + act.loss_forward_extra(model, one)) * tokens
    # What is gathered when (measured by the simulation): through the forward FULL_SHARD holds one
    # layer and the flat all-gather buffer kept after it (``AllGatherState``), SHARD_GRAD_OP every
    # layer it has run and that buffer; the root's pre-backward prefetches the last layer, so FULL_SHARD
    # holds its flat buffer through the loss head's backward; a layer's backward holds it and the
    # prefetched buffer of the layer below (FULL_SHARD) or every layer not yet reduced (SHARD_GRAD_OP)
    # one rank gathers nothing: its unsharded parameters are filled from the shard, no flat buffer
    flat = s.layer if m.world > 1 else 0.0
    forward_held = s.layer + flat if full_shard else layers * s.layer + flat
    loss_held = flat if full_shard else layers * s.layer
    top = s.layer + flat if full_shard else layers * s.layer
    # below the top layer a FULL_SHARD backward prefetches the next layer down, if there is one
    below = s.layer + (flat if layers > 2 else 0.0) if full_shard else (layers - 1) * s.layer
    shared = act.shared_inputs_bytes(model, one) * tokens
    first = act.checkpoint_bytes(model, one) * tokens + shared  # the embedding's output, RoPE's tables
    before_last = (layers - 1) * per_layer + first if not one.gc else layers * per_layer + shared
    moments = {
        "forward of the loss head (fp32 logits)":
            dict(gathered_params=s.root + forward_held - (s.layer if full_shard else 0.0), activations=stored,
                 loss_head=loss_forward, gradients=-no_grads),
        "backward of the loss head (fp32 logits)":
            dict(gathered_params=s.root + loss_held, activations=stored, loss_head=logits_backward * tokens,
                 gradients=-no_grads),
        # a layer's backward peaks in its MLP with the output projection's weight gradient made (FSDP2's
        # gradients are new tensors until the layer's reduce-scatter)
        "backward of the top decoder layer":
            dict(gathered_params=s.root + top, activations=stored - freed, gc_recompute=recompute,
                 backward_working=working + s.head_grad + s.first_grads, gradients=-no_grads),
        "forward of the last decoder layer":
            dict(gathered_params=s.root + forward_held, activations=act.layer_forward_moment(model, one) * tokens,
                 gradients=-no_grads),
        # a group's flat all-gather buffer outlives the next group's copy-out: gathering the last layer
        # holds the flat buffers of it and of the layer before, beside its copied-out parameters
        "forward: the last decoder layer gathered (two flat all-gather buffers)":
            dict(gathered_params=s.root + forward_held + flat, activations=before_last, gradients=-no_grads),
        "forward: the first decoder layer gathered (the root's flat buffer kept)":
            dict(gathered_params=s.root + s.layer + (s.root + flat if flat else 0.0), activations=first,
                 gradients=-no_grads),
        "optimizer step (AdamW's temporaries)": dict(optimizer_step=s.step_temp),
    }
    if full_shard:
        # ftmix shards the root with reshard_after_forward=True too (torch keeps a root gathered only
        # when left to choose): the backward opens by gathering it again, its flat buffer beside its
        # parameters, with every saved activation and the loss's fp32 log-softmax still held
        moments["backward begins: the root gathered again"] = dict(
            gathered_params=s.root + (s.root if flat else 0.0), activations=stored,
            loss_head=FP32 * model.vocab * tokens, gradients=-no_grads)
    if m.lora == 0:
        moments["backward of the output head (its weight gradient)"] = dict(
            gathered_params=s.root + loss_held, activations=stored, backward_working=s.head_grad, gradients=-no_grads)
    if layers > 1:
        # the layer below the top: the top layer's reduce-scatter input kept, its activations freed
        moments["backward of a decoder layer (the one above reduce-scattered)"] = dict(
            gathered_params=s.root + below, zero_buffers=s.layer_reduce, activations=stored - freed - per_layer,
            gc_recompute=recompute, backward_working=working + s.head_grad + s.first_grads,
            gradients=-no_grads * (1 - 1 / layers))
    where, parts = max(moments.items(), key=lambda kv: sum(kv[1].values()))
    breakdown = {"parameters": s.parameters, "gradients": s.gradients, "optimizer": s.optimizer, "zero_buffers": 0.0,
                 "gathered_params": 0.0, "activations": 0.0, "loss_head": 0.0, "gc_recompute": 0.0,
                 "backward_working": 0.0, "optimizer_step": 0.0}
    for key, value in parts.items():
        breakdown[key] += value
    strategy = "FULL_SHARD" if full_shard else "SHARD_GRAD_OP"
    note = (f"FSDP2 fully_shard ({strategy}) over {layers} decoder layers and the root, rank 0 of {m.world}: "
            + ("sharded states on the host (CPUOffloadPolicy)" if m.offload == "all" else "sharded states on the GPU"))
    return Estimate(method="analytic", model=model.name, gpu=gpu, mixture=m,
                    total_params=total_with_adapters(model, m), trainable_params=trainable_params(model, m),
                    breakdown=breakdown, overheads=runtime_overheads(breakdown, m), cpu_bytes=s.cpu,
                    gpu_memory=gpu_memory, safety_margin=safety_margin,
                    notes=(f"peak at: {where}", data_note(m), note) + model.notes, grad_accum=grad_accum)
