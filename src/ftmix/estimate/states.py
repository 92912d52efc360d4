"""Model states per GPU and in CPU RAM, per ZeRO stage and offload (study section 4; Rajbhandari
et al. 2020 "ZeRO"; DeepSpeed 0.19 ``estimate_zero2/3_model_states_mem_needs``).

Full fine-tuning (DeepSpeed mixed precision): 16-bit parameters 2, 16-bit gradients 2, fp32
master + Adam moments K = 12 bytes per parameter, and the fp32 gradient partition the master update
reads (4 bytes; DeepSpeed's "4_grads_32bit"). LoRA: the frozen base is 16-bit (2 bytes per
parameter); the adapters carry 16 bytes each (PEFT fp32 adapter 4 + fp32 gradient 4 + moments 8
without DeepSpeed; 16-bit adapter 2 + gradient 2 + K = 12 under DeepSpeed: the same total).
ZeRO-1 partitions the optimizer states, ZeRO-2 also gradients, ZeRO-3 also parameters over
N_d = nodes x GPUs. Optimizer offload moves master weights, moments and fp32 gradients to CPU (and
the step with them; reduced gradients are copied to CPU as they come); parameter offload (stage 3)
moves the 16-bit parameter partitions too. Pure 16-bit training (``bf16-true``, no DeepSpeed):
2 + 2 + 4 bytes per trainable parameter (litgpt, torchtune: AdamW moments in bf16, no master).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmix.catalog import ModelSpec
from ftmix.estimate.constants import ADAM_K, FP32_GRAD_PARTITION, LORA_PARAM_BYTES
from ftmix.mixture import Mixture, resolve_targets
from ftmix.mixture.engine import DS_PREFETCH_BUCKET, overlap_comm, reduce_bucket_elements


def trainable_params(model: ModelSpec, m: Mixture) -> int:
    """Full fine-tuning: every parameter. LoRA: r * (d_in + d_out) per wrapped linear per layer
    (PEFT's lora_A: r x d_in, lora_B: d_out x r, no bias)."""
    if m.lora == 0:
        return model.total_params
    targets = set(resolve_targets(m, model))
    per_layer = sum(m.lora * (lin.d_in + lin.d_out) for lin in model.linears if lin.name in targets)
    return per_layer * model.layers


def total_with_adapters(model: ModelSpec, m: Mixture) -> int:
    """All parameters the trained model holds, as PEFT's ``get_nb_trainable_parameters`` counts
    them: the base model plus the LoRA adapters added beside its linears."""
    return model.total_params + (trainable_params(model, m) if m.lora else 0)


@dataclass(frozen=True)
class ModelStates:
    """Bytes per GPU (gpu_*) and per node in CPU RAM (cpu_*)."""

    parameters: float
    gradients: float
    optimizer: float
    optimizer_temp: float  # fp32 gradient partition at the step
    zero_buffers: float  # reduce buckets, stage-3 gathered modules and prefetch
    cpu_parameters: float
    cpu_optimizer: float


def model_states(model: ModelSpec, m: Mixture) -> ModelStates:
    n = m.world
    e = m.element_bytes
    trainable = trainable_params(model, m)
    lora = m.lora > 0
    # PEFT adds the adapters beside the base weights (which all stay, frozen); full fine-tuning
    # trains the base itself
    frozen = model.total_params if lora else 0
    # bytes per trainable parameter: parameter, gradient, optimizer states (with master copy)
    if m.zero >= 1:
        # DeepSpeed keeps an fp32 master partition and its fp32 gradient whatever the precision:
        # stage_1_and_2 ``single_partition_of_fp32_groups`` and stage3 ``fp32_partitioned_groups_flat``
        # are ``.clone().float()`` of the 16-bit (or fp32) partition
        p_b, g_b, o_b = e, e, ADAM_K
        needs_fp32_grad = True
    elif m.pure16:
        p_b, g_b, o_b = e, e, 2 * e  # torch AdamW keeps its moments in the parameters' dtype
        needs_fp32_grad = False
    elif lora and m.precision != "fp32":
        p_b, g_b, o_b = LORA_PARAM_BYTES, LORA_PARAM_BYTES, 8  # PEFT's fp32 adapters, torch AdamW
        needs_fp32_grad = False
    elif m.precision == "fp32":
        p_b, g_b, o_b = 4, 4, 8  # plain torch: the parameters are the fp32 weights, no master copy
        needs_fp32_grad = False
    else:
        p_b, g_b, o_b = e, e, ADAM_K
        needs_fp32_grad = True

    params = frozen * e + trainable * p_b
    grads = trainable * g_b
    opt = trainable * o_b
    temp = trainable * FP32_GRAD_PARTITION if needs_fp32_grad else 0.0
    if m.zero >= 1:
        opt /= n
        temp /= n
    if m.zero >= 2:
        grads /= n
    if m.zero == 3:
        params /= n
    cpu_params = cpu_opt = 0.0
    if m.offload in ("optimizer", "all"):
        # every rank on the node offloads its own partition; reduced gradients go straight to the
        # CPU optimizer's fp32 buffer (DeepSpeed's estimator: GPU = 2P under ZeRO-2 offload)
        cpu_opt = (opt + temp) * m.gpus
        opt = temp = grads = 0.0
    if m.offload == "all":
        cpu_params = params * m.gpus
        params = 0.0
    return ModelStates(params, grads, opt, temp, zero_buffers(model, m, trainable), cpu_params, cpu_opt)


def zero_buffers(model: ModelSpec, m: Mixture, trainable: int) -> float:
    """DeepSpeed's working buffers on the GPU.

    ZeRO-1/2/3 allocate ``reduce_bucket_size`` 16-bit elements for gradient reduction, twice with
    overlap_comm (``stage_1_and_2.setup_buckets``; ``stage3`` ipg buffer). ZeRO-3 also holds the
    module being computed, gathered in full (DeepSpeed's estimator: 4 bytes x largest layer, its
    16-bit weights and gradient; a frozen LoRA base module has no gradient: 2 bytes), plus the
    prefetch bucket of 16-bit parameters.
    """
    if m.zero == 0:
        return 0.0
    e = m.element_bytes
    buffers = e * reduce_bucket_elements(trainable) * (2 if overlap_comm(m) else 1)
    if m.zero == 3:
        gathered = (1 if m.lora else 2) * e * model.largest_module_params
        # the prefetch bucket holds parameters of the model: never more than the model itself
        buffers += gathered + e * min(DS_PREFETCH_BUCKET, model.total_params)
    return buffers
