"""The planning machine itself, read without torch: its RAM, and whether it has an NVIDIA GPU
(then a plan is for this machine and its RAM bounds what offload may use)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ftmix.catalog import match_gpu
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


def detected_gpu_name() -> str | None:
    """The catalog name of this machine's first NVIDIA GPU, read with nvidia-smi (no torch); None
    without one, or when it is not in the catalog."""
    if not has_nvidia_gpu() or shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not out or "," not in out[0]:
        return None

    name, mib = out[0].rsplit(",", 1)
    try:
        found = match_gpu(name.strip(), int(float(mib)) * 2**20)
    except ValueError:
        return None
    return found.name if found else None

