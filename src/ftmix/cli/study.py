"""``ftmix study``: run, import, report, calibrate. Thin: parse, call ``ftmix.study``, render."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ftmix.cli import options as o
from ftmix.cli.render import console, print_json
from ftmix.errors import FtmixError

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Sweeps of real runs in isolated processes, their SQLite store, the study's figures, "
                             "and calibration of the predictions from what was measured (docs/study.md).")

Db = Annotated[str, typer.Option("--db", metavar="FILE", help="The study's SQLite database (created if missing).")]


def _guarded(fn):
    from ftmix.cli.app import guard

    return guard(fn)


@study_app.command("run", epilog="Presets: mixtures, context, matrix (add :gpu or :cpu to pick the form). "
                                 "Spec keys: name, description, base, grid, linked, repeats, time_limit_s.")
@_guarded
def run_cmd(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="A preset name or a YAML spec file.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...", help="Changes to the spec's base (ftmix train's keys).")] = None,
    db: Db = "study.sqlite",
    form: Annotated[str, typer.Option("--form", metavar="auto|gpu|cpu", help="A preset's form: gpu (the study's models) or cpu (tiny random-init Llamas). Default: gpu where this machine has an NVIDIA GPU.")] = "auto",
    gpu: o.Gpu = None,
    only_fitting: Annotated[bool, typer.Option("--only-fitting", help="Do not run trials the planner predicts will not fit; record them as predicted_oom.")] = False,
    predict_only: Annotated[bool, typer.Option("--predict-only", help="Run nothing: every trial gets ftmix's predictions (peak memory, step time, fits).")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run trials that ended in oom, error or timeout again.")] = False,
    launcher: Annotated[str, typer.Option("--launcher", metavar="local|slurm", help="local: one trial at a time on this machine; slurm: one sbatch job per trial. Default local.")] = "local",
    work_dir: Annotated[Optional[str], typer.Option("--work-dir", metavar="DIR", help="Where each trial's folder goes. Default: DB-trials/ next to the database (shared with the nodes under slurm).")] = None,
    max_jobs: Annotated[int, typer.Option("--max-jobs", metavar="N", min=1, help="slurm: jobs queued at once.")] = 8,
    poll_s: Annotated[float, typer.Option("--poll", metavar="SECONDS", min=0.01, help="slurm: seconds between squeue/sacct polls.")] = 10.0,
    sbatch_arg: Annotated[Optional[list[str]], typer.Option("--sbatch-arg", metavar="ARG", help="slurm: an extra #SBATCH line, e.g. --partition=gpu (repeatable).")] = None,
    json_out: o.Json = False,
):
    """Run a sweep: each trial is `ftmix train` in its own process group, with a time limit; re-run to resume."""
    from ftmix.study.runner import Options, run_study
    from ftmix.study.spec import load_spec, merge_base
    from ftmix.study.store import Store
    from ftmix.train.config import _parse_value

    if launcher not in ("local", "slurm"):
        raise FtmixError(f"--launcher must be local or slurm, got {launcher!r}")
    if predict_only and only_fitting:
        raise FtmixError("--predict-only runs nothing; --only-fitting has no effect with it")
    if gpu:
        from ftmix.catalog import load_gpu

        load_gpu(gpu)
    parsed = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise FtmixError(f"override {item!r} is not key=value")
        parsed[key.strip().replace("-", "_")] = _parse_value(value.strip())
    study = merge_base(load_spec(spec, form), parsed)
    opts = Options(gpu=gpu, only_fitting=only_fitting, predict_only=predict_only, retry_failed=retry_failed,
                   work_dir=Path(work_dir) if work_dir else None, launcher=launcher, max_jobs=max_jobs,
                   poll_s=poll_s, sbatch_args=list(sbatch_arg or []))
    store = Store(db)
    reporter = _Reporter(study.name)
    try:
        result = run_study(store, study, opts, reporter)
    except KeyboardInterrupt:
        reporter.stop()
        sys.stderr.write(f"error: interrupted; finished trials are in {db}: run the same command again to resume\n")
        raise typer.Exit(130) from None
    finally:
        reporter.stop()
        store.close()
    if json_out:
        return print_json(result)
    _summary_table(result)


class _Reporter:
    """Progress on stderr: a line per trial as it starts and ends (done, running, failed, time left)."""

    def __init__(self, name: str):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.name = name
        self.began = time.time()

    def __call__(self, kind, trial, row, counts):
        done, total, failed = counts["done"], counts["to_run"], counts["failed"]
        durations = counts["durations"]
        left = (total - done) * (sum(durations) / len(durations)) if durations else None
        eta = "" if left is None else f", about {_clock(left)} left"
        if kind == "start":
            self.console.print(f"[dim]{self.name}: {done}/{total} done, {failed} failed, 1 running{eta}: "
                               f"{trial.key}[/dim]", highlight=False)
        else:
            colour = "green" if row["status"] == "ok" else "red"
            first = (row.get("error") or "").strip().splitlines()
            why = f" ({first[-1][:120]})" if first and row["status"] != "ok" else ""
            self.console.print(f"{self.name}: [{colour}]{row['status']}[/{colour}] {trial.key}{why}; "
                               f"{done}/{total} done, {failed} failed{eta}", highlight=False)

    def stop(self):
        pass


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _fmt(x, digits=4):
    return "-" if x is None else f"{x:.{digits}g}"


def _summary_table(result: dict) -> None:
    table = Table(title=f"study {result['study']}: {result['trials']} trials "
                        f"({', '.join(f'{v} {k}' for k, v in result['by_status'].items())})")
    for col in ("trial", "status", "mixture", "peak GB", "predicted GB", "step s", "predicted s", "loss"):
        table.add_column(col, justify="left" if col in ("trial", "status", "mixture") else "right")
    for r in result["rows"]:
        table.add_row(r["trial_key"], r["status"], r["label"] or "-", _fmt(r["peak_gb"]), _fmt(r["predicted_peak_gb"]),
                      _fmt(r["step_s"]), _fmt(r["predicted_step_s"]), _fmt(r["final_loss"]))
    console.print(table)
    console.print(f"[dim]database: {result['db']}[/dim]")
