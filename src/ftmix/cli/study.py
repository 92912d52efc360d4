"""``ftmix study``: run, import, report, calibrate. Thin: parse, call ``ftmix.study``, render."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ftmix.catalog import load_gpu
from ftmix.cli import options as o
from ftmix.cli.options import guard
from ftmix.cli.render import console, print_json
from ftmix.errors import FtmixError
from ftmix.files import writable_path
from ftmix.job.config import _parse_value
from ftmix.mixture import Mixture
from ftmix.plan.host import detected_gpu_name
from ftmix.study.calibrate import calibrate
from ftmix.study.importer import import_files
from ftmix.study.report import report
from ftmix.study.runner import Options, run_study
from ftmix.study.spec import load_spec, merge_base
from ftmix.study.store import Store
from ftmix.units import human_bytes, human_seconds

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Sweeps of real runs in isolated processes, their SQLite store, the study's figures, "
                             "and calibration of the predictions from what was measured (docs/study.md).")

Db = Annotated[str, typer.Option("--db", metavar="FILE", help="The study's SQLite database (created if missing).")]


def _guarded(fn):
    return guard(fn)


@study_app.command("run", epilog="Presets: mixtures, context, matrix (add :gpu or :cpu to pick the form). "
                                 "Spec keys: name, description, base, grid, linked, repeats, time_limit_s.")
@_guarded
def run_cmd(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="A preset name or a YAML spec file.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(metavar="[KEY=VALUE]...", help="Changes to the spec's base (ftmix train's keys).")] = None,
    db: Db = "study.sqlite",
    form: Annotated[str, typer.Option("--form", metavar="auto|gpu|cpu", help="A preset's form: gpu (the study's models) or cpu (tiny random-init Llamas). Default: gpu where this machine has an NVIDIA GPU.")] = "auto",
    gpu: Annotated[Optional[str], typer.Option("--gpu", metavar="NAME", help="Catalog GPU the predictions are for (see `ftmix gpus`). Default: this machine's (nvidia-smi), else none: memory only.")] = None,
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
    if launcher not in ("local", "slurm"):
        raise FtmixError(f"--launcher must be local or slurm, got {launcher!r}")
    if predict_only and only_fitting:
        raise FtmixError("--predict-only runs nothing; --only-fitting has no effect with it")
    if gpu:
        gpu = load_gpu(gpu).name
    if form == "auto" and (gpu or predict_only):
        form = "gpu"  # predictions for a GPU are of the GPU form (the study's models), not the CPU stand-in
    if not gpu:  # predictions for this machine's GPU, as train makes them

        gpu = detected_gpu_name()
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


def _short(row: dict) -> str:
    """The matrix's short label ("ZeRO-3 off-opt LoRA GC") where the mixture is known."""
    mixture = row.get("mixture")
    try:
        return Mixture(**mixture).short_label if mixture else (row.get("label") or "-")
    except TypeError:
        return row.get("label") or "-"


def _summary_table(result: dict) -> None:
    table = Table(title=f"study {result['study']}: {result['trials']} trials "
                        f"({', '.join(f'{v} {k}' for k, v in result['by_status'].items())})")

    def size(gb):
        return "-" if gb is None else human_bytes(gb * 1e9)

    def secs(s):
        return "-" if s is None else human_seconds(s)

    for col in ("trial", "status", "mixture", "peak", "predicted", "step", "predicted ", "loss"):
        table.add_column(col.strip(), justify="left" if col in ("trial", "status", "mixture") else "right",
                         no_wrap=col not in ("trial", "mixture"))
    for r in result["rows"]:
        table.add_row(r["trial_key"], r["status"], _short(r), size(r["peak_gb"]), size(r["predicted_peak_gb"]),
                      secs(r["step_s"]), "-" if r.get("device") == "cpu" else secs(r["predicted_step_s"]),
                      _fmt(r["final_loss"], 3))
    console.print(table)
    console.print(f"[dim]database: {result['db']}[/dim]")


@study_app.command("import")
@_guarded
def import_cmd(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="run.json files of ftmix train, gpu_groundtruth JSON Lines, or published rows (JSON Lines).")],
    db: Db = "study.sqlite",
    study_name: Annotated[Optional[str], typer.Option("--study", metavar="NAME", help="File the rows under this study name (default: published, gpu_groundtruth or imported).")] = None,
    json_out: o.Json = False,
):
    """Add measurements made elsewhere (any machine, or the published record) to the store."""
    store = Store(db)
    try:
        result = import_files(store, files, study_name)
    finally:
        store.close()
    if json_out:
        return print_json(result)
    table = Table(title=f"imported into {db}")
    for col in ("file", "kind", "imported", "not represented"):
        table.add_column(col, justify="left" if col in ("file", "kind") else "right")
    for f in result["files"]:
        table.add_row(f["file"], f["kind"], str(f["imported"]), str(f["not_represented"]))
    console.print(table)
    if result["not_represented_by_reason"]:
        why = Table(title="not represented, by reason")
        why.add_column("reason")
        why.add_column("rows", justify="right")
        for reason, n in result["not_represented_by_reason"].items():
            why.add_row(reason, str(n))
        console.print(why)


