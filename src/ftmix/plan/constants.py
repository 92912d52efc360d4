"""Runtime-model constants, each with its source. A calibration file (JSON, written by hand, later
by the planned ``study`` stage from measured runs) overrides any of them by name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.files import finite, read_json


@dataclass(frozen=True)
class RuntimeConstants:
    # Achievable fraction of peak 16-bit FLOP/s for transformer GEMMs, saturating with the tokens per
    # micro step: mfu = mfu_max * T / (T + mfu_half_tokens). Megatron-LM reaches ~0.5-0.55 MFU on
    # A100 at large batch (Narayanan et al. 2021); HF + LoRA fine-tuning at 256-token micro steps
    # reports 0.2-0.3 (vTrain, MICRO 2024; the study's A100 runtimes).
    mfu_max: float = 0.55
    mfu_half_tokens: float = 256.0
    # Attention kernels relative to the GEMM efficiency: FlashAttention-2 reaches 50-73% of peak on
    # A100 (Dao 2023); PyTorch SDPA's flash backend runs the same algorithm with less tuning.
    fa2_efficiency: float = 1.0
    sdpa_efficiency: float = 0.85
    # Eager attention is memory bound: bytes moved per score element over forward + backward
    # (16-bit scores written and read, fp32 softmax out and in, 16-bit copy, and their gradients).
    eager_bytes_per_score: float = 40.0
    # Element-wise kernels (norms, activations, RoPE, casts) move each stored activation byte about
    # this many times across forward and backward.
    elementwise_passes: float = 6.0
    # Fraction of collective time not hidden behind compute: DDP buckets overlap the backward
    # (Li et al. 2020, PyTorch DDP); DeepSpeed stages 1/2 default to overlap_comm=false; stage 3
    # overlaps with prefetch.
    exposed_comm_ddp: float = 0.3
    exposed_comm_zero12: float = 1.0
    exposed_comm_zero3: float = 0.6
    # ZeRO-3 fetches and releases every submodule's parameters through Python hooks on each pass
    # (forward, backward, recompute): ~150 us per module fetch (partitioned_param_coordinator;
    # the reason ZeRO-3 "under-uses" GPUs for small models, study finding 3).
    zero3_fetch_overhead_s: float = 1.5e-4
    # Achievable fraction of link bandwidth for NCCL ring collectives (nccl-tests busbw ~80%).
    link_efficiency: float = 0.8
    # Host-device copies per GPU (bytes/s): PCIe Gen3 x16 ~12, Gen4 ~25, Gen5 ~50 GB/s effective.
    pcie_gen3: float = 12e9
    pcie_gen4: float = 25e9
    pcie_gen5: float = 50e9
    # DeepSpeedCPUAdam throughput per node (parameters/s): ~1e9/s with AVX-512 on a 40-core host
    # (Ren et al. 2021, ZeRO-Offload, table 2: 6x torch CPU Adam).
    cpu_adam_params_per_s: float = 1.0e9
    # GPU Adam step is memory bound: fused AdamW reads/writes ~ 36 bytes per trainable parameter
    # (fp32 master, m, v read+write, 16-bit grad read, 16-bit param write).
    gpu_adam_bytes_per_param: float = 36.0
    # Fixed per-micro-step overhead: Python, kernel launches, HF Trainer bookkeeping.
    step_overhead_s: float = 0.015

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = RuntimeConstants()


# The physical range of each constant: (low, high, low is allowed). Fractions of a peak are in
# (0, 1]; exposed communication in [0, 1]; rates and sizes positive; overheads may be zero.
RANGES = {"mfu_max": (0, 1, False), "mfu_half_tokens": (0, 1e9, True), "fa2_efficiency": (0, 2, False),
          "sdpa_efficiency": (0, 2, False), "eager_bytes_per_score": (0, 1e4, False),
          "elementwise_passes": (0, 1e3, True), "exposed_comm_ddp": (0, 1, True), "exposed_comm_zero12": (0, 1, True),
          "exposed_comm_zero3": (0, 1, True), "zero3_fetch_overhead_s": (0, 1, True), "link_efficiency": (0, 1, False),
          "pcie_gen3": (0, 1e13, False), "pcie_gen4": (0, 1e13, False), "pcie_gen5": (0, 1e13, False),
          "cpu_adam_params_per_s": (0, 1e13, False), "gpu_adam_bytes_per_param": (0, 1e4, False),
          "step_overhead_s": (0, 60, True)}


def load_calibration(path: str | Path | None) -> RuntimeConstants:
    if path is None:
        return DEFAULT
    data = read_json(path, "calibration")
    overrides = data.get("constants", data) if isinstance(data, dict) else None
    if not isinstance(overrides, dict):
        raise FtmixError(f"calibration {path} must hold a JSON object of constants")
    known = {f.name for f in fields(RuntimeConstants)}
    unknown = set(overrides) - known
    if unknown:
        raise FtmixError(f"calibration {path}: unknown constants {', '.join(sorted(unknown))}")
    for key, value in overrides.items():
        low, high, low_ok = RANGES[key]
        if not finite(value) or value > high or value < low or (value == low and not low_ok):
            bracket = "[" if low_ok else "("
            raise FtmixError(f"calibration {path}: {key} must be a finite number in {bracket}{low:g}, {high:g}], "
                             f"got {value!r}")
    return replace(DEFAULT, **{k: float(v) for k, v in overrides.items()})
