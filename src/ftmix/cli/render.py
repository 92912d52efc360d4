"""Rich tables for people; JSON for scripts. Domain code never prints: only this module does."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from ftmix.estimate import Estimate
from ftmix.estimate.constants import GB

console = Console()


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def gb(x: float) -> str:
    return f"{x / GB:,.2f}"


def estimate_table(est: Estimate) -> None:
    m = est.mixture
    title = f"{est.model} · {m.label} · s={m.seq_len} b={m.micro_batch} · {m.world} GPU(s)"
    table = Table(title=title + f" · method {est.method}")
    table.add_column("component")
    table.add_column("GB per GPU", justify="right")
    for name, value in est.breakdown.items():
        if value:
            table.add_row(name.replace("_", " "), gb(value))
    table.add_row("[bold]peak allocated[/bold]", f"[bold]{gb(est.peak)}[/bold]")
    for name, value in est.overheads.items():
        if value:
            table.add_row(f"+ {name.replace('_', ' ')}", gb(value))
    if est.overheads:
        table.add_row("[bold]device total[/bold]", f"[bold]{gb(est.device_total)}[/bold]")
    console.print(table)
    console.print(f"parameters {est.total_params:,} · trainable {est.trainable_params:,} "
                  f"({100 * est.trainable_params / est.total_params:.3g}%) · CPU RAM for offload {gb(est.cpu_bytes)} GB per node")
    if est.fits is not None:
        budget = est.gpu_memory * (1 - est.safety_margin)
        verdict = "[green]fits[/green]" if est.fits else "[red]does not fit[/red]"
        console.print(f"{verdict} on {est.gpu}: {gb(est.device_total if est.overheads else est.peak)} of "
                      f"{gb(budget)} GB usable ({gb(est.gpu_memory)} GB less {est.safety_margin:.0%} margin)")
    for note in est.notes:
        console.print(f"[dim]{note}[/dim]")
