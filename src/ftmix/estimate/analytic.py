"""Architecture-aware peak memory per GPU: model states + the larger of the backward peak and the
optimizer step, plus what the CUDA runtime holds outside tensors.

The backward peak is the larger of two moments (measured on CPU with a live-bytes counter, see
activations.py): the loss head's backward, when every layer's activations (or, with GC, every
checkpoint) are still stored; and one layer's backward, when the loss head is freed but, with GC,
that layer has been recomputed. Gradients are counted whole during the backward (gradient
accumulation keeps them between micro steps); without accumulation a plain loop (no DeepSpeed, one
GPU) has none before the backward makes them. The optimizer step's fp32 gradient partition comes
when the activations are gone.
"""

from __future__ import annotations

from ftmix.catalog import ModelSpec
from ftmix.estimate import activations as act
from ftmix.estimate.constants import (ADAM_K, ALLOCATOR_SLACK, CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES,
                                      NCCL_BUFFER_BYTES, SAFETY_MARGIN)
from ftmix.estimate.result import Estimate
from ftmix.estimate.states import model_states, total_with_adapters, trainable_params
from ftmix.mixture import Mixture, resolve_targets


def activation_peak(model: ModelSpec, m: Mixture, buckets: float = 0.0,
                    absent: float = 0.0) -> tuple[dict[str, float], str, float, float]:
    """Bytes of activations at the backward peak, by component, where the peak falls, the
    reduction buckets alive then (stage 2 allocates them at the first gradient, after the loss
    head's backward; stage 1 with accumulation and stage 3 hold them throughout), and the
    gradient bytes not yet made then. ``absent``: gradient bytes that exist only once the backward
    has made them (no accumulation, ``fresh_gradients``): the last forward, the loss head's and the
    output head's backward come before them; a decoder layer's backward holds those of the layers
    above it, the larger of the top layer's and the bottom layer's moment (measured: real tiny runs
    and full-size simulations, tests/benchmarks/test_conformance.py, tests/measure/test_simulate.py)."""
    tokens = m.tokens
    layer = act.layer_activations(model, m)
    per_layer = act.checkpoint_bytes(model, m) if m.gc else layer.total
    stored, at_loss, loss_copies, recompute, working = backward_terms(model, m)
    parts = {"activations": stored, "loss_head": 0.0, "gc_recompute": 0.0, "backward_working": 0.0}
    buckets_at_loss = 0.0 if m.zero == 2 else buckets
    freed = _freed_before_first_gradient(model, m, layer) * tokens if m.zero == 2 else 0.0
    if m.gc:
        # by a recomputed layer's backward the final norm's backward has run and the layer's
        # checkpoint has become its recomputation's input (measured)
        freed += (act.final_norm_bytes(model, m) + act.checkpoint_bytes(model, m)) * tokens
    # full fine-tuning: the output head's weight gradient is the backward's first, and stage 2's
    # buckets arrive with it while every activation is still stored (measured)
    head_moment = act.head_gradient_bytes(model, m) + buckets if (m.lora == 0 or act.head_saved(model, m)) else 0.0
    layer_moment = recompute + working + buckets - freed
    # GC under autocast: at the last layer's forward the cache holds every layer's 16-bit weights
    # beside that layer's working set (eager's s x s softmax); measured the peak of Phi-3-mini full
    # fine-tuning + GC + eager at s = 4096 (simulated, 32 layers)
    cache = act.autocast_cache(model, m) if m.zero == 0 else 0.0
    last_forward = act.layer_forward_moment(model, m) * tokens + cache if cache else 0.0
    # the moments before the gradients that ``absent`` counts exist, and a decoder layer's
    layer_absent, layer_freed, layer_where = 0.0, 0.0, "backward of a decoder layer"
    if absent:
        # a layer's backward peaks before its own weight gradients, beside those of the layers
        # above it: at the top layer only the head's; at the bottom all but its own and an untied
        # embedding's, what the layers above saved freed (autocast's weight copies too)
        head = act.head_gradient_bytes(model, m) if m.lora == 0 else 0.0
        embedding = 0.0 if model.tied_embeddings else head
        layer_grads = max(0.0, absent - head - embedding) / model.layers
        own = min(absent, head)
        copies = 0.0 if m.gc else act.autocast_copies_per_layer(model, m)
        # the head's 16-bit copy under autocast is freed with the head's backward
        head_copy = act.element_bytes(m) * model.vocab * model.hidden if act.autocast_fp32_weights(m) else 0.0
        above = (model.layers - 1) * (per_layer * tokens + copies) + head_copy
        if absent - own <= above + embedding + layer_grads:
            layer_absent, layer_where = absent - own, "backward of the top decoder layer (most gradients still to come)"
        else:
            layer_absent, layer_freed = embedding + layer_grads, above
            layer_where = "backward of the bottom decoder layer (the layers above it freed)"
    layer_moment -= layer_absent + layer_freed
    early = max(at_loss + buckets_at_loss, head_moment) - absent
    if last_forward - absent > stored + max(early, layer_moment):
        parts["activations"] = last_forward
        return (parts, "forward of the last decoder layer (autocast's cache holds every layer's 16-bit weights)",
                0.0, absent)
    if at_loss + buckets_at_loss - absent >= max(layer_moment, head_moment - absent):
        parts["loss_head"] = at_loss - loss_copies
        if loss_copies:
            parts["autocast_copies"] = loss_copies
        return parts, "backward of the loss head (fp32 logits)", buckets_at_loss, absent
    if head_moment - absent >= layer_moment:
        parts["backward_working"] = head_moment - buckets
        return parts, "backward of the output head (its weight gradient)", buckets, absent
    parts["activations"] = stored - freed - layer_freed
    parts["gc_recompute"], parts["backward_working"] = recompute, working
    return parts, layer_where, buckets, layer_absent


