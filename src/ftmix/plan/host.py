"""The planning machine itself, read without torch: its RAM, and whether it has an NVIDIA GPU
(then a plan is for this machine and its RAM bounds what offload may use)."""

from __future__ import annotations

from pathlib import Path


def has_nvidia_gpu() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _meminfo(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def total_ram_bytes() -> float | None:
    return _meminfo("MemTotal")


def available_ram_bytes() -> float | None:
    """What the kernel can give a new process now without swapping."""
    return _meminfo("MemAvailable")


def local_cpu_ram() -> float | None:
    """``--cpu-ram auto``: this machine's RAM when it has a GPU to plan for, else no limit."""
    return total_ram_bytes() if has_nvidia_gpu() else None
