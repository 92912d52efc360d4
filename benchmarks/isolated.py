"""What several benchmarks share: one case run in its own Python process (a fresh torch each, and
a crash or a leak stays inside it), and a partial re-run merged into the committed rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_case(code: str, *argv: str, timeout: int = 1800) -> dict:
    """Run ``code`` (a script printing one JSON line last) with ``argv``; its JSON, or exit with its error."""
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def keep_committed(rows: list[dict], committed: Path) -> list[dict]:
    """The committed rows not re-run, then these (a partial run replaces or adds its own cases)."""
    if not committed.exists():
        return rows
    ran = {r["case"] for r in rows}
    return [r for r in json.loads(committed.read_text())["rows"] if r["case"] not in ran] + rows


def measured_rows(cases, only: str | None, committed: Path, measure, describe) -> list[dict]:
    """``cases``: (id, case) pairs. Each whose id holds ``only`` (every one without it) becomes a row
    by ``measure(id, case)``, announced by ``describe(row)``; a partial run keeps the committed rows
    of the others."""
    rows = []
    for case_id, case in cases:
        if only and only not in case_id:
            continue
        rows.append(measure(case_id, case))
        print(describe(rows[-1]), flush=True)
    return keep_committed(rows, committed) if only else rows
