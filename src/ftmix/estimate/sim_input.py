"""What ``--method simulate`` needs before torch loads (torch-free): a mixture it covers and the
model's config.json (a catalog model's, or a local file or folder), checked for what a simulation
cannot build."""

from __future__ import annotations

from ftmix.catalog import GpuSpec, config_file, model_config
from ftmix.errors import FtmixError
from ftmix.mixture import Mixture, check_mixture


def simulation_config(ref: str, m: Mixture, gpu: GpuSpec | None = None) -> tuple[dict, str]:
    """(config.json dict, model name) for a catalog model or a local config.json (or its folder)."""
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


def check_sharding(m: Mixture, method: str) -> None:
    """FSDP2 (``--sharding fsdp2``) is simulated without offload; the analytic method models its
    CPUOffloadPolicy. (A DeepSpeed JSON is refused where the mixture is resolved, the paper's ZeRO
    formulas by ``estimate``.)"""
    if m.fsdp2 and method == "simulate" and m.offload != "none":
        raise FtmixError(f"--sharding fsdp2 is simulated without offload (got --offload {m.offload}); --method analytic "
                         "models FSDP2's CPUOffloadPolicy")
