"""Measurement the study's way: peak memory per rank (GPU: max_memory_allocated and reserved; CPU:
the process high-water mark VmHWM after a reset), step times, the loss curve; a progress bar."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from ftmix.files import proc_bytes


def reset_cpu_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_peak_bytes() -> int | None:
    return proc_bytes("/proc/self/status", "VmHWM")


def cpu_rss_bytes() -> int | None:
    return proc_bytes("/proc/self/status", "VmRSS")


# a test seam for ``--mixture auto``: fail the given step as CUDA's out-of-memory would (the first
# attempt only: run_auto clears it)
INJECT_OOM = "FTMIX_INJECT_OOM_AT_STEP"


class Interrupt:
    """Ctrl-C during an in-process run. The first press is remembered and raised between steps:
    a KeyboardInterrupt raised inside a storage finalizer or a dispatch hook (the twin's) would be
    swallowed as "Exception ignored" and the run would go on. A second press raises at once."""

    requested = False

    @classmethod
    def handler(cls, signum, frame):
        if cls.requested:
            raise KeyboardInterrupt
        cls.requested = True

    @classmethod
    def check(cls) -> None:
        if cls.requested:
            cls.requested = False
            raise KeyboardInterrupt


class Meter(TrainerCallback):
    """Times each optimizer step, records the loss and resets/reads peak memory around training."""

    def __init__(self, device: str, progress=None, twin=None):
        self.device = device
        self.progress = progress
        self.twin = twin  # ftmix.measure.twin.DeviceTwin, or None
        self.trainer = None  # set by the run: the twin's hooks need the engine and the optimizer
        self.step_times: list[float] = []
        self.losses: list[tuple[int, float]] = []
        self.memory_after_setup: dict = {}
        self._t0 = None
        self._task = None
        self.start = self.end = None

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kw):
        self._sync()
        self.memory_after_setup = {"cpu_rss": cpu_rss_bytes()}
        if self.device == "cuda":
            self.memory_after_setup["gpu_allocated"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        reset_cpu_peak()
        if self.twin is not None and self.trainer is not None:
            self.twin.watch_model(self.trainer.model)
            self.twin.watch_step(self._stepping_optimizer())
            self.mark_roles()
            self.twin.set_phase("before the first step")
        self.start = time.perf_counter()
        if self.progress is not None:
            self._task = self.progress.add_task("training", total=state.max_steps, completed=state.global_step,
                                                info="")

    def _stepping_optimizer(self):
        """The optimizer whose step() updates the weights: DeepSpeed's ZeRO optimizer (the engine
        steps inside backward; HF's wrapper step is a no-op), else the trainer's."""
        engine = self.trainer.model_wrapped
        if hasattr(engine, "zero_optimization_stage"):
            return engine.optimizer
        return self.trainer.optimizer

    def mark_roles(self) -> None:
        """Tell the twin which live storages are parameters, gradients and optimizer states."""
        if self.twin is None or self.trainer is None:
            return
        self.twin.mark_model(self.trainer.model)
        if self.trainer.optimizer is not None:
            self.twin.mark_optimizer(self._stepping_optimizer())

    def on_step_begin(self, args, state, control, **kw):
        Interrupt.check()
        if os.environ.get(INJECT_OOM) == str(state.global_step + 1):
            raise RuntimeError(f"out of memory (injected by {INJECT_OOM} at step {state.global_step + 1})")
        if self.twin is not None:
            self.twin.begin_step(state.global_step + 1)
        self._sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        Interrupt.check()
        if self.twin is not None:
            self.mark_roles()
            self.twin.set_phase("between steps")
        self._sync()
        if self._t0 is not None:
            self.step_times.append(time.perf_counter() - self._t0)
        if self.progress is not None and self._task is not None:
            loss = self.losses[-1][1] if self.losses else float("nan")
            peak = self.peaks()
            twin = self.twin.peak["device"] if self.twin is not None else None
            mem = peak.get("gpu_allocated") or twin or peak.get("cpu_hwm") or 0
            self.progress.update(self._task, completed=state.global_step,
                                 info=f"loss {loss:.3f} · {self.step_times[-1]:.2f} s/step · {mem / 1e9:.2f} GB")

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_train_end(self, args, state, control, **kw):
        self._sync()
        self.end = time.perf_counter()

    def peaks(self) -> dict:
        out = {"cpu_hwm": cpu_peak_bytes()}
        if self.device == "cuda":
            out["gpu_allocated"] = torch.cuda.max_memory_allocated()
            out["gpu_reserved"] = torch.cuda.max_memory_reserved()
        return out

    def median_step(self, warmup: int) -> float | None:
        times = self.step_times[warmup:] or self.step_times
        return statistics.median(times) if times else None