def backward_terms(model: ModelSpec, m: Mixture) -> tuple[float, float, float, float, float]:
    """The backward's activation terms, in bytes: what the forward stored for it, the loss head's
    moment (and autocast's weight copies in it), a recomputed layer with GC, a layer's backward
    working set (see ``activation_peak``)."""
    tokens = m.tokens
    layer = act.layer_activations(model, m)
    per_layer = act.checkpoint_bytes(model, m) if m.gc else layer.total
    stored = (model.layers * per_layer + act.final_norm_bytes(model, m) + act.shared_inputs_bytes(model, m)
              - act.first_layer_unsaved(model, m)) * tokens + act.autocast_weight_copies(model, m)
    stored += model.layers * (act.dora_weights(model, m) + act.int8_inputs_saved(model, m) * tokens)
    forward, backward = act.logits_moments(model, m)
    logits_forward = (forward + act.loss_forward_extra(model, m)) * tokens
    forward = logits_forward + act.autocast_cache(model, m)
    at_loss = max(backward * tokens, forward)
    # at the loss's forward moment autocast's cached 16-bit weight copies are held too: theirs, not the loss's
    loss_copies = forward - logits_forward if forward >= backward * tokens else 0.0
    recompute = layer.total * tokens + act.autocast_copies_per_layer(model, m) if m.gc else 0.0
    working = act.backward_transient(model, m, layer) * tokens
    return stored, at_loss, loss_copies, recompute, working


def fresh_gradients(m: Mixture, gradients: float, grad_accum: int | None) -> float:
    """Gradient bytes that exist only from the backward on. Without accumulation (one micro step
    per optimizer step) a plain loop on one GPU sets them to None after each step
    (``optimizer.zero_grad(set_to_none=True)``, HF Trainer's ``model.zero_grad()``), so the
    forward and the loss head's backward run without them (measured: ``ftmix train`` and the
    fake-tensor simulation). DeepSpeed's engines keep their own gradient buffers and DDP its
    buckets, so those keep the whole figure; so does an unknown accumulation (``None``)."""
    if grad_accum != 1 or m.zero != 0 or m.world != 1:
        return 0.0
    return gradients


