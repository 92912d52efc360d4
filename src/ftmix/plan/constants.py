"""Runtime-model constants, each with its source. A calibration file (JSON, written by hand or by
``ftmix study calibrate`` from measured runs) overrides any of them by name, and the memory model's
overheads (allocator slack, CUDA context) under ``memory``. A file that names a ``gpu`` applies to
that GPU type only, unless the user says otherwise (``--calibration-any-gpu``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.estimate.overheads import DEFAULT_OVERHEADS
from ftmix.estimate.overheads import RANGES as MEMORY_RANGES
from ftmix.estimate.overheads import MemoryOverheads
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
    # The host's time to issue one operation of the step (Python, HF + PEFT modules, the aten
    # dispatcher, a launch): measured on the real step at tiny width where compute is negligible,
    # benchmarks/results/host_overhead.json (9.3 us, one core of this 2-core machine; 8.3-9.3 over
    # three runs). The step is host-bound when issuing takes longer than the GPU runs
    # (``plan.runtime.host_issue``); ``ftmix calibrate-gpu`` measures it on the user's own host.
    host_seconds_per_op: float = 9.32e-6

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = RuntimeConstants()


MFU_CEILING = 0.75

# The physical range of each constant: (low, high, low is allowed). Fractions of a peak are in
# (0, 1]; exposed communication in [0, 1]; rates and sizes positive; overheads may be zero.
# mfu_max: no dense transformer training run reaches 0.75 of the tensor cores' peak (Megatron-LM,
# Narayanan et al. 2021: 0.52; PaLM: 0.46; Llama 3: 0.38-0.43), so a fit above it is the data's noise.
RANGES = {"mfu_max": (0, MFU_CEILING, False), "mfu_half_tokens": (0, 1e9, True), "fa2_efficiency": (0, 2, False),
          "sdpa_efficiency": (0, 2, False), "eager_bytes_per_score": (0, 1e4, False),
          "elementwise_passes": (0, 1e3, True), "exposed_comm_ddp": (0, 1, True), "exposed_comm_zero12": (0, 1, True),
          "exposed_comm_zero3": (0, 1, True), "zero3_fetch_overhead_s": (0, 1, True), "link_efficiency": (0, 1, False),
          "pcie_gen3": (0, 1e13, False), "pcie_gen4": (0, 1e13, False), "pcie_gen5": (0, 1e13, False),
          "cpu_adam_params_per_s": (0, 1e13, False), "gpu_adam_bytes_per_param": (0, 1e4, False),
          "step_overhead_s": (0, 60, True), "host_seconds_per_op": (0, 1e-3, True)}


ENV = "FTMIX_CALIBRATION"


@dataclass(frozen=True)
class Calibration:
    runtime: RuntimeConstants = DEFAULT
    memory: MemoryOverheads = DEFAULT_OVERHEADS
    source: str | None = None  # the file, or None for ftmix's defaults
    notes: tuple[str, ...] = field(default_factory=tuple)


def calibration_for(path: str | None, gpu: str | None, any_gpu: bool = False) -> Calibration:
    """The calibration a command uses: ``--calibration FILE``, else ``$FTMIX_CALIBRATION``.

    A study calibration holds constants per GPU type (``per_gpu``) and one set fitted on all its
    GPUs together (``constants``). For a GPU with its own section, that section; for a GPU the file
    was not fitted on (or fitted on with too few measurements for a section of its own), the file
    is refused when named on the command line and skipped with a note when it comes from the
    environment, unless ``any_gpu``: then the all-GPU set applies. A hand-written file of bare
    constants names no GPU and applies everywhere."""
    from_env = path is None
    path = path or os.environ.get(ENV) or None
    if path is None:
        return Calibration()
    data = read_json(path, "calibration")
    if not isinstance(data, dict):
        raise FtmixError(f"calibration {path} must hold a JSON object of constants")
    per_gpu = data.get("per_gpu") or {}
    if not isinstance(per_gpu, dict) or not all(isinstance(v, dict) for v in per_gpu.values()):
        raise FtmixError(f"calibration {path}: per_gpu must map GPU names to {{\"constants\": ...}}")
    fitted_on = data.get("fitted_on_gpus") or ([data["gpu"]] if data.get("gpu") else [])
    memory = _memory(path, data.get("memory") or {})
    if data.get("fitted") is False:
        return Calibration(notes=(f"calibration {path} fitted nothing: ftmix's defaults apply",))
    if gpu is not None and gpu in per_gpu:
        runtime = _validated(path, per_gpu[gpu].get("constants") or {})
        if runtime == DEFAULT and memory == DEFAULT_OVERHEADS:
            return Calibration(notes=(f"calibration {path} changes no constant for {gpu}: ftmix's defaults apply",))
        return Calibration(runtime, memory, str(path), (f"calibrated by {path} (fitted on {gpu})",))
    if gpu is not None and fitted_on and not any_gpu and (data.get("gpu") != gpu):
        why = (f"has too few measurements on {gpu} for constants of its own" if gpu in fitted_on
               else f"was fitted on {', '.join(fitted_on)}, not {gpu}")
        if from_env:
            return Calibration(notes=(f"${ENV} ({path}) {why}: not used",))
        raise FtmixError(f"calibration {path} {why}: add --calibration-any-gpu to use its all-GPU constants anyway")
    runtime = load_calibration(path)
    if runtime == DEFAULT and memory == DEFAULT_OVERHEADS:
        return Calibration(notes=(f"calibration {path} changes no constant: ftmix's defaults apply",))
    return Calibration(runtime, memory, str(path), (f"calibrated by {path}",))


def _memory(path, overrides: dict) -> MemoryOverheads:
    if not isinstance(overrides, dict):
        raise FtmixError(f"calibration {path}: memory must be an object of {', '.join(MEMORY_RANGES)}")
    unknown = set(overrides) - set(MEMORY_RANGES)
    if unknown:
        raise FtmixError(f"calibration {path}: unknown memory constants {', '.join(sorted(unknown))}")
    for key, value in overrides.items():
        low, high = MEMORY_RANGES[key]
        if not finite(value) or not low <= value <= high:
            raise FtmixError(f"calibration {path}: memory.{key} must be a finite number in [{low:g}, {high:g}], "
                             f"got {value!r}")
    return replace(DEFAULT_OVERHEADS, **{k: float(v) for k, v in overrides.items()})


def load_calibration(path: str | Path | None) -> RuntimeConstants:
    """The runtime constants of a file: a bare object of constants, or a study calibration's
    all-GPU ``constants``."""
    if path is None:
        return DEFAULT
    data = read_json(path, "calibration")
    if isinstance(data, dict):  # a bare object of constants, or a study calibration (constants, memory, gpu, ...)
        framed = any(k in data for k in ("constants", "memory", "gpu", "format", "per_gpu"))
        overrides = data.get("constants", {}) if framed else data
    else:
        overrides = None
    return _validated(path, overrides)


def _validated(path, overrides) -> RuntimeConstants:
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
