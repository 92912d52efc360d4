"""``ftmix calibrate-gpu``'s fit (torch-free): the runtime constants a sweep on the user's device
gives (``ftmix.measure.gpu_sweep`` measures), written as a calibration file for that GPU type.

- GEMM efficiency: the step time's ``mfu = mfu_max x T / (T + mfu_half_tokens)`` fitted by least
  squares on its linear form 1/mfu = 1/mfu_max + (mfu_half_tokens/mfu_max) / T to the measured
  FLOP/s of a transformer layer's GEMMs at T tokens over the catalog's peak.
- Attention: SDPA's (and FlashAttention-2's, where installed) causal FLOP/s over the GEMMs' at the
  same tokens: ``sdpa_efficiency`` / ``fa2_efficiency``.
- Memory-bound work: a large element-wise kernel's bytes/s against the catalog's bandwidth scales
  the constants priced at that bandwidth (``elementwise_passes``, ``eager_bytes_per_score``,
  ``gpu_adam_bytes_per_param``: each the same bytes, moved at the bandwidth reached).
- Host-device copies: pinned copies' bytes/s, the PCIe constant of the GPU's generation.
- The host's time to issue one operation of a real step at tiny width (``host_seconds_per_op``).
- Collectives across the local GPUs: an all-reduce's bus bandwidth over the catalog's link,
  ``link_efficiency`` (needs two GPUs or more).
"""

from __future__ import annotations

import statistics

from ftmix.catalog import GpuSpec
from ftmix.errors import FtmixError
from ftmix.plan.constants import DEFAULT, MFU_CEILING, RANGES

FORMAT = "ftmix-gpu-calibration/1"


def fit_gemm(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(mfu_max, mfu_half_tokens) from (tokens, measured efficiency) points."""
    usable = [(t, e) for t, e in points if t > 0 and e > 0]
    if len(usable) < 2:
        raise FtmixError("calibrate-gpu: fewer than two GEMM measurements to fit")
    xs, ys = [1 / t for t, _ in usable], [1 / e for _, e in usable]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    if intercept <= 0:  # efficiency still rising at the largest T measured: its best is the ceiling seen
        best = max(e for _, e in usable)
        return min(best, MFU_CEILING), 0.0
    top = min(1 / intercept, MFU_CEILING)
    return top, max(0.0, slope / intercept)


def gemm_efficiency(tokens: float, top: float, half: float) -> float:
    return top * tokens / (tokens + half)


def fit(sweep: dict, gpu: GpuSpec) -> dict:
    """The calibration file's content from a sweep's measurements (``gpu_sweep.sweep``)."""
    gemm = [(p["tokens"], p["flops_per_s"] / gpu.peak_flops_16bit) for p in sweep["gemm"]]
    top, half = fit_gemm(gemm)
    constants = {"mfu_max": top, "mfu_half_tokens": half}
    residuals = [gemm_efficiency(t, top, half) / e - 1 for t, e in gemm]
    for kernel, key in (("sdpa", "sdpa_efficiency"), ("fa2", "fa2_efficiency")):
        points = [p for p in sweep.get("attention", []) if p["kernel"] == kernel]
        if points:
            ratios = [p["flops_per_s"] / gpu.peak_flops_16bit / gemm_efficiency(p["tokens"], top, half)
                      for p in points]
            constants[key] = statistics.median(ratios)
    if sweep.get("memory_bytes_per_s"):
        slower = gpu.memory_bandwidth / sweep["memory_bytes_per_s"]
        for key in ("elementwise_passes", "eager_bytes_per_score", "gpu_adam_bytes_per_param"):
            constants[key] = getattr(DEFAULT, key) * slower
    if sweep.get("host_copy_bytes_per_s"):
        constants[pcie_constant(gpu)] = sweep["host_copy_bytes_per_s"]
    if sweep.get("host_seconds_per_op"):
        constants["host_seconds_per_op"] = sweep["host_seconds_per_op"]
    if sweep.get("allreduce_busbw"):
        constants["link_efficiency"] = sweep["allreduce_busbw"] / gpu.intra_node_bandwidth
    clamped = [k for k, v in constants.items() if v > RANGES[k][1]]
    constants = {k: _clamped(k, v) for k, v in constants.items()}
    return {"format": FORMAT, "gpu": gpu.name, "device": sweep["device"], "constants": constants,
            "clamped_to_their_range": clamped,
            "fit": {"gemm_points": len(gemm), "gemm_residual_median": statistics.median(abs(r) for r in residuals),
                    "gemm_residual_worst": max(abs(r) for r in residuals)},
            "measurements": sweep, "skipped": sweep.get("skipped", [])}


def pcie_constant(gpu: GpuSpec) -> str:
    """The PCIe constant ``plan.runtime.pcie_bandwidth`` reads for this GPU's generation."""
    return {"volta": "pcie_gen3", "turing": "pcie_gen3", "hopper": "pcie_gen5"}.get(gpu.architecture, "pcie_gen4")


def _clamped(key: str, value: float) -> float:
    low, high, low_ok = RANGES[key]
    value = min(value, high)
    if value <= low and not low_ok:
        raise FtmixError(f"calibrate-gpu: the measured {key} ({value:g}) is not physical; the sweep went wrong")
    return float(value)
