"""Architecture-aware peak memory per GPU: model states + the larger of the backward peak and the
optimizer step, plus what the CUDA runtime holds outside tensors.

The backward peak is the larger of two moments (measured on CPU with a live-bytes counter, see
activations.py): the loss head's backward, when every layer's activations (or, with GC, every
checkpoint) are still stored; and one layer's backward, when the loss head is freed but, with GC,
that layer has been recomputed. Gradients are counted whole during the backward (gradient
accumulation keeps them between micro steps). The optimizer step's fp32 gradient partition comes
when the activations are gone.
"""

from __future__ import annotations

from ftmix.catalog import ModelSpec
from ftmix.estimate import activations as act
from ftmix.estimate.constants import (ALLOCATOR_SLACK, CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES,
                                      NCCL_BUFFER_BYTES, SAFETY_MARGIN)
from ftmix.estimate.result import Estimate
from ftmix.estimate.states import model_states, total_with_adapters, trainable_params
from ftmix.mixture import Mixture


def activation_peak(model: ModelSpec, m: Mixture) -> tuple[dict[str, float], str]:
    """Bytes of activations at the backward peak, by component, and where the peak falls."""
    tokens = m.tokens
    layer = act.layer_activations(model, m)
    per_layer = act.checkpoint_bytes(model, m) if m.gc else layer.total
    stored = (model.layers * per_layer + act.final_norm_bytes(model, m)) * tokens
    _, logits_peak = act.logits_bytes(model, m)
    at_loss = logits_peak * tokens
    recompute = layer.total * tokens if m.gc else 0.0
    working = act.backward_transient(model, m, layer) * tokens
    parts = {"activations": stored, "loss_head": 0.0, "gc_recompute": 0.0, "backward_working": 0.0}
    if at_loss >= recompute + working:
        parts["loss_head"] = at_loss
        return parts, "backward of the loss head (fp32 logits)"
    parts["gc_recompute"], parts["backward_working"] = recompute, working
    return parts, "backward of a decoder layer"


def analytic_estimate(model: ModelSpec, m: Mixture, gpu_memory: float | None = None, gpu: str | None = None,
                      safety_margin: float = SAFETY_MARGIN) -> Estimate:
    states = model_states(model, m)
    persistent = {"parameters": states.parameters, "gradients": states.gradients,
                  "optimizer": states.optimizer, "zero_buffers": states.zero_buffers}
    acts, where = activation_peak(model, m)
    breakdown = dict(persistent)
    if sum(acts.values()) >= states.optimizer_temp:
        breakdown.update(acts)
        breakdown["optimizer_step"] = 0.0
    else:
        breakdown.update({k: 0.0 for k in acts})
        breakdown["optimizer_step"] = states.optimizer_temp
        where = "optimizer step (fp32 gradient partition)"
    dynamic = sum(v for k, v in breakdown.items() if k not in ("parameters", "gradients", "optimizer"))
    overheads = {"allocator_slack": ALLOCATOR_SLACK * dynamic, "cuda_context": CUDA_CONTEXT_BYTES,
                 "cublas_workspace": CUBLAS_WORKSPACE_BYTES,
                 "nccl_buffers": NCCL_BUFFER_BYTES if m.world > 1 else 0.0}
    return Estimate(method="analytic", model=model.name, gpu=gpu, mixture=m,
                    total_params=total_with_adapters(model, m), trainable_params=trainable_params(model, m),
                    breakdown=breakdown, overheads=overheads,
                    cpu_bytes=states.cpu_optimizer + states.cpu_parameters,
                    gpu_memory=gpu_memory, safety_margin=safety_margin, notes=(f"peak at: {where}",))
