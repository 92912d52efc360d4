"""Rich tables for people; JSON for scripts. Domain code never prints: only this module does."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ftmix.estimate import Estimate
from ftmix.estimate.constants import GB
from ftmix.estimate.result import component_label
from ftmix.plan.constants import DEFAULT
from ftmix.plan.matrix import LEGEND
from ftmix.units import human_bytes, human_seconds

console = Console()


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def gb(x: float) -> str:
    return f"{x / GB:,.2f}"


def estimate_table(est: Estimate) -> None:
    m = est.mixture
    title = f"{est.model} · {est.label} · s={m.seq_len} b={m.micro_batch} · {m.world} GPU(s)"
    console.print(f"[bold]{title} · method {est.method}[/bold]", soft_wrap=True)  # one line, never wrapped mid-phrase
    table = Table()
    table.add_column("component")
    scale, unit = (1e9, "GB") if est.peak >= 1e9 else (1e6, "MB") if est.peak >= 1e6 else (1e3, "KB")
    table.add_column(f"{unit} per GPU", justify="right")

    def gb(x: float) -> str:  # noqa: F811 - the table's own unit: tiny models in MB, not 0.00 GB
        return f"{x / scale:,.2f}"

    for name, value in est.breakdown.items():
        if value or name in ("parameters", "gradients", "optimizer"):  # a zero here is news (offloaded)
            table.add_row(component_label(name, m), gb(value))
    table.add_row("[bold]peak allocated[/bold] (max_memory_allocated)", f"[bold]{gb(est.peak)}[/bold]")
    if est.overheads:
        table.add_row("peak reserved (max_memory_reserved)", gb(est.reserved))
        table.add_row("  with expandable_segments", gb(est.reserved_expandable))
    for name, value in est.overheads.items():
        if value:
            table.add_row(f"+ {name.replace('_', ' ')}", gb(value))
    if est.overheads:
        table.add_row("[bold]device total[/bold] (nvidia-smi)", f"[bold]{gb(est.device_total)}[/bold]")
    console.print(table)
    console.print(f"parameters {est.total_params:,} · trainable {est.trainable_params:,} "
                  f"({100 * est.trainable_params / est.total_params:.3g}% of all, adapters included) · CPU RAM for "
                  f"offload {human_bytes(est.cpu_bytes) if est.cpu_bytes else 'none'} per node")
    if est.fits is not None:
        budget = est.gpu_memory * (1 - est.safety_margin)
        verdict = "[green]fits[/green]" if est.fits else "[red]does not fit[/red]"
        console.print(f"{verdict} on {est.gpu}: {human_bytes(est.device_total if est.overheads else est.peak)} of "
                      f"{human_bytes(budget)} usable ({human_bytes(est.gpu_memory)} less {est.safety_margin:.0%} margin)")
    for note in est.notes:
        console.print(f"[dim]{note}[/dim]")


def reach_table(reach: list, model: str, gpu: str, granularity: int) -> None:
    """``plan --max-seq-len``: each candidate's longest context, the farthest first."""
    table = Table(title=f"longest context that fits, {model} on {gpu} (exact to {granularity} tokens)")
    for col in ("mixture", "max seq-len", "peak GB there"):
        table.add_column(col, justify="left" if col == "mixture" else "right")
    for r in reach:
        length = "-" if r.max_seq_len is None else f"{r.max_seq_len:,}" + (" (positions)" if r.capped else "")
        table.add_row(r.mixture.label, length, "-" if r.peak_gb is None else f"{r.peak_gb:.2f}")
    console.print(table)


def context_matrix_table(cells, granularity: int) -> None:
    """``matrix --max-seq-len``: models down, GPUs across; the longest context and its mixture."""
    gpus = list(dict.fromkeys(c.gpu for c in cells))
    table = Table(title=f"longest context that fits (exact to {granularity} tokens)")
    table.add_column("model", overflow="fold")
    for g in gpus:
        table.add_column(g, justify="center")
    for model in dict.fromkeys(c.model for c in cells):
        row = [model]
        for g in gpus:
            r = next(c for c in cells if c.model == model and c.gpu == g).reach
            row.append("nothing fits" if r.max_seq_len is None else
                       f"{r.max_seq_len:,}{' (positions)' if r.capped else ''}\n[dim]{r.mixture.short_label}[/dim]")
        table.add_row(*row)
    console.print(table)


