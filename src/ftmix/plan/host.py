"""The planning machine itself, read without torch: its RAM, and whether it has an NVIDIA GPU
(then a plan is for this machine and its RAM bounds what offload may use)."""

from __future__ import annotations

from pathlib import Path

from ftmix.files import proc_bytes


def has_nvidia_gpu() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def total_ram_bytes() -> int | None:
    return proc_bytes("/proc/meminfo", "MemTotal")


def available_ram_bytes() -> int | None:
    """What the kernel can give a new process now without swapping."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def local_cpu_ram() -> int | None:
    """``--cpu-ram auto``: this machine's RAM when it has a GPU to plan for, else no limit."""
    return total_ram_bytes() if has_nvidia_gpu() else None
