"""``ftmix train --mixture auto``: the planner's fastest fitting mixture, run for real, with a
fallback when reality disagrees.

The planner (``ftmix.plan.search.plan``) ranks every mixture the user left open (ZeRO stage,
offload, GC, attention kernel; LoRA or full fine-tuning and the effective batch stay the user's)
for the GPU: detected on a GPU, ``--gpu`` on CPU. The fastest that fits runs. If it runs out of
memory (CUDA's out-of-memory error; on CPU, the device-memory twin's own limit, ``memory_limit_gb``,
which auto sets to the GPU's memory unless given), the miss is recorded (the mixture, its predicted
peak, what failed and where in the step), and the fastest remaining candidate that the planner
predicts needs less memory runs next: from the last checkpoint when the engine is the same (the
same ZeRO stage keeps the checkpoint's format and the trainable parameters), else from the start,
the failed attempt's checkpoints moved aside. ``run.json`` lists every attempt under ``attempts``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ftmix.catalog import load_gpu
from ftmix.errors import FtmixError
from ftmix.job.checkpoints import last_checkpoint
from ftmix.job.config import TrainConfig
from ftmix.job.preflight import model_spec, on_cpu
from ftmix.job.record import RunRecord, write_record
from ftmix.mixture import Mixture
from ftmix.plan.constants import calibration_for
from ftmix.plan.search import plan
from ftmix.train.measure import INJECT_OOM
from ftmix.train.run import detect_gpu

OPEN = ("sharding", "zero", "offload", "gc", "attn")  # what auto may choose; the rest is the user's


def ranked(cfg: TrainConfig) -> tuple[list, object]:
    """(the fitting candidates, fastest first; the GpuSpec planned for)."""
    if not cfg.gpu:
        if on_cpu(cfg):
            raise FtmixError("--mixture auto on CPU plans for a GPU you name: add --gpu (see `ftmix gpus`)")
        gpu = detect_gpu("cuda")
        if gpu is None:
            raise FtmixError("--mixture auto: this GPU is not in the catalog; name the closest with --gpu")
    else:
        gpu = load_gpu(cfg.gpu)
    spec = model_spec(cfg)
    if spec is None:
        raise FtmixError(f"--mixture auto needs the model's shape for the planner; {cfg.model!r} has none")
    flags = {k: v for k, v in cfg.mixture_flags().items() if v is not None}
    if on_cpu(cfg) and "precision" not in flags:
        flags["precision"] = "bf16"

    cal = calibration_for(cfg.calibration, gpu.name, cfg.calibration_any_gpu)  # as the run's predictions use it
    result = plan(spec, gpu, flags, effective_batch=cfg.effective_batch, constants=cal.runtime, overheads=cal.memory)
    if result.best is None:
        raise FtmixError(f"--mixture auto: nothing fits {gpu.name}: {result.suggestion}")
    # the plan's choice first (ties broken as `ftmix plan` breaks them), then the rest, fastest first
    return [result.best] + [c for c in result.candidates if c.fits and c is not result.best], gpu


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def run_auto(cfg: TrainConfig, launch, progress=None) -> dict:
    """Attempts until one finishes; returns its run record with every attempt listed."""
    fitting, gpu = ranked(cfg)
    out = Path(cfg.output_dir)
    limit = cfg.memory_limit_gb

    if limit is None and on_cpu(cfg) and cfg.twin:
        limit = gpu.memory_bytes / 1e9
    attempts, current, previous = [], fitting[0], None
    while True:
        m = current.mixture
        chosen = {k: getattr(m, k) for k in OPEN}
        resume = (previous is not None and previous["mixture"]["zero"] == m.zero
                  and previous["mixture"].get("sharding", "deepspeed") == m.sharding and _has_checkpoint(out))
        if previous is not None and not resume:
            _set_aside(out, len(attempts))
        attempt_cfg = cfg.model_copy(update=dict(chosen, gpu=gpu.name, memory_limit_gb=limit, resume=resume))
        entry = {"attempt": len(attempts) + 1, "mixture": m.to_dict(), "label": m.label,
                 "predicted_peak_gb": round(current.memory.peak / 1e9, 4),
                 "predicted_step_s": round(current.time.total, 4), "resumed": resume}
        try:
            record = launch(attempt_cfg, progress)
        except Exception as exc:  # noqa: BLE001 - an OOM of any engine is a RuntimeError or our FtmixError
            os.environ.pop(INJECT_OOM, None)
            if not is_oom(exc):
                raise
            entry.update(outcome="oom", error=str(exc).splitlines()[0][:300])
            attempts.append(entry)
            tried = {_mix(a) for a in attempts}
            smaller = [c for c in fitting if c.memory.peak < current.memory.peak and c.mixture not in tried]
            if not smaller:
                raise FtmixError(f"--mixture auto: every candidate ran out of memory ({len(attempts)} tried); "
                                 f"last: {entry['error']}") from None
            previous, current = entry, smaller[0]
            continue
        entry.update(outcome="ok")
        attempts.append(entry)
        record["attempts"] = attempts
        record["auto"] = {"gpu": gpu.name, "candidates": len(fitting), "memory_limit_gb": limit}
        return write_record(out, RunRecord.from_json(record))


def _mix(entry: dict):
    return Mixture(**entry["mixture"])


def _has_checkpoint(out: Path) -> bool:
    return last_checkpoint(str(out)) is not None


def _set_aside(out: Path, n: int) -> None:
    """A failed attempt's checkpoints cannot seed another engine: keep them, out of the way."""
    aside = out / f"attempt-{n}"
    for p in out.glob("checkpoint-*"):
        aside.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(aside / p.name))
