"""Time of one optimizer step at a fixed effective batch: compute, communication, offload, optimizer.

The compute's FLOPs are the step's kernels' (``plan.kernels``: every matmul and attention kernel,
equal to torch's FlopCounterMode on the real step). Before it, and still for what it does not
model, FLOPs per token (Kaplan et al. 2020; Narayanan et al. 2021): forward 2N for N matmul parameters;
full fine-tuning's backward 4N (input and weight gradients), LoRA's 2N (frozen weights need input
gradients only) plus the adapters' 6 per trainable parameter; GC adds one forward (2N). Attention
adds 4 s h per layer per token forward (QK^T and PV), halved by causal FlashAttention/SDPA kernels,
not by eager; its backward is twice the forward. Collectives are ring algorithms over the slowest
link: all-reduce 2 (N-1)/N x bytes, reduce-scatter and all-gather (N-1)/N x bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmix.catalog import GpuSpec, ModelSpec
from ftmix.estimate import activations as act
from ftmix.estimate.fsdp2 import fsdp2_states
from ftmix.estimate.quantized import dequantized_copy_bytes, quantized_bytes
from ftmix.estimate.states import frozen_bytes, is_quantized, trainable_params
from ftmix.errors import FtmixError
from ftmix.mixture import Mixture, grad_accum, resolve_targets
from ftmix.plan.constants import DEFAULT, RuntimeConstants
from ftmix.plan.kernels import step_kernels

STUDY_EFFECTIVE_BATCH = 8


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step, by part."""

    compute: float
    attention: float
    memory_bound: float
    communication: float
    offload: float
    optimizer: float
    overhead: float
    grad_accum: int
    samples: int  # per optimizer step, all ranks together
    dequantize: float = 0.0  # quantized base weights expanded to 16 bits for each use
    flops: float = 0.0  # useful FLOPs per optimizer step on one GPU (no recompute; causal attention halved)
    peak_flops: float = 0.0  # the GPU's datasheet FLOP/s at the step's precision

    @property
    def total(self) -> float:
        return (self.compute + self.attention + self.memory_bound + self.communication + self.offload
                + self.optimizer + self.overhead + self.dequantize)

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: useful FLOPs over what the GPU's peak does in the step's time."""
        return self.flops / (self.total * self.peak_flops) if self.total and self.peak_flops else 0.0

    def to_json(self) -> dict:
        return {"step_time_s": round(self.total, 4), "compute_s": round(self.compute, 4),
                "attention_s": round(self.attention, 4), "memory_bound_s": round(self.memory_bound, 4),
                "communication_s": round(self.communication, 4), "offload_s": round(self.offload, 4),
                "optimizer_s": round(self.optimizer, 4), "overhead_s": round(self.overhead, 4),
                "dequantize_s": round(self.dequantize, 4), "tflops_per_step": round(self.flops / 1e12, 3),
                "mfu": round(self.mfu, 4), "grad_accum": self.grad_accum, "samples_per_step": self.samples}


def matmul_params(model: ModelSpec) -> int:
    """Parameters that take part in matmuls: every linear and the output head (not the lookup)."""
    return model.layers * sum(lin.d_in * lin.d_out for lin in model.linears) + model.vocab * model.hidden


def flops_per_token(model: ModelSpec, m: Mixture) -> tuple[float, float]:
    """(GEMM FLOPs, attention-kernel FLOPs) per token for forward + backward (+ recompute)."""
    n = matmul_params(model)
    forward = 2 * n
    if m.lora:
        backward = 2 * n + 6 * trainable_params(model, m)
    else:
        backward = 4 * n
    gemm = forward + backward + (forward if m.gc else 0)
    attn_fwd = 4 * m.seq_len * model.q_dim * model.layers * (1.0 if m.attn == "eager" else 0.5)
    attention = attn_fwd * (3 + (1 if m.gc else 0))
    return gemm, attention


# FlashAttention-2 and SDPA's flash kernel skip the blocks a causal mask hides: about half the
# products torch's FLOP count gives them (Dao 2023, FlashAttention-2, sec. 3.1.1)
CAUSAL_SKIP = 0.5


def micro_step_flops(model: ModelSpec, m: Mixture) -> tuple[float, float, float]:
    """(GEMM FLOPs, attention FLOPs, useful FLOPs) of one micro step from the kernel list
    (``plan.kernels``, equal to torch's FlopCounterMode on the real step): fused causal attention
    at the half its kernels compute, eager attention's products whole; useful FLOPs leave out GC's
    recompute (MFU's numerator). A mixture the kernel list does not model (DoRA, mixture-of-experts
    layers) takes the per-token estimate."""
    try:
        kernels = step_kernels(model, m)
    except FtmixError:
        gemm, attention = flops_per_token(model, m)
        forward_share = 1 - (1 / 4 if m.gc else 0)
        return gemm * m.tokens, attention * m.tokens, (gemm + attention) * m.tokens * forward_share
    skip = CAUSAL_SKIP if m.attn != "eager" else 1.0
    gemm = attention = useful = 0.0
    for k in kernels:
        flops = k.total_flops * (skip if k.name.startswith("attention") else 1.0)
        if k.name.startswith("attention"):
            attention += flops
        else:
            gemm += flops
        useful += flops if k.phase != "recompute" else 0.0
    return gemm, attention, useful


# Operations a micro step issues (forward, backward, optimizer), per decoder layer and once
# (benchmarks/results/host_overhead.json, least squares over 2, 6 and 12 layers): a layer with every
# linear trained, or a frozen layer plus each LoRA-wrapped linear's own; GC re-runs the forward.
HOST_OPS_TRAINED_LAYER = {False: 237.0, True: 368.0}  # Llama's seven linears, no biases
HOST_OPS_PER_TRAINED_LINEAR = 7.67  # a fused projection has fewer (Phi-3: qkv_proj, gate_up_proj)
HOST_OPS_PER_TRAINED_BIAS = 5.0  # Qwen2's q/k/v biases
HOST_OPS_FROZEN_LAYER = {False: 176.0, True: 272.0}
HOST_OPS_PER_LORA_LINEAR = {False: 34.0, True: 51.6}
HOST_OPS_BASE = {False: 105.0, True: 105.0}


def host_ops(model: ModelSpec, m: Mixture) -> float:
    """Operations the host issues for one micro step of ``m`` on ``model``."""
    if m.lora == 0:
        linears = [lin for lin in model.linears if lin.role != "norm"]
        per_layer = (HOST_OPS_TRAINED_LAYER[m.gc] + HOST_OPS_PER_TRAINED_LINEAR * (len(linears) - 7)
                     + HOST_OPS_PER_TRAINED_BIAS * sum(lin.bias for lin in linears))
    else:
        wrapped = sum(1 for lin in model.linears if lin.name in set(resolve_targets(m, model)))
        per_layer = HOST_OPS_FROZEN_LAYER[m.gc] + wrapped * HOST_OPS_PER_LORA_LINEAR[m.gc]
    return model.layers * per_layer + HOST_OPS_BASE[m.gc]


def host_issue(model: ModelSpec, m: Mixture, device_seconds: float, c: RuntimeConstants) -> float:
    """Seconds per micro step the GPU waits on the host: issuing the step's operations takes
    ``host_ops x host_seconds_per_op``, overlapped with the kernels already queued, so only what
    exceeds the device's own time is exposed (small models, short batches)."""
    return max(0.0, host_ops(model, m) * c.host_seconds_per_op - device_seconds)


def grad_accum_steps(m: Mixture, effective_batch: int) -> int:
    return grad_accum(effective_batch, m.micro_batch, m.world)


def pcie_bandwidth(gpu: GpuSpec, c: RuntimeConstants) -> float:
    return {"volta": c.pcie_gen3, "turing": c.pcie_gen3, "hopper": c.pcie_gen5}.get(gpu.architecture, c.pcie_gen4)


def link_bandwidth(gpu: GpuSpec, m: Mixture, c: RuntimeConstants) -> float:
    """Bytes/s of the slowest hop of a ring across the job: NVLink/PCIe inside a node, the node's
    network between nodes (a ring crosses each node boundary once per direction)."""
    link = gpu.intra_node_bandwidth
    if m.nodes > 1:
        link = min(link, gpu.inter_node_bandwidth)
    return link * c.link_efficiency


def communication(model: ModelSpec, gpu: GpuSpec, m: Mixture, accum: int, c: RuntimeConstants) -> float:
    n = m.world
    gathers = 3 if m.gc else 2  # forward, backward (and recompute)
    # ZeRO-3's per-module fetch and release hooks run on one GPU too (partitioned_param_coordinator)
    hooks = 0.0
    if m.zero == 3:
        modules = model.layers * (len(model.linears) + model.norms_per_layer) + 3  # + embedding, norm, head
        hooks = accum * gathers * modules * c.zero3_fetch_overhead_s
    if m.fsdp2:
        return fsdp2_communication(model, gpu, m, accum, c)
    if n == 1:
        return hooks
    bw = link_bandwidth(gpu, m, c)
    e = m.element_bytes
    grads = e * trainable_params(model, m)
    frac = (n - 1) / n
    if m.zero == 0:  # DDP all-reduce once per optimizer step (no_sync during accumulation)
        return 2 * frac * grads / bw * c.exposed_comm_ddp
    if m.zero in (1, 2):
        # both reduce-scatter gradients and all-gather the updated 16-bit partitions (2 Psi, as
        # DDP; Rajbhandari et al. 2020 sec. 7); stage 1 at the accumulation boundary only, stage 2
        # every micro step, since it keeps no full gradient between them
        reduces = accum if m.zero == 2 else 1
        seconds = reduces * frac * grads / bw + frac * grads / bw
        return seconds * c.exposed_comm_zero12
    # stage 3 gathers every parameter, frozen or not (quantized ones in their packed bytes)
    weights = frozen_bytes(model, m) if (m.lora and m.quantize != "none") else e * model.total_params
    per_micro = (gathers * frac * weights / bw + frac * grads / bw) * c.exposed_comm_zero3
    return accum * per_micro + hooks


def fsdp2_gathers(m: Mixture) -> int:
    """All-gathers of every parameter per micro step under FSDP2: FULL_SHARD gathers each layer for
    its forward and again for its backward (GC's recompute runs inside that backward, gathered);
    SHARD_GRAD_OP keeps the forward's gather until the backward."""
    return 2 if m.zero == 3 else 1


def fsdp2_communication(model: ModelSpec, gpu: GpuSpec, m: Mixture, accum: int, c: RuntimeConstants) -> float:
    """FSDP2 per micro step: all-gathers of every parameter in the gathered dtype (16 bits under
    its mixed precision; a 4-bit weight's packed codes) and one reduce-scatter of the trainable gradients in the reduce dtype
    (fp32), ring algorithms, overlapped with compute as ZeRO-3's prefetching is (the same exposed
    fraction: no FSDP2 measurement yet to fit its own). One group per decoder layer: no ZeRO-3
    per-module hook cost. On one GPU nothing crosses a link."""
    n = m.world
    if n == 1:
        return 0.0
    states = fsdp2_states(model, m)  # gathered bytes as FSDP2 holds them: QLoRA's are its packed codes
    reduced = 2 if m.pure16 else 4
    frac = (n - 1) / n
    gathered = model.layers * states.layer + states.root
    per_micro = (fsdp2_gathers(m) * gathered + reduced * trainable_params(model, m)) * frac
    return accum * per_micro / link_bandwidth(gpu, m, c) * c.exposed_comm_zero3


def offload_time(model: ModelSpec, gpu: GpuSpec, m: Mixture, accum: int, c: RuntimeConstants) -> tuple[float, float]:
    """(PCIe transfer seconds, CPU optimizer seconds) per optimizer step."""
    if m.offload == "none":
        return 0.0, 0.0
    pcie = pcie_bandwidth(gpu, c)
    e = m.element_bytes
    part = trainable_params(model, m) / (m.world if m.zero >= 1 else 1)
    if m.fsdp2:
        # CPUOffloadPolicy: each gather first copies the rank's shard to the GPU, each reduce-scatter's
        # fp32 gradient shard comes back; torch's AdamW steps on the CPU
        shards = frozen_bytes(model, m) if m.lora else (4 if m.precision in ("bf16", "fp16", "fp32") else e) * \
            model.total_params
        transfers = accum * (fsdp2_gathers(m) * shards / m.world + 4 * part)
        return transfers / pcie, part * m.gpus / c.cpu_adam_params_per_s
    # gradients down (every micro step under ZeRO-2's reduce-scatter), updated 16-bit weights up
    transfers = (accum if m.zero >= 2 else 1) * e * part + e * part
    if m.offload == "all":  # the rank's 16-bit partition crosses PCIe for every gather
        transfers += accum * (3 if m.gc else 2) * e * model.total_params / m.world
    cpu_step = part * m.gpus / c.cpu_adam_params_per_s  # the node's ranks share its CPU
    return transfers / pcie, cpu_step


def step_time(model: ModelSpec, gpu: GpuSpec, m: Mixture, effective_batch: int = STUDY_EFFECTIVE_BATCH,
              c: RuntimeConstants = DEFAULT) -> StepTime:
    accum = grad_accum_steps(m, effective_batch)
    tokens = m.tokens
    mfu = c.mfu_max * tokens / (tokens + c.mfu_half_tokens)
    peak = gpu.peak_flops_16bit / (16 if m.precision == "fp32" else 1)  # fp32 runs off the tensor cores
    gemm, attn, useful = micro_step_flops(model, m)
    compute = accum * gemm / (peak * mfu)
    if m.attn == "eager":
        scores = model.layers * model.heads * m.seq_len ** 2 * m.micro_batch * (1.5 if m.gc else 1.0)
        attention = accum * (attn / (peak * mfu) + scores * c.eager_bytes_per_score / gpu.memory_bandwidth)
    else:
        kernel = c.fa2_efficiency if m.attn == "fa2" else c.sdpa_efficiency
        attention = accum * attn / (peak * mfu * kernel)
    stored = act.layer_activations(model, m).total * model.layers * tokens
    memory_bound = accum * c.elementwise_passes * stored * (1.5 if m.gc else 1.0) / gpu.memory_bandwidth
    comm = communication(model, gpu, m, accum, c)
    transfers, cpu_step = offload_time(model, gpu, m, accum, c)
    if m.offload == "none":
        part = trainable_params(model, m) / (m.world if m.zero >= 1 else 1)
        optimizer = part * c.gpu_adam_bytes_per_param / gpu.memory_bandwidth
    else:
        optimizer = cpu_step
    dequantize = accum * dequantize_time(model, gpu, m)
    device = (compute + attention + memory_bound + dequantize) / accum
    overhead = accum * (c.step_overhead_s + host_issue(model, m, device, c))
    return StepTime(compute=compute, attention=attention, memory_bound=memory_bound, communication=comm,
                    offload=transfers, optimizer=optimizer, overhead=overhead,
                    grad_accum=accum, samples=accum * m.micro_batch * m.world,
                    dequantize=dequantize, flops=accum * useful, peak_flops=peak)


def dequantize_time(model: ModelSpec, gpu: GpuSpec, m: Mixture) -> float:
    """Seconds per micro step bitsandbytes spends expanding quantized weights: each use (forward,
    the backward's input gradient, GC's recompute) reads the packed weight and its constants and
    writes a 16-bit copy that the matmul reads again (``_gemm_4bit_default_impl``: dequantize, then
    ``F.linear``; ``MatMul4Bit.backward`` likewise), at the GPU's memory bandwidth. A fixed cost per
    step: QLoRA is a few % slower than LoRA on long batches and much slower on short ones (field notes)."""
    if m.quantize == "none" and not model.quantization:
        return 0.0
    quantized = [lin for lin in model.linears if is_quantized(lin)]
    packed = model.layers * sum(quantized_bytes(lin.d_in, lin.d_out, m, model.quantization) for lin in quantized)
    expanded = model.layers * sum(dequantized_copy_bytes(lin.d_in, lin.d_out, m) for lin in quantized)
    uses = 3 if m.gc else 2
    return uses * (packed + 2 * expanded) / gpu.memory_bandwidth