@study_app.command("calibrate")
@_guarded
def calibrate_cmd(
    db: Db = "study.sqlite",
    out: Annotated[str, typer.Option("--out", metavar="FILE", help="Where the calibration JSON goes (use it with --calibration FILE or $FTMIX_CALIBRATION).")] = "calibration.json",
    holdout_every: Annotated[int, typer.Option("--holdout-every", metavar="K", help="Every K-th measured trial is kept out of the fit and scored.")] = 3,
    gpu: Annotated[Optional[str], typer.Option("--gpu", metavar="NAME", help="Fit on this GPU's trials only (the file then applies to it only).")] = None,
    study_name: Annotated[Optional[str], typer.Option("--study", metavar="NAME", help="Fit on this study's trials only. Default: every measured trial in the store.")] = None,
    json_out: o.Json = False,
):
    """Fit the runtime constants and memory overheads to the measured trials; error before and after."""
    if gpu:
        gpu = load_gpu(gpu).name

    target = Path(out).expanduser()
    if target.is_dir() or not target.parent.exists():
        raise FtmixError(f"--out {out}: {'is a folder' if target.is_dir() else f'folder {target.parent} does not exist'}")
    writable_path(target.parent, f"--out {out}: folder")
    store = Store(db, create=False)
    try:
        rows = store.trials(study_name)
    finally:
        store.close()
    report = calibrate(rows, holdout_every, gpu)
    report["db"] = str(db)
    target.write_text(json.dumps(report, indent=1) + "\n")
    if json_out:
        return print_json(report)
    _calibration_table(report)
    console.print(f"[dim]written: {target}[/dim]")


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _calibration_table(report: dict) -> None:
    e = report["errors"]
    table = Table(title=f"prediction error before and after calibration ({report['trials']['fitted']} fitted, "
                        f"{report['trials']['held_back']} held back: every {ordinal(report['holdout_every'])})")
    for col in ("trials", "quantity", "n", "median before", "median after", "worst before", "worst after"):
        table.add_column(col, justify="left" if col in ("trials", "quantity") else "right")
    for part in ("fitted", "held_back"):
        for q in ("memory", "time"):
            b, a = e[part]["before"][q], e[part]["after"][q]
            table.add_row(part.replace("_", " "), q, str(b["n"]), _pct(b["median"]), _pct(a["median"]),
                          _pct(b["worst"]), _pct(a["worst"]))
    console.print(table)
    if report["constants"] or report["memory"]:
        console.print("fitted: " + ", ".join(f"{k} = {v:g}" for k, v in {**report["constants"], **report["memory"]}.items()))
    for note in report["notes"]:
        console.print(f"[yellow]{note}[/yellow]")


@study_app.command("report")
@_guarded
def report_cmd(
    db: Db = "study.sqlite",
    out: Annotated[str, typer.Option("--out", metavar="DIR", help="Folder for the figures (PNG and SVG), report.md and report.json.")] = "study-report",
    study_name: Annotated[Optional[list[str]], typer.Option("--study", metavar="NAME", help="Only these studies (repeatable). Default: all in the store.")] = None,
    json_out: o.Json = False,
):
    """The study's figures and a markdown report with the tables behind them."""
    writable_path(out, "--out")
    store = Store(db, create=False)
    try:
        result = report(store, out, study_name)
    finally:
        store.close()
    if json_out:
        return print_json({k: result[k] for k in ("db", "figures", "markdown")} | {"scatter": {
            k: {x: v[x] for x in ("median", "worst", "n")} for k, v in result["scatter"].items()}})
    table = Table(title=f"figures from {db}")
    for col in ("study", "figure", "files"):
        table.add_column(col)
    for fig in result["figures"]:
        table.add_row(fig["study"], fig["kind"], "\n".join(Path(f).name for f in fig["files"]))
    console.print(table)
    for what in ("memory", "time"):
        d = result["scatter"][what]
        if d["n"]:
            console.print(f"predicted vs measured {what}: median error {_pct(d['median'])}, worst {_pct(d['worst'])} "
                          f"over {d['n']} trials")
    console.print(f"report: {result['markdown']} (figures and report.json beside it)")