def compare_report(both: dict) -> None:
    """``plan --compare-quantize``: the two winners side by side."""
    table = Table(title=f"fastest fitting mixture, base weights as they are vs {both['scheme']}")
    for col in ("", "mixture", "peak GB", "device GB", "host GB", "step s"):
        table.add_column(col, justify="left" if col in ("", "mixture") else "right")
    for key, name in (("without", "16-bit base"), ("with", both["scheme"])):
        best = both[key].best
        if best is None:
            table.add_row(name, f"nothing fits: {both[key].suggestion or ''}", "-", "-", "-", "-")
            continue
        table.add_row(name, best.mixture.label, gb(best.memory.peak), gb(best.memory.device_total),
                      gb(best.memory.cpu_bytes), f"{best.time.total:.3f}")
    console.print(table)


def plan_report(result) -> None:
    """Chosen mixture, why it wins, runners-up; or the smallest change when nothing fits."""
    best = result.best
    if best is None:
        console.print(f"[red]{result.suggestion or 'nothing fits'}[/red]")
        closest = sorted(result.candidates, key=lambda c: c.over_gb)[:3]
        table = Table(title="closest candidates")
        for col in ("mixture", "device GB", "over by GB", "step s"):
            table.add_column(col, justify="left" if col == "mixture" else "right")
        for c in closest:
            table.add_row(c.mixture.label, gb(c.memory.device_total), f"{c.over_gb:.2f}", f"{c.time.total:.3f}")
        console.print(table)
        return
    m = best.mixture
    console.print(f"[bold green]{m.label}[/bold green] for {result.model} on {m.world} x {result.gpu}, "
                  f"s={m.seq_len}, micro batch {m.micro_batch} x {best.time.grad_accum} accumulation")
    console.print(f"peak {gb(best.memory.peak)} GB allocated, {gb(best.memory.device_total)} GB on the device; "
                  f"{best.time.total:.3f} s per optimizer step ({best.time.samples} samples)")
    if m.offload != "none":
        console.print(f"host RAM: {gb(best.memory.cpu_bytes)} GB per node for the offloaded "
                      f"{'optimizer states and parameters' if m.offload == 'all' else 'optimizer states'}")
    for note in result.notes:
        console.print(f"[yellow]{note}[/yellow]")
    misfits = result.faster_misfits
    if misfits:
        console.print("why it wins: the faster mixtures do not fit:")
        for c in misfits[:5]:
            console.print(f"  {c.mixture.label}: {c.time.total:.3f} s, over by {c.over_gb:.2f} GB")
    elif not result.faster_fits:
        console.print("why it wins: it is the fastest candidate, and it fits")
    table = Table(title="runners-up")
    for col in ("mixture", "peak GB", "device GB", "step s", "vs winner"):
        table.add_column(col, justify="left" if col == "mixture" else "right")
    for c in result.runners_up:
        table.add_row(c.mixture.label, gb(c.memory.peak), gb(c.memory.device_total), f"{c.time.total:.3f}",
                      f"{100 * (c.time.total / best.time.total - 1):+.1f}%")
    console.print(table)


def matrix_table(cells, title: str) -> None:
    seqs = list(dict.fromkeys(c.seq_len for c in cells))
    console.print(f"[bold]{title}[/bold]", soft_wrap=True)
    table = Table()
    table.add_column("model", overflow="fold")  # a config path is shown whole, folded, never cut
    for s in seqs:
        table.add_column(str(s), justify="center")
    for model in dict.fromkeys(c.model for c in cells):
        row = [model]
        for s in seqs:
            cell = next(c for c in cells if c.model == model and c.seq_len == s)
            if cell.best is None:
                row.append("n/a" if cell.note else "—")
            else:
                row.append(f"{cell.best.mixture.short_label}\n[dim]{cell.best.time.total:.2f} s · "
                           f"{cell.best.memory.device_total / GB:.0f} GB[/dim]")
        table.add_row(*row)
    console.print(table)

    console.print("[dim]cells: fastest fitting mixture, seconds per optimizer step, device GB; — nothing fits; "
                  f"n/a beyond the model's positions; {LEGEND}[/dim]")


