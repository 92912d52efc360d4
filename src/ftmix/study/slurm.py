"""``study run --launcher slurm``: one sbatch script per trial, submitted with ``sbatch --parsable``,
followed with ``squeue`` while queued or running and ``sacct`` once gone; each trial's run record
is read from its folder (a file system the nodes share) into the same store.

Exit states follow Slurm's (sacct ``State``): COMPLETED with exit 0 is a finished run;
OUT_OF_MEMORY (the host's cgroup) or ftmix's exit code 3 is an OOM; TIMEOUT is the time limit;
anything else is an error with the trial's last stderr lines.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import time
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.study.spec import Trial
from ftmix.study.trial import collect, prepare_trial, trial_command

ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


def sbatch_script(trial: Trial, folder: Path, config_path: Path, time_limit_s: float, extra: list[str]) -> Path:
    minutes = max(1, math.ceil(time_limit_s / 60))
    nproc = int(trial.config.get("nproc", 1))
    lines = ["#!/bin/bash", f"#SBATCH --job-name=ftmix-{trial.id}", f"#SBATCH --time={minutes}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks=1", f"#SBATCH --output={folder / 'slurm.out'}"]
    if trial.config.get("device", "auto") != "cpu":
        lines.append(f"#SBATCH --gres=gpu:{nproc}")
    lines += [f"#SBATCH {arg}" for arg in extra]
    cmd = " ".join(shlex.quote(c) for c in trial_command(config_path))
    lines += ["export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}",
              f"{cmd} > {shlex.quote(str(folder / 'stdout.json'))} 2> {shlex.quote(str(folder / 'stderr.log'))}"]
    path = folder / "job.sbatch"
    path.write_text("\n".join(lines) + "\n")
    return path


def _call(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise FtmixError(f"--launcher slurm: {args[0]} is not on PATH (is this a Slurm login node?)") from None
    except subprocess.TimeoutExpired:
        raise FtmixError(f"--launcher slurm: {args[0]} did not answer within 120 s") from None
    if out.returncode != 0:
        raise FtmixError(f"--launcher slurm: {' '.join(args[:2])} failed: {(out.stderr or out.stdout).strip()[:300]}")
    return out.stdout


def submit(script: Path) -> str:
    job = _call(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
    if not job:
        raise FtmixError(f"--launcher slurm: sbatch gave no job id for {script}")
    return job


def state(job: str) -> tuple[str, int | None]:
    """(Slurm state, exit code once finished)."""
    queued = _call(["squeue", "-h", "-j", job, "-o", "%T"]).strip()
    if queued and queued.split()[0] in ACTIVE:
        return queued.split()[0], None
    for line in _call(["sacct", "-j", job, "-n", "-P", "-X", "-o", "State,ExitCode"]).splitlines():
        if "|" in line:
            st, code = line.split("|")[:2]
            return st.split()[0], int(code.split(":")[0] or 0)
    return "UNKNOWN", None


def run_slurm(store, trials: list[tuple[Trial, str]], root: Path, time_limit_s: float, opts, on_event,
              counts) -> None:
    waiting, running = list(trials), {}
    while waiting or running:
        while waiting and len(running) < opts.max_jobs:
            trial, seen = waiting.pop(0)
            previous = (store.get(trial.id) or {}).get("slurm_job")
            if not store.claim(trial.id, seen):  # another sweep on this store has it
                counts["to_run"] -= 1
                continue
            if previous and seen == "running" and state(previous)[0] in ACTIVE:
                # a killed sweep's job still queued or running on the cluster: follow it, do not submit again
                running[previous] = (trial, root / trial.id, time.time())
                continue
            folder, config_path = prepare_trial(trial, root)
            job = submit(sbatch_script(trial, folder, config_path, time_limit_s, opts.sbatch_args))
            store.upsert({"id": trial.id, "slurm_job": job})
            running[job] = (trial, folder, time.time())
            if on_event:
                on_event("start", trial, None, counts)
        if not running:
            break
        time.sleep(opts.poll_s)
        for job, (trial, folder, began) in list(running.items()):
            st, code = state(job)
            if st in ACTIVE:
                continue
            del running[job]
            row = collect(folder, code, st == "TIMEOUT", time_limit_s)
            if st == "OUT_OF_MEMORY":
                row["status"] = "oom"
            elif st not in ("COMPLETED", "FAILED") and row["status"] == "error":
                row["error"] = f"slurm state {st}\n{row['error']}"
            row.update(id=trial.id, finished=time.time(), started=began)
            store.upsert(row)
            counts["durations"].append(time.time() - began)
            counts["done"] += 1
            counts["failed"] += row["status"] != "ok"
            if on_event:
                on_event("end", trial, row, counts)
