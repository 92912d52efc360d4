"""What ``--method simulate`` needs before torch loads (torch-free): a mixture it covers and the
model's config.json (a catalog model's, or a local file or folder), checked for what a simulation
cannot build."""

from __future__ import annotations

from ftmix.catalog import GpuSpec, config_file, model_config
from ftmix.errors import FtmixError
from ftmix.mixture import Mixture, check_mixture


def simulation_config(ref: str, m: Mixture, gpu: GpuSpec | None = None, sharding: str = "deepspeed") -> tuple[dict, str]:
    """(config.json dict, model name) for a catalog model or a local config.json (or its folder)."""
    if sharding == "deepspeed":
        check_mixture(m, None, gpu)
    found = model_config(ref)
    if found is None:
        raise FtmixError(f"--method simulate needs a catalog model or a local config.json; {ref!r} is neither")
    config, name = found
    path = config_file(ref) or name
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise FtmixError(f"model config {path} must be a JSON object with a model_type")
    if config.get("auto_map"):
        raise FtmixError(f"model config {path} needs the model's own remote code (auto_map); ftmix runs no remote code")
    return config, name


SHARDINGS = ("deepspeed", "fsdp2")


def check_sharding(sharding: str, m: Mixture, method: str, deepspeed: dict | None, gpu: GpuSpec | None = None) -> None:
    """``--sharding fsdp2`` (torch's ``fully_shard``) is simulated only: its two strategies stand
    where ZeRO-2 and ZeRO-3 do; offload, DeepSpeed JSON and ZeRO-1 are DeepSpeed's. Pure 16-bit
    training is allowed (FSDP2 has no master copy of its own, unlike DeepSpeed)."""
    if sharding not in SHARDINGS:
        raise FtmixError(f"sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    if sharding == "deepspeed":
        return
    if method != "simulate":
        raise FtmixError("--sharding fsdp2 needs --method simulate (the analytic method models DeepSpeed's ZeRO)")
    if deepspeed is not None:
        raise FtmixError("--sharding fsdp2 takes no --deepspeed config")
    if m.zero not in (2, 3):
        raise FtmixError(f"--sharding fsdp2 shards as ZeRO-2 (--zero 2: SHARD_GRAD_OP) or ZeRO-3 (--zero 3: FULL_SHARD); "
                         f"got --zero {m.zero}")
    if m.offload != "none":
        raise FtmixError(f"--sharding fsdp2 is simulated without offload (got --offload {m.offload})")
    if m.quantize != "none":
        raise FtmixError(f"--sharding fsdp2 with --quantize {m.quantize}: FSDP2 over quantized weights is not modelled "
                         "yet; simulate QLoRA on one GPU or under DeepSpeed's stages (--sharding deepspeed)")
    check_mixture(m.with_(zero=0), None, gpu)
