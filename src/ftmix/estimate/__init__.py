"""Memory: what a fine-tuning step holds per GPU, before anything runs. Imports no torch.

``paper`` is the study's section 4 exactly; ``analytic`` models the real architecture term by term.
"""

from __future__ import annotations

from dataclasses import replace

from ftmix.catalog import GpuSpec, ModelSpec
from ftmix.errors import FtmixError
from ftmix.estimate import arch_fits
from ftmix.estimate.analytic import analytic_estimate
from ftmix.estimate.constants import SAFETY_MARGIN
from ftmix.estimate.fsdp2 import fsdp2_estimate
from ftmix.estimate.overheads import MemoryOverheads, with_overheads
from ftmix.estimate.paper import paper_estimate
from ftmix.estimate.result import Estimate, component_label
from ftmix.mixture import Mixture, check_mixture
from ftmix.units import human_bytes

METHODS = ("analytic", "paper")


def estimate(model: ModelSpec, m: Mixture, gpu: GpuSpec | None = None, method: str = "analytic",
             safety_margin: float = SAFETY_MARGIN, deepspeed: dict | None = None,
             overheads: MemoryOverheads | None = None, grad_accum: int | None = None) -> Estimate:
    """``deepspeed``: the user's own DeepSpeed config, whose bucket settings the analytic method
    uses (its stage, offload and precision must already be in ``m``: ``mixture.engine
    .flags_from_deepspeed``). ``overheads``: calibrated allocator slack and CUDA context.
    ``grad_accum``: micro steps per optimizer step (None: unknown, the gradients counted as kept
    between micro steps)."""
    check_mixture(m, model, gpu)
    if not 0 <= safety_margin < 1:
        raise FtmixError(f"safety margin must be in [0, 1), got {safety_margin}")
    check_grad_accum(grad_accum)
    memory = None if gpu is None else float(gpu.memory_bytes)
    name = None if gpu is None else gpu.name
    if method == "paper":
        if m.fsdp2:
            raise FtmixError("--method paper is the study's ZeRO formulas; FSDP2 is modelled by --method analytic")
        return with_overheads(paper_estimate(model, m, memory, name, safety_margin), overheads)
    if method == "analytic" and m.fsdp2:
        if deepspeed is not None:
            raise FtmixError("--sharding fsdp2 takes no DeepSpeed config")
        est = arch_fits.apply(fsdp2_estimate(model, m, memory, name, safety_margin, grad_accum), model)
        return with_overheads(est, overheads)
    if method == "analytic":
        est = arch_fits.apply(analytic_estimate(model, m, memory, name, safety_margin, deepspeed, grad_accum), model)
        est = _stage3_reason(est, model, memory, name, safety_margin, deepspeed, grad_accum)
        return with_overheads(on_nvme(est, deepspeed), overheads)
    raise FtmixError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def _stage3_reason(est: Estimate, model, memory, name, safety_margin, deepspeed, grad_accum) -> Estimate:
    """ZeRO-3 above ZeRO-2 surprises: say what it holds that stage 2 does not."""
    m = est.mixture
    if m.zero != 3 or deepspeed is not None:
        return est
    two = m.with_(zero=2, offload="optimizer" if m.offload == "all" else m.offload)
    other = arch_fits.apply(analytic_estimate(model, two, memory, name, safety_margin, None, grad_accum), model)
    if est.peak <= other.peak:
        return est

    keys = set(est.breakdown) | set(other.breakdown)
    diff = {k: est.breakdown.get(k, 0.0) - other.breakdown.get(k, 0.0) for k in keys}
    more = ", ".join(f"{component_label(k, m)} +{human_bytes(v)}" for k, v in
                     sorted(diff.items(), key=lambda kv: -kv[1]) if v > 0.005 * est.peak)
    less = -sum(v for v in diff.values() if v < 0)
    where = ("on one GPU there is nothing to shard" if m.world == 1 else
             f"sharding over {m.world} GPUs saves {human_bytes(less)}")
    note = (f"ZeRO-3 peaks {human_bytes(est.peak - other.peak)} above ZeRO-2 here ({where}): at its peak it "
            f"holds {more or 'its gathered parameters and buffers'}")
    return replace(est, notes=est.notes + (note,))


def on_nvme(est: Estimate, deepspeed: dict | None) -> Estimate:
    """DeepSpeed's NVMe offload (ZeRO-Infinity, ``offload_*.device: nvme``): the GPU holds what CPU
    offload leaves it; the offloaded states live on the NVMe drive and host RAM holds only the
    pinned swap buffers. Sizes from DeepSpeed's ``runtime/zero/offload_config.py``: parameters
    ``buffer_count`` (5) x ``buffer_size`` (1e8 elements) in 16 bits; optimizer ``buffer_count``
    (4) x the largest swapped sub-group (``sub_group_size``, 1e9 elements, or the whole partition
    if smaller) in fp32 (``swap_tensor/optimizer_utils.py``: ``SwapBufferManager``)."""
    zero = (deepspeed or {}).get("zero_optimization") or {}
    param, opt = zero.get("offload_param") or {}, zero.get("offload_optimizer") or {}
    nvme = {k for k, c in (("parameters", param), ("optimizer states", opt)) if str(c.get("device")).lower() == "nvme"}
    if not nvme:
        return est
    host = est.cpu_bytes
    buffers = 0.0
    if "parameters" in nvme:
        buffers += _num(param.get("buffer_count"), 5) * _num(param.get("buffer_size"), 1e8) * 2
    if "optimizer states" in nvme:
        partition = est.trainable_params / (est.mixture.world if est.mixture.zero >= 1 else 1)
        group = min(_num(zero.get("sub_group_size"), 1e9), partition)
        buffers += _num(opt.get("buffer_count"), 4) * group * 4
    path = param.get("nvme_path") or opt.get("nvme_path") or "the nvme_path"
    note = (f"offload to NVMe ({' and '.join(sorted(nvme))}, DeepSpeed ZeRO-Infinity): GPU memory as with CPU offload; "
            f"about {host / 1e9:.1f} GB of offloaded states per node on {path}, host RAM only for the pinned swap "
            f"buffers ({buffers / 1e9:.2f} GB per rank)")
    return replace(est, cpu_bytes=min(host, buffers * est.mixture.gpus), notes=est.notes + (note,))


def _num(value, default: float) -> float:
    try:
        return float(value) if value not in (None, "auto") else default
    except (TypeError, ValueError):
        raise FtmixError(f"DeepSpeed config: {value!r} is not a number") from None


def check_grad_accum(grad_accum) -> None:
    """None (not said) or a whole number of micro steps, 1 or more."""
    if grad_accum is not None and (isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1):
        raise FtmixError(f"--grad-accum must be a whole number of micro steps, 1 or more; got {grad_accum!r}")


__all__ = ["Estimate", "METHODS", "MemoryOverheads", "check_grad_accum", "estimate"]
