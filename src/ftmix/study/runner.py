"""Running a study: each trial is ``ftmix train`` in its own process group with a time limit (local),
or an sbatch job (``study.slurm``); outcomes and measurements go to the store as each trial ends.

The sweep never imports the training stack: a trial that runs out of memory, crashes or hangs ends
its own process group, not the sweep. Re-running the same command resumes: finished trials are
skipped; one left ``running`` by a killed sweep is stopped (if its process group still lives) and
run again from scratch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.study.predict import predict
from ftmix.study.slurm import run_slurm
from ftmix.study.spec import StudySpec, Trial, expand
from ftmix.study.store import Store
from ftmix.study.trial import collect, prepare_trial, trial_command


@dataclass
class Options:
    gpu: str | None = None  # the GPU predictions are for (a trial's own gpu: key wins)
    only_fitting: bool = False
    predict_only: bool = False
    retry_failed: bool = False
    work_dir: Path | None = None  # trial folders; default: next to the database
    launcher: str = "local"
    max_jobs: int = 8  # slurm: jobs in the queue at once
    poll_s: float = 10.0
    sbatch_args: list[str] = field(default_factory=list)


def work_dir(store: Store, spec: StudySpec, opts: Options) -> Path:
    root = opts.work_dir or store.path.with_name(store.path.stem + "-trials")
    return Path(root) / spec.name


PLANNED = ("pending", "predicted", "predicted_oom", "invalid")  # statuses of trials that have not run


def plan_trials(store: Store, spec: StudySpec, opts: Options) -> list[Trial]:
    """Every trial in the store with its prediction: new ones pending, or ``invalid`` (never run)
    when the GPU cannot take the mixture (FA2 on a V100). A trial that ran keeps the predictions
    made for it; one that has not is predicted again when asked for another GPU."""
    trials = expand(spec)
    for t in trials:
        known = store.get(t.id)
        gpu = t.config.get("gpu") or opts.gpu
        if known is not None and (known["status"] not in PLANNED or known.get("gpu") == gpu):
            continue
        row = {"id": t.id, "study": t.study, "tag": t.tag, "repeat": t.repeat, "trial_key": t.key, "config": t.config,
               "source": "run", "status": "pending", "gpu": gpu, "error": None, "label": None, "inputs": None,
               "predicted_peak_gb": None, "predicted_step_s": None, "predicted_fits": None}
        try:
            predicted = predict(t.config, opts.gpu)
            row.update({k: predicted.get(k) for k in ("label", "inputs", "predicted_peak_gb", "predicted_step_s",
                                                       "predicted_fits")})
        except FtmixError as exc:
            row.update(status="invalid", error=str(exc))
        if known is None:
            store.plan_trial(row)
        else:  # re-planned for another GPU: back to pending (or invalid); predict-only sets its status again
            store.upsert({k: v for k, v in row.items() if k != "source"})
    return trials


def to_run(store: Store, trials: list[Trial], opts: Options) -> list[tuple[Trial, str]]:
    """The trials this sweep runs, each with the status it had when planned."""
    finished = {"ok", "oom", "error", "timeout"} if not opts.retry_failed else {"ok"}
    out = []
    for t in trials:
        row = store.get(t.id)
        status = row["status"]
        if status == "invalid":
            continue
        if opts.predict_only:
            if status in PLANNED:
                store.upsert({"id": t.id, "status": _predicted_status(row)})
            continue
        if status in finished:
            continue
        if opts.only_fitting and row["predicted_fits"] == 0:
            store.upsert({"id": t.id, "status": "predicted_oom", "error": "predicted not to fit; not run"})
            continue
        out.append((t, status))
    return out


def _predicted_status(row: dict) -> str:
    return "predicted_oom" if row["predicted_fits"] == 0 else "predicted"


def stop_leftover(row: dict) -> None:
    """A trial left running by a killed sweep: end its process group before running it again."""
    pid = row.get("pid")
    if not pid:
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_local(store: Store, trial: Trial, root: Path, time_limit_s: float, seen: str) -> dict | None:
    """The trial's row once it ends; None when another live sweep on the same store has it (or
    ended it since this one planned: ``seen`` is the status then)."""
    leftover = store.get(trial.id)
    if not store.claim(trial.id, seen):
        return None
    stop_leftover(leftover)
    folder, config_path = prepare_trial(trial, root)
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    started = time.time()
    with open(folder / "stdout.json", "w") as out, open(folder / "stderr.log", "w") as err:
        proc = subprocess.Popen(trial_command(config_path), stdout=out, stderr=err, env=env, start_new_session=True)
        store.upsert({"id": trial.id, "pid": proc.pid})
        try:
            rc = proc.wait(timeout=time_limit_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, timed_out = proc.returncode, True
        except BaseException:
            _kill_group(proc)  # the sweep was interrupted: the trial goes with it and is re-run next time
            store.upsert({"id": trial.id, "status": "pending", "pid": None, "error": "interrupted with the sweep"})
            raise
    result = collect(folder, rc, timed_out, time_limit_s)
    result.update(id=trial.id, pid=None, finished=time.time(), started=started)
    store.upsert(result)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_study(store: Store, spec: StudySpec, opts: Options, on_event=None) -> dict:
    """Plan, then run what is left; ``on_event(kind, trial, row, counts)`` reports progress."""
    trials = plan_trials(store, spec, opts)
    pending = to_run(store, trials, opts)
    root = work_dir(store, spec, opts)
    counts = {"total": len(trials), "to_run": len(pending), "done": 0, "failed": 0, "durations": []}
    if opts.predict_only or not pending:
        return summary(store, spec)
    if opts.launcher == "slurm":
        run_slurm(store, pending, root, spec.time_limit_s, opts, on_event, counts)
        return summary(store, spec)
    for trial, seen in pending:
        if on_event:
            on_event("start", trial, None, counts)
        began = time.time()
        row = run_local(store, trial, root, spec.time_limit_s, seen)
        if row is None:  # another sweep on this store is running it
            counts["to_run"] -= 1
            continue
        counts["durations"].append(time.time() - began)
        counts["done"] += 1
        counts["failed"] += row["status"] != "ok"
        if on_event:
            on_event("end", trial, row, counts)
    return summary(store, spec)


def summary(store: Store, spec: StudySpec) -> dict:
    ids = {t.id for t in expand(spec)}
    rows = [r for r in store.trials(spec.name) if r["id"] in ids]
    by_status: dict = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    keys = ("id", "tag", "trial_key", "status", "label", "peak_gb", "peak_what", "predicted_peak_gb", "step_s",
            "predicted_step_s", "predicted_fits", "tokens_per_s", "final_loss", "error", "device")
    return {"study": spec.name, "db": str(store.path), "trials": len(rows), "by_status": by_status,
            "rows": [{**{k: r.get(k) for k in keys}, "mixture": (r.get("inputs") or {}).get("mixture")} for r in rows]}
