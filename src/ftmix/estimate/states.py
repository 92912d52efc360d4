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
from ftmix.estimate import quantized as q
from ftmix.estimate.constants import ADAM_K, FP32_GRAD_PARTITION, LORA_PARAM_BYTES
from ftmix.mixture import Mixture, resolve_saved_modules, resolve_targets
from ftmix.mixture.engine import (DS_MAX_REUSE_DISTANCE, DS_PARAM_PERSISTENCE, DS_PREFETCH_BUCKET, bucket_settings,
                                  deepspeed_config, stage3_settings)


def trainable_params(model: ModelSpec, m: Mixture) -> int:
    """Full fine-tuning: every parameter. LoRA: r * (d_in + d_out) per wrapped linear per layer
    (PEFT's lora_A: r x d_in, lora_B: d_out x r, no bias)."""
    if m.lora == 0:
        return model.total_params
    return sum(trainable_tensors(model, m))


def trainable_tensors(model: ModelSpec, m: Mixture) -> list[int]:
    """Element counts of every trainable tensor under LoRA: lora_A (r x d_in) and lora_B
    (d_out x r) per wrapped linear, DoRA's magnitude (d_out) beside them (PEFT
    ``DoraLinearLayer``), and the full copies ``modules_to_save`` trains (``ModulesToSaveWrapper``)."""
    targets = set(resolve_targets(m, model))
    layer = []
    for lin in model.linears:
        if lin.name in targets:
            layer += [m.lora * lin.d_in, m.lora * lin.d_out] + ([lin.d_out] if m.dora else [])
    return layer * model.layers + [saved_module_params(model, name) for name in resolve_saved_modules(m, model)]


def saved_module_params(model: ModelSpec, name: str) -> int:
    if name == "embed_tokens":
        return model.embedding_params
    return model.vocab * model.hidden + (model.vocab if model.lm_head_bias else 0)


def upcast_fp32(m: Mixture) -> bool:
    """PEFT's ``prepare_model_for_kbit_training`` keeps the non-quantized parameters in fp32
    (embeddings, head, norms, biases); DeepSpeed's engine casts the module back to 16 bits, and
    pure 16-bit QLoRA (litgpt's ``bf16-true``) does not prepare the model."""
    return m.quantize != "none" and m.zero == 0 and not m.pure16


def is_quantized(lin) -> bool:
    """bitsandbytes replaces ``nn.Linear`` modules: not the q/k norms, nor fused 3-D experts."""
    return lin.role != "norm" and not lin.name.startswith("experts.")


def quantization_constants(model: ModelSpec, m: Mixture) -> float:
    """Bytes of the quantization constants (absmax, code books; int8's row scales) of the base."""
    if m.quantize == "none":
        return 0.0
    quantized = [lin for lin in model.linears if is_quantized(lin)]
    codes = sum(lin.d_in * lin.d_out * m.bits / 8 for lin in quantized)
    return model.layers * (sum(q.quantized_bytes(lin.d_in, lin.d_out, m) for lin in quantized) - codes)


def frozen_bytes(model: ModelSpec, m: Mixture) -> float:
    """Bytes of the frozen base under LoRA: 16-bit, or quantized linears (``quantized``) with the
    rest in 16 bits or, prepared for k-bit training, fp32."""
    e = m.element_bytes
    prequantized = model.quantization
    if m.quantize == "none" and not prequantized:
        return model.total_params * e
    rest = 4 if upcast_fp32(m) else e
    quantized = [lin for lin in model.linears if is_quantized(lin)]
    linear = sum(q.quantized_bytes(lin.d_in, lin.d_out, m, prequantized) for lin in quantized)
    other = model.total_params - model.layers * sum(lin.d_in * lin.d_out for lin in quantized)
    return model.layers * linear + other * rest


