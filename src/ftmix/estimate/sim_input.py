"""What ``--method simulate`` needs before torch loads (torch-free): a mixture it covers and the
model's config.json (a catalog model's, or a local file or folder), checked for what a simulation
cannot build."""

from __future__ import annotations

from pathlib import Path

from ftmix.catalog import GpuSpec, catalog_name
from ftmix.catalog.models import _DATA
from ftmix.errors import FtmixError
from ftmix.files import read_json
from ftmix.mixture import Mixture, check_mixture


def simulation_config(ref: str, m: Mixture, gpu: GpuSpec | None = None) -> tuple[dict, str]:
    """(config.json dict, model name) for a catalog model or a local config.json (or its folder)."""
    check_mixture(m, None, gpu)
    name = catalog_name(ref)
    if name is not None:
        from importlib import resources

        entry = read_json(resources.files("ftmix.catalog").joinpath(f"{_DATA}/{name}.json"), "catalog entry")
        return dict(entry["config"]), name
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FtmixError(f"--method simulate needs a catalog model or a local config.json; {ref!r} is neither")
    config = read_json(path, "model config")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise FtmixError(f"model config {path} must be a JSON object with a model_type")
    if config.get("auto_map"):
        raise FtmixError(f"model config {path} needs the model's own remote code (auto_map); ftmix runs no remote code")
    return config, ref