def _freed_before_first_gradient(model: ModelSpec, m: Mixture, layer) -> float:
    """Bytes per token of the last layer freed before its first trainable gradient, when stage 2's
    buckets arrive. The backward runs the MLP, then the attention output, then the kernel: with
    LoRA on q/k/v only, everything but the norm and the projections' inputs is freed by then;
    with LoRA on o_proj, the MLP part; with LoRA on the MLP, nothing."""
    if not m.lora or m.gc:
        return 0.0
    targets = set(resolve_targets(m, model))
    trained = {lin.role for lin in model.linears if lin.name in targets}
    if trained & {"mlp_in", "mlp_out"}:
        return 0.0
    if "attn_out" in trained:
        return layer.mlp
    # LoRA on q/k/v only: the largest moment after the first gradient is the layer's input norm's
    # backward (fp32 temporaries), its projections' inputs freed, the final norm's too (measured)
    working = act.backward_transient(model, m, layer)
    after = max(act.norm_saved(model, m) + act.norm_backward_transient(model, m), working)
    return layer.total + act.final_norm_bytes(model, m) - after + working


def analytic_estimate(model: ModelSpec, m: Mixture, gpu_memory: float | None = None, gpu: str | None = None,
                      safety_margin: float = SAFETY_MARGIN, deepspeed: dict | None = None,
                      grad_accum: int | None = None) -> Estimate:
    """``grad_accum``: micro steps per optimizer step; ``None`` (unknown) counts the gradients kept
    between micro steps, the larger peak."""
    states = model_states(model, m, deepspeed)
    breakdown = {"parameters": states.parameters, "gradients": states.gradients, "optimizer": states.optimizer}
    fresh = fresh_gradients(m, states.gradients, grad_accum)
    acts, where, buckets, absent = activation_peak(model, m, states.reduce_buckets, fresh)
    backward = sum(acts.values()) + buckets + states.gathered - absent
    # at the step the stage-1/2 buckets are released and stage 3 has re-partitioned its parameters
    step_buckets = states.reduce_buckets if m.zero == 3 else 0.0
    # the backward's end: activations gone, buckets reducing, offload's fp64 gradient norms (a tied
    # head's waiting gradient reduced by then)
    epilogue = states.reduce_buckets + states.norm_temp - states.tied_wait
    # without accumulation the tied embedding's gradient arrives at the backward's very end, beside
    # the output head's, and is summed out of place: two more V x h gradients (simulated)
    tied_sum = 2 * act.head_gradient_bytes(model, m) if fresh and model.tied_embeddings and m.lora == 0 else 0.0
    epilogue += tied_sum
    # stage 3 on N ranks: the first step's second micro step re-gathers every parameter through one
    # all-gather buffer (states.forward_gathered) before the optimizer has made its Adam moments
    # (8 of the ADAM_K bytes); with eager attention's fp32 scores it can top the backward
    no_moments_yet = states.optimizer * 8 / ADAM_K
    forward = (act.layer_forward_moment(model, m) * m.tokens + states.reduce_buckets + states.forward_gathered
               - no_moments_yet)
    step = states.optimizer_temp + step_buckets - states.tied_wait
    if states.forward_gathered and forward > max(backward, step, epilogue):
        acts = {"activations": act.layer_forward_moment(model, m) * m.tokens, "loss_head": 0.0,
                "gc_recompute": 0.0, "backward_working": 0.0}
        breakdown.update(optimizer=states.optimizer - no_moments_yet, zero_buffers=states.reduce_buckets,
                         gathered_params=states.forward_gathered, **acts, optimizer_step=0.0)
        where = "forward of a decoder layer (stage 3: parameters re-gathered through one all-gather buffer)"
    elif backward >= max(step, epilogue):
        breakdown.update(gradients=states.gradients - absent, zero_buffers=buckets, gathered_params=states.gathered,
                         **acts, optimizer_step=0.0)
        # stage 2's waiting tied-head gradient is autograd's output, not yet any parameter's
        # ``.grad``: a temporary, as the twin names it (tests/benchmarks/test_conformance.py)
        breakdown["gradients"] -= states.tied_wait
        breakdown["backward_working"] += states.tied_wait
    elif epilogue > step:
        breakdown.update(gradients=states.gradients - states.tied_wait, zero_buffers=states.reduce_buckets,
                         gathered_params=0.0, **{k: 0.0 for k in acts}, optimizer_step=states.norm_temp)
        breakdown["backward_working"] = tied_sum
        where = ("end of the backward (the tied embedding's gradient summed into the head's)" if tied_sum else
                 "end of the backward (gradient norms in fp64 for the offloaded optimizer)")
    else:
        breakdown.update(gradients=states.gradients - states.tied_wait, zero_buffers=step_buckets,
                         gathered_params=0.0, **{k: 0.0 for k in acts}, optimizer_step=states.optimizer_temp)
        where = "optimizer step (fp32 gradient partition)"
    overheads = runtime_overheads(breakdown, m)
    return Estimate(method="analytic", model=model.name, gpu=gpu, mixture=m,
                    total_params=total_with_adapters(model, m), trainable_params=trainable_params(model, m),
                    breakdown=breakdown, overheads=overheads,
                    cpu_bytes=states.cpu_optimizer + states.cpu_parameters,
                    gpu_memory=gpu_memory, safety_margin=safety_margin,
                    notes=(f"peak at: {where}", data_note(m)) + engine_note(m) + gradient_note(m, grad_accum, fresh) + model.notes,
                    grad_accum=grad_accum)