def _layer_tensors(model: ModelSpec, m: Mixture) -> list[int]:
    """Element counts of one decoder layer's tensors, LoRA matrices included; a 4-bit weight under
    ZeRO-3 is its packed codes in 16-bit storage elements (``bnb_4bit_quant_storage``: n / 4)."""
    packed = 4 if (m.bits == 4 and m.zero == 3) else 1
    layer = [lin.d_in * lin.d_out // (packed if is_quantized(lin) else 1) for lin in model.linears]
    layer += [lin.d_out for lin in model.linears if lin.bias]
    layer += [model.hidden] * model.norms_per_layer * (1 if model.norm == "rms" else 2)
    if m.lora:
        targets = set(resolve_targets(m, model))
        layer += [m.lora * n for lin in model.linears if lin.name in targets for n in (lin.d_in, lin.d_out)]
    return layer


def _head_tensors(model: ModelSpec) -> list[int]:
    """The output head's tensors (the embedding when tied)."""
    if model.tied_embeddings:
        return [model.embedding_params]
    return [model.vocab * model.hidden] + ([model.vocab] if model.lm_head_bias else [])


def _all_tensors(model: ModelSpec) -> list[int]:
    return (_layer_tensors(model, Mixture(lora=0)) * model.layers + _head_tensors(model)
            + ([] if model.tied_embeddings else [model.embedding_params]) + [model.hidden])


def persistent_params(model: ModelSpec, m: Mixture, threshold: int = DS_PARAM_PERSISTENCE) -> int:
    """Elements of the tensors ZeRO-3 keeps whole on every rank (besides their partition):
    those at or under ``stage3_param_persistence_threshold`` (``partition_parameters``
    ``ds_persist``): norms, biases, LoRA matrices, and in small models whole layers."""
    top = _head_tensors(model) + [model.hidden] * (1 if model.norm == "rms" else 2)
    if not model.tied_embeddings:
        top.append(model.embedding_params)
    return model.layers * sum(x for x in _layer_tensors(model, m) if x <= threshold) + \
        sum(x for x in top if x <= threshold)


def largest_trainable(model: ModelSpec, m: Mixture) -> int:
    """Elements of the largest trainable tensor: a LoRA matrix (r x the wider side of its layer)
    or, in full fine-tuning, the largest module's weight."""
    if m.lora == 0:
        return model.largest_module_params
    targets = set(resolve_targets(m, model))
    return max(m.lora * max(lin.d_in, lin.d_out) for lin in model.linears if lin.name in targets)


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
    reduce_buckets: float  # DeepSpeed's gradient reduction buckets (see reduce_buckets)
    gathered: float  # stage 3: 16-bit parameters gathered in full during forward and backward
    norm_temp: float  # stages 1/2 with offload: the fp64 copy of a gradient taken for its norm
    forward_gathered: float  # stage 3 on N ranks: gathered copies + all-gather buffer in a forward
    tied_wait: float  # stage 2, tied head: its whole gradient, waiting during the backward (booked as a temporary)
    cpu_parameters: float
    cpu_optimizer: float

    @property
    def zero_buffers(self) -> float:
        return self.reduce_buckets + self.gathered


def model_states(model: ModelSpec, m: Mixture, deepspeed: dict | None = None) -> ModelStates:
    """``deepspeed``: the user's DeepSpeed config (bucket sizes, overlap_comm); ftmix's own
    (``mixture.engine.deepspeed_config``) when None."""
    n = m.world
    e = m.element_bytes
    trainable = trainable_params(model, m)
    lora = m.lora > 0
    # PEFT adds the adapters beside the base weights (which all stay, frozen); full fine-tuning
    # trains the base itself
    frozen = frozen_bytes(model, m) if lora else 0.0
    # bytes per trainable parameter: parameter, gradient, optimizer states (with master copy)
    if m.zero >= 1:
        # DeepSpeed keeps an fp32 master partition and its fp32 gradient whatever the precision:
        # stage_1_and_2 ``single_partition_of_fp32_groups`` and stage3 ``fp32_partitioned_groups_flat``
        # are ``.clone().float()`` of the 16-bit (or fp32) partition
        p_b, g_b, o_b = e, e, ADAM_K
        needs_fp32_grad = True
    elif not lora and m.precision in ("bf16", "fp16"):
        # HF Trainer's mixed precision without DeepSpeed: fp32 weights, fp32 gradients, fp32 AdamW
        # moments, no separate master copy (autocast's 16-bit weight copies are activations)
        p_b, g_b, o_b = 4, 4, 8
        needs_fp32_grad = False
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

    params = frozen + trainable * p_b
    grads = trainable * g_b
    opt = trainable * o_b
    saved = sum(saved_module_params(model, x) for x in resolve_saved_modules(m, model)) if lora else 0
    if saved and m.zero == 0 and not m.pure16 and not upcast_fp32(m) and m.precision != "fp32":
        # PEFT upcasts only the adapters to fp32: a ``modules_to_save`` copy keeps the base's 16 bits,
        # and torch's AdamW its moments in them (measured by the twin)
        params -= saved * (p_b - e)
        grads -= saved * (g_b - e)
        opt -= saved * (o_b - 2 * e)
    if m.optimizer != "adamw_torch":
        # bitsandbytes' moments: 8-bit for tensors of 4096 elements or more (a ZeRO partition is one
        # flat tensor), fp32 below; the fp32 master under DeepSpeed stays
        opt = (trainable * (ADAM_K - 8 + q.optimizer_bytes_per_element(m)) if m.zero >= 1
               else q.optimizer_bytes(trainable_tensors(model, m) if lora else _all_tensors(model), m))

    temp = trainable * FP32_GRAD_PARTITION if needs_fp32_grad else 0.0
    host_temp = temp
    if m.zero >= 1 and e != FP32_GRAD_PARTITION:
        # the step flattens the 16-bit gradient partition, then casts it to fp32 (stage_1_and_2
        # and stage3 ``step``): e + 4 bytes per element of the partition (measured)
        temp += trainable * e
    if m.zero >= 1:
        opt /= n
        temp /= n
        host_temp /= n
    if m.zero >= 2:
        grads /= n
    persistence, prefetch, reuse = stage3_settings(deepspeed or {}, model.hidden)
    # stage 3 gathers a parameter by copying it in full beside its partition, except on one rank
    # with the partitions on the device, where the partition is the whole parameter
    # (``_no_gather_coalesced``)
    gathers = m.zero == 3 and (n > 1 or m.offload == "all")
    persistent = e * persistent_params(model, m, persistence) if gathers else 0.0
    if m.zero == 3:
        # a 4-bit base shards its packed codes (16-bit storage) but every rank keeps each weight's
        # quantization constants whole: they are the quant state, not parameters DeepSpeed sees
        constants = quantization_constants(model, m) if lora else 0.0
        params = (params - constants) / n + constants
    cpu_params = cpu_opt = 0.0
    if m.offload in ("optimizer", "all"):
        # every rank on the node offloads its own partition; reduced gradients go straight to the
        # CPU optimizer's fp32 buffer (DeepSpeed's estimator: GPU = 2P under ZeRO-2 offload)
        # plus DeepSpeed's host-side 16-bit buffers, per element of the rank's partition (measured
        # by the twin): stage 1/2 a 16-bit copy of the partition for the copy-back
        # (``param_buffer_of_bit16_for_cpu_offload_groups``) and the accumulated 16-bit gradients
        # (``accumulated_grads_in_cpu``); stage 3 its 16-bit gradient partitions
        # (``grad_partitions_flat_buffer``)
        host_16bit = trainable / n * (2 * e if m.zero in (1, 2) else e)
        cpu_opt = (opt + host_temp + host_16bit) * m.gpus
        opt = temp = 0.0
        # stage 1 keeps the whole 16-bit gradients to the end of the backward (it reduces in the
        # epilogue, offload or not); stage 2 sends each reduced bucket to the host. Both keep a
        # 16-bit staging buffer of the largest parameter (``temp_grad_buffer_for_gpu_offload``).
        if m.zero != 1:
            grads = 0.0
        if m.zero in (1, 2):
            grads += e * largest_trainable(model, m)
    if m.offload == "all":
        cpu_params = params * m.gpus
        params = 0.0
    params += persistent
    tied_wait = 0.0
    if m.zero == 2 and not lora and model.tied_embeddings:
        # a tied embedding's gradient is complete only after the embedding's own backward, at the
        # very end: the output head's share waits whole on the GPU until then (measured), and is
        # reduced and gone by the backward's epilogue
        tied_wait = e * model.embedding_params
        grads += tied_wait
    gathered = e * gathered_params(model, m, persistence, prefetch, reuse) if gathers else 0.0
    # with the optimizer offloaded, stages 1/2 take each reduced gradient's norm on the GPU in fp64
    # at the accumulation boundary (``set_norm_for_param_grad_in_gpu``, ``get_norm_dtype``):
    # 8 bytes per element of the largest trainable tensor, when the backward ends (measured)
    norm_temp = 8.0 * largest_trainable(model, m) if m.zero in (1, 2) and m.offload != "none" else 0.0
    forward_gathered = e * forward_gathered_params(model, m, persistence, prefetch, reuse) if m.zero == 3 and n > 1 else 0.0
    return ModelStates(params, grads, opt, temp, reduce_buckets(m, trainable, model.hidden, deepspeed),
                       gathered, norm_temp, forward_gathered, tied_wait, cpu_params, cpu_opt)


def forward_gathered_params(model: ModelSpec, m: Mixture, persistence: int = DS_PARAM_PERSISTENCE,
                            prefetch: int = DS_PREFETCH_BUCKET, reuse: int = DS_MAX_REUSE_DISTANCE) -> int:
    """Stage 3 on N > 1 ranks: elements gathered in a micro step's forward once the engine has
    traced a step, besides the partitions. Every parameter, persistent ones included, is
    re-gathered then (measured by the device-memory twin); the first fetch prefetches up to
    ``stage3_prefetch_bucket_size`` elements in one coalesced all-gather, whose flat buffer
    (``_all_gather_dtype``) lives until the last parameter in it is waited for, beside each
    parameter's own copy made by ``AllGatherCoalescedHandle.wait`` (``torch.cat`` of its
    partitions; DeepSpeed 0.19.8). One rank takes ``_no_gather_coalesced``: no flat buffer."""
    total = total_with_adapters(model, m)
    persistent = persistent_params(model, m, persistence)  # already counted with the parameters
    copies = min(total, persistent + gathered_params(model, m, persistence, prefetch, reuse) + prefetch)
    return min(prefetch, total) + copies - persistent


def reduce_buckets(m: Mixture, trainable: int, hidden: int = 0, deepspeed: dict | None = None) -> float:
    """Bytes of DeepSpeed's gradient reduction buckets: ``reduce_bucket_size`` 16-bit elements.

    Stages 1/2 (``stage_1_and_2.setup_buckets``, DeepSpeed 0.19.8) allocate one per bucket, two
    with overlap_comm, at the first gradient of a backward and free them in its epilogue
    (``_release_ipg_buffers``); stage 1 reduces only at the accumulation boundary, so with
    gradient accumulation its buckets live through the next micro steps' forward too. Stage 3
    keeps one persistent buffer even with overlap_comm (``stage3._setup_for_real_optimizer``;
    measured by the device-memory twin, benchmarks/results/conformance.md).
    """
    if m.zero == 0:
        # torch DDP's reducer keeps gradient buckets as large as the gradients (HF Trainer leaves
        # gradient_as_bucket_view off): PEFT's fp32 adapters, or fp32 weights in mixed precision
        grad_bytes = 4 if m.precision in ("bf16", "fp16", "fp32") else m.element_bytes
        return grad_bytes * trainable if m.world > 1 else 0.0
    elements, overlap = bucket_settings(deepspeed or deepspeed_config(m, trainable), m, hidden)
    copies = 2 if overlap and m.zero in (1, 2) else 1
    return m.element_bytes * elements * copies


def gathered_params(model: ModelSpec, m: Mixture, persistence: int = DS_PARAM_PERSISTENCE,
                    prefetch: int = DS_PREFETCH_BUCKET, reuse: int = DS_MAX_REUSE_DISTANCE) -> int:
    """Stage 3: elements of the non-persistent parameters held gathered at the backward's peak
    (the loss head's backward), once the engine has traced a step.

    ``PartitionedParameterCoordinator.__params_to_release`` (DeepSpeed 0.19.8) keeps a parameter
    gathered after a module's use when the trace uses it again before ``stage3_max_reuse_distance``
    elements of parameters have been fetched. Between a decoder layer's forward and its next use
    lie the head's forward and backward and, per later layer, its forward, backward (and
    recomputation with checkpointing): so the head and the last layers stay gathered, all of a
    small model. The input embedding is used again only when its backward runs (trained, or its
    output made to require grad for checkpointing). The prefetcher then gathers up to
    ``stage3_prefetch_bucket_size`` elements of the next layer not held. Measured with the
    device-memory twin (benchmarks/results/conformance.md).
    """
    layer = _layer_tensors(model, m)
    layer_np = sum(x for x in layer if x > persistence)
    head = _head_tensors(model)
    kept = sum(x for x in head if x > persistence)
    distance = 2 * sum(head)
    passes = 3 if m.gc else 2
    for _ in range(model.layers):
        if distance >= reuse:
            return kept + min(prefetch, layer_np)
        kept += layer_np
        distance += passes * sum(layer)
    embedding_backward = m.lora == 0 or m.gc
    if not model.tied_embeddings and embedding_backward and distance < reuse \
            and model.embedding_params > persistence:
        kept += model.embedding_params
    return kept