def eval_table(evals: dict) -> None:
    """Before/after: the base model and the fine-tuned one on the same held-out rows."""
    before, after = evals["before"], evals["after"]
    table = Table(title=f"held-out {after.get('format', 'dialogue')} rows: {after['rows']} ({after['held_out']})")
    for col in ("model", "eval loss", "ROUGE-1", "ROUGE-2", "ROUGE-L"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in (("before (base)", before), ("after (fine-tuned)", after)):
        table.add_row(name, f"{r['eval_loss']:.3f}",
                      *("-" if r[k] is None else f"{100 * r[k]:.1f}" for k in ("rouge1", "rouge2", "rougeL")))
    console.print(table)
    sample = after["samples"][0] if after["samples"] else None
    if sample:
        console.print(f"[dim]{sample['id']}[/dim] reference: {sample['reference']}\n  fine-tuned: {sample['generated']}")


def quantity(what: str, value) -> str:
    """A measured or predicted figure in a unit that fits it: bytes for "(GB)", time for seconds."""
    if value is None:
        return "-"
    if "(GB)" in what or what.endswith("GB"):
        return human_bytes(value * 1e9)
    if "second" in what or what.endswith("(s)"):
        return human_seconds(value)
    return f"{value:.4g}"


def data_line(data: dict) -> str:
    """What the data was and how long its rows really are, beside the sequence length used."""
    skipped = data["skipped_missing"] + data["skipped_empty"] + data["skipped_too_long"]
    how = data.get("format") or "dialogue"
    if data.get("format") and data["format"] != "text":
        how += ", " + ("the tokenizer's chat template" if data.get("chat_template") else "no chat template")
        how += ", loss on " + ("every token" if data.get("train_on_prompt") else "the responses only")
    line = (f"data ({how}): {data['used']} of {data['rows']} rows used ({data['truncated']} truncated, "
            f"{skipped} skipped), {data['sequences']} sequences")
    if data.get("tokens_max") is not None:
        line += (f"; row tokens max {data['tokens_max']}, p95 {data['tokens_p95']}, mean {data['tokens_mean']:g} "
                 f"at seq-len {data['seq_len']}")
    return line


def train_summary(record: dict) -> None:
    meas, eng, data = record["measured"], record["engine"], record["data"]
    console.print(f"[bold green]{record['label']}[/bold green] on {record['device']}"
                  f"{' (' + record['gpu'] + ')' if record.get('gpu') else ''}: engine {eng['name']}, "
                  f"ZeRO stage {eng['zero_stage']}, optimizer {eng['optimizer']}, "
                  f"{eng['trainable_params']:,} trainable parameters, {meas['ranks']} rank(s)")
    console.print(data_line(data))
    attempts = record.get("attempts") or []
    if len(attempts) > 1:  # --mixture auto fell back: say what was tried and why
        console.print(f"--mixture auto: {len(attempts)} attempts on {record['auto']['gpu']}")
        for a in attempts:
            how = "ran" if a["outcome"] == "ok" else f"out of memory ({a.get('error', '')[:120]})"
            console.print(f"  {a['attempt']}. {a['label']} (predicted {human_bytes(a['predicted_peak_gb'] * 1e9)}): "
                          f"{how}{', resumed from its checkpoint' if a.get('resumed') else ''}")
    for note in record.get("notes") or []:
        console.print(f"[yellow]{note}[/yellow]")
    table = Table(title="measured vs predicted")
    for col in ("quantity", "measured", "predicted", "error"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    for what, row in record["comparison"].items():
        fmt = (lambda v, what=what: quantity(what, v))
        table.add_row(what.replace(" (GB)", ""), fmt(row["measured"]), fmt(row["predicted"]),
                      "-" if row["error"] is None else f"{100 * row['error']:+.1f}%")
    console.print(table)
    curve = meas["loss_curve"]
    if curve:
        ran = meas.get("steps_this_run", meas["steps"])
        since = f" (steps {meas['steps'] - ran + 1}-{meas['steps']}, resumed)" if meas.get("resumed_from") else ""
        step = "-" if meas["median_step_s"] is None else human_seconds(meas["median_step_s"])
        rss = "-" if meas.get("peak_cpu_hwm_gb") is None else human_bytes(meas["peak_cpu_hwm_gb"] * 1e9)
        console.print(f"loss {curve[0][1]:.4f} -> {curve[-1][1]:.4f} over {ran} steps{since}; median step "
                      f"{step}, {meas['tokens_per_s'] or 0:,.0f} tokens/s; peak CPU RSS {rss}")
    artifacts = record.get("artifacts") or {}
    if artifacts.get("model"):
        console.print(f"{artifacts['kind']} saved in {artifacts['model']}")
    console.print(f"[dim]run record: {record['config']['output_dir']}/run.json[/dim]")


class LazyProgress:
    """A rich progress bar on stderr that appears only when training starts: an error before that
    stays one clean line."""

    def __init__(self, *columns, file=None):
        self.columns = columns
        self.file = file  # where the bar goes (the terminal's stderr while engine output goes to a log)
        self.bar = None

    def add_task(self, *args, **kwargs):
        stream = self.file if self.file is not None else sys.stderr
        if self.bar is None and not stream.isatty():
            return None  # no terminal (a pipe, a log, CI): a bar would only leave blank lines
        if self.bar is None:
            console = Console(file=self.file) if self.file is not None else Console(stderr=True)
            self.bar = Progress(*self.columns, console=console, transient=True)
            self.bar.start()
        return self.bar.add_task(*args, **kwargs)

    def update(self, *args, **kwargs):
        if self.bar is not None:
            self.bar.update(*args, **kwargs)

    def stop(self):
        if self.bar is not None:
            self.bar.stop()


def print_table(title: str, columns: tuple[str, ...], rows) -> None:
    """A titled table of rows of text, printed."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def arch_fit_report(name: str, entry: dict, before: float, lengths, path: str, key: str) -> None:
    """``calibrate-arch``'s corrections per mixture class, and the error they remove."""
    print_table(f"{name}: corrections fitted to the analytic activations (bytes per sequence; s = tokens)",
                ("class", "per layer", "per model"),
                ((cls, f"{t['layer'][0]:.4g}*s + {t['layer'][1]:.4g}*s^2", f"{t['base'][0]:.4g}*s + {t['base'][1]:.4g}*s^2")
                 for cls, t in entry["classes"].items()))
    console.print(f"analytic vs simulated before the fit: worst {100 * before:.1f}% at "
                  f"s={'/'.join(map(str, lengths))}, 2-3 layers. Saved to {path} ({key}).")


def gpu_calibration_report(result: dict, path: str) -> None:
    """``calibrate-gpu``'s constants beside ftmix's defaults, the fit's residuals, what was skipped."""
    seconds = result["measurements"]["seconds"]
    print_table(f"{result['gpu']}: step-time constants from {result['device']} ({seconds:.0f} s)",
                ("constant", "fitted", "ftmix's default"),
                ((key, f"{value:.4g}", f"{getattr(DEFAULT, key):.4g}") for key, value in result["constants"].items()))
    fitted, clamped = result["fit"], result["clamped_to_their_range"]
    console.print(f"GEMM efficiency curve: median residual {100 * fitted['gemm_residual_median']:.1f}%, worst "
                  f"{100 * fitted['gemm_residual_worst']:.1f}% over {fitted['gemm_points']} token counts. "
                  + "".join(f"Skipped: {x}. " for x in result["skipped"])
                  + (f"Held at the top of their range: {', '.join(clamped)}. " if clamped else "")
                  + f"Use it with --calibration {path}.")


TIME_PARTS = (("compute_s", "matmuls"), ("attention_s", "attention"), ("memory_bound_s", "element-wise"),
              ("dequantize_s", "de-quantization"), ("communication_s", "exposed communication"),
              ("offload_s", "offload transfers"), ("optimizer_s", "optimizer"), ("overhead_s", "host overhead"))


def step_time_line(time: dict, gpu: str) -> str:
    """Where the step time goes, largest part first, and the MFU it makes."""
    parts = sorted(((time[key], name) for key, name in TIME_PARTS if time.get(key)), reverse=True)
    split = ", ".join(f"{name} {human_seconds(value)}" for value, name in parts)
    return (f"step time on {gpu}: {human_seconds(time['step_time_s'])} per optimizer step of {time['grad_accum']} "
            f"micro step(s) ({split}); MFU {100 * time['mfu']:.0f}%")