def runtime_overheads(breakdown: dict[str, float], m: Mixture) -> dict[str, float]:
    """What the CUDA runtime holds outside tensors: allocator slack on the step's transient bytes
    (everything but parameters, gradients and optimizer states), context, cuBLAS workspace, NCCL
    buffers with several GPUs. Shared by every method that counts tensors."""
    dynamic = sum(v for k, v in breakdown.items() if k not in ("parameters", "gradients", "optimizer"))
    return {"allocator_slack": ALLOCATOR_SLACK * dynamic, "cuda_context": CUDA_CONTEXT_BYTES,
            "cublas_workspace": CUBLAS_WORKSPACE_BYTES, "nccl_buffers": NCCL_BUFFER_BYTES if m.world > 1 else 0.0}


def engine_note(m: Mixture) -> tuple[str, ...]:
    """What the engine does that a user of DeepSpeed would not expect, said where it costs."""
    if act.autocast_fp32_weights(m):
        return ("--zero 0 full fine-tuning, as `ftmix train` runs it (HF Trainer, no DeepSpeed): fp32 weights, "
                "gradients and AdamW states (16 B per parameter) and autocast's 16-bit weight copies; "
                "--precision bf16-true halves the states",)
    return ()


def gradient_note(m: Mixture, grad_accum: int | None, fresh: float) -> tuple[str, ...]:
    if grad_accum is None:
        return ("gradients: kept between micro steps (gradient accumulation); --grad-accum 1 on one GPU "
                "without DeepSpeed peaks lower",) if m.zero == 0 and m.world == 1 and m.lora == 0 else ()
    if fresh:
        return ("gradients: none before the backward (no accumulation: set to None after each step)",)
    return ()


def data_note(m: Mixture) -> str:
    if m.packing:
        return f"data: packed, every micro batch is {m.micro_batch} x {m.seq_len} tokens"
    return (f"data: padded; the peak is for a micro batch of {m.micro_batch} x {m.seq_len} tokens, the longest "
            "a padded batch can be (batches padded to their longest sample peak lower)")
