"""What the world is: model architectures and GPUs. Imports nothing else of ftmix but errors and files."""

from ftmix.catalog.gpus import GpuSpec, gpu_names, load_gpu, match_gpu
from ftmix.catalog.models import (LinearSpec, ModelSpec, catalog_entry, catalog_name, config_file, load_model,
                                  model_config, model_names, spec_from_hf_config)

__all__ = ["GpuSpec", "LinearSpec", "ModelSpec", "catalog_entry", "catalog_name", "config_file", "gpu_names", "load_gpu",
           "load_model", "match_gpu", "model_config", "model_names", "spec_from_hf_config"]
