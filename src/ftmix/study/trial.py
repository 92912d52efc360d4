"""One trial as a process sees it, whatever launches it (here or sbatch): its folder and config
file, the command that runs it, and its outcome and measurements read back from what it wrote."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from ftmix.study.predict import model_config
from ftmix.study.spec import Trial

ERROR_LINES = 12  # the last lines of a failed trial's stderr kept in the store
OOM_EXIT = 3  # `ftmix train`: the run ran out of memory (docs/train.md)


def trial_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "ftmix", "train", str(config_path), "--json"]


def prepare_trial(trial: Trial, root: Path) -> tuple[Path, Path]:
    """(the trial's folder, its config file) with a fresh run folder: a trial is re-run from scratch."""
    folder = root / trial.id
    run = folder / "run"
    if run.exists():
        shutil.rmtree(run)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(json.dumps({**trial.config, "output_dir": str(run)}, indent=1))  # JSON is YAML
    return folder, config_path


def collect(folder: Path, rc: int | None, timed_out: bool, time_limit_s: float) -> dict:
    """The trial's outcome and measurements from its exit, stderr and run.json."""
    err = (folder / "stderr.log").read_text(errors="replace") if (folder / "stderr.log").exists() else ""
    tail = "\n".join(line for line in err.strip().splitlines()[-ERROR_LINES:])
    if timed_out:
        return {"status": "timeout", "error": f"stopped at the time limit of {time_limit_s:g} s\n{tail}".strip()}
    run_json = folder / "run" / "run.json"
    if rc == 0 and run_json.exists():
        return dict(status="ok", error=None, **measurements(json.loads(run_json.read_text())))
    oom = rc == OOM_EXIT or "out of memory" in err.lower()
    return {"status": "oom" if oom else "error", "error": tail or f"exit code {rc}"}


def measurements(record: dict) -> dict:
    """The store's columns from a run record (``ftmix train``'s run.json, any machine)."""
    meas = record.get("measured") or {}
    twin = meas.get("twin") or {}
    if meas.get("peak_gpu_allocated_gb") is not None:
        peak, what = meas["peak_gpu_allocated_gb"], "gpu_allocated"
    elif twin.get("device_peak_bytes") is not None:
        peak, what = twin["device_peak_bytes"] / 1e9, "twin_device"
    else:
        peak, what = None, None
    predicted = record.get("predicted") or {}
    curve = meas.get("loss_curve") or []
    loss = curve[-1][1] if curve else meas.get("train_loss")
    out = {"peak_gb": peak, "peak_what": what, "step_s": meas.get("median_step_s"),
           "tokens_per_s": meas.get("tokens_per_s"), "final_loss": loss, "label": record.get("label"),
           "device": record.get("device"), "gpu": record.get("gpu"), "versions": record.get("versions"),
           "hardware": hardware(record), "git_commit": git_commit(), "record": record}
    if predicted.get("peak_bytes") is not None:
        out["predicted_peak_gb"] = predicted["peak_bytes"] / 1e9
    if predicted.get("step_time_s") is not None:
        out["predicted_step_s"] = predicted["step_time_s"]
    if predicted.get("estimate") and record.get("mixture"):
        config = (record.get("config") or {})
        out["inputs"] = {"model_config": _safe(model_config, config), "mixture": record["mixture"],
                         "gpu": record.get("gpu"), "effective_batch": config.get("effective_batch", 8),
                         "memory_what": "allocated"}
    return out


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a record from another machine may name a model not here
        return None


def hardware(record: dict) -> dict:
    meas = record.get("measured") or {}
    return {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "device": record.get("device"), "gpu": record.get("gpu"), "ranks": meas.get("ranks")}


_COMMIT: list = []


def git_commit() -> str | None:
    """The commit of the ftmix source that ran the trial (None outside a git checkout)."""
    if not _COMMIT:
        here = Path(__file__).resolve().parent
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
            _COMMIT.append(out.stdout.strip() if out.returncode == 0 else None)
        except (OSError, subprocess.TimeoutExpired):
            _COMMIT.append(None)
    return _COMMIT[0]
