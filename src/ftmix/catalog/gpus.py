"""GPU catalog: memory, precision and kernel support, peak rates and link bandwidths.

The data live in ``data/gpus.json``; each entry names its source (vendor datasheets). Memory is
what ``nvidia-smi`` reports as total (MiB): a card sold as "32 GB" holds 32 GiB minus what the
driver reserves (see shared field notes, "GPU capacities are binary").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ftmix.errors import FtmixError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    bf16: bool
    flash_attention_2: bool
    peak_flops_16bit: float  # dense tensor-core FLOP/s
    memory_bandwidth: float  # bytes/s
    intra_node_bandwidth: float  # bytes/s per GPU per direction (NVLink or PCIe)
    inter_node_bandwidth: float  # bytes/s per node (NICs together)
    architecture: str
    source: str

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / 1e9


@cache
def _table() -> dict[str, dict]:
    text = resources.files("ftmix.catalog").joinpath("data/gpus.json").read_text()
    return json.loads(text)


def gpu_names() -> list[str]:
    return sorted(_table())


def load_gpu(name: str) -> GpuSpec:
    key = name.strip().lower()
    row = _table().get(key)
    if row is None:
        raise FtmixError(f"unknown GPU {name!r}; known: {', '.join(gpu_names())}")
    return GpuSpec(
        name=key,
        memory_bytes=row["memory_mib"] * 2**20,
        bf16=row["bf16"],
        flash_attention_2=row["flash_attention_2"],
        peak_flops_16bit=row["peak_tflops_16bit"] * 1e12,
        memory_bandwidth=row["memory_bandwidth_gbs"] * 1e9,
        intra_node_bandwidth=row["intra_node_gbs"] * 1e9,
        inter_node_bandwidth=row["inter_node_gbs"] * 1e9,
        architecture=row["architecture"],
        source=row["source"],
    )


def match_gpu(device_name: str, total_memory: int) -> GpuSpec | None:
    """The catalog GPU a CUDA device is: its family in the device name ("NVIDIA A100-SXM4-80GB"
    holds "a100"), and of those the one whose memory is nearest, within 15%."""
    squeezed = device_name.lower().replace(" ", "").replace("geforce", "")
    best = None
    for name in gpu_names():
        family = name.rsplit("-", 1)[0]  # "a100-80gb" -> "a100"
        gpu = load_gpu(name)
        gap = abs(gpu.memory_bytes - total_memory) / gpu.memory_bytes
        if family in squeezed and gap <= 0.15 and (best is None or gap < best[0]):
            best = (gap, gpu)
    return best[1] if best else None
