"""Calibration on the published record: does fitting the constants to measured runs help on runs
the fit never saw?

Imports every representable row of ``benchmarks/data/published-rows.jsonl`` into a fresh study
store (``ftmix study import``), fits (``ftmix study calibrate``, every 3rd trial held back) and
writes ``benchmarks/results/calibration_published.json`` (the calibration file, with every row's
error before and after) and ``.md`` (the before/after table). The issue's goal: the held-back
median runtime error at most 10%, and no held-back memory error raised.

    PYTHONPATH=src python benchmarks/calibration.py [--rows FILE] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ftmix.cli.study import ordinal
from ftmix.study.calibrate import calibrate
from ftmix.study.importer import import_files
from ftmix.study.store import Store

HERE = Path(__file__).resolve().parent
DEFAULT_ROWS = HERE / "data" / "published-rows.jsonl"


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(report: dict, imported: dict) -> str:
    e = report["errors"]
    lines = ["# Calibration on the published record", "",
             "Written by `benchmarks/calibration.py`: every representable row of `benchmarks/data/published-rows.jsonl` "
             f"imported ({imported['imported']} of {imported['imported'] + len(imported['not_represented'])}), "
             f"fitted by `ftmix study calibrate` with every {ordinal(report['holdout_every'])} trial held back. Errors are "
             "|predicted / measured - 1|.", "",
             "| trials | quantity | n | median before | median after | worst before | worst after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for part in ("fitted", "held_back"):
        for q in ("memory", "time"):
            b, a = e[part]["before"][q], e[part]["after"][q]
            lines.append(f"| {part.replace('_', ' ')} | {q} | {b['n']} | {_pct(b['median'])} | {_pct(a['median'])} "
                         f"| {_pct(b['worst'])} | {_pct(a['worst'])} |")
    lines += ["", "Fitted constants per GPU type (the rest keep ftmix's defaults):", ""]
    for gpu, section in report["per_gpu"].items():
        lines.append(f"- {gpu}: " + ", ".join(f"{k} = {v:g}" for k, v in section["constants"].items()))
    gpus_without = sorted(set(report["fitted_on_gpus"]) - set(report["per_gpu"]))
    lines.append(f"- too few fitted step times for constants of their own (defaults stay): {', '.join(gpus_without)}")
    lines.append("- memory overheads: " + (", ".join(f"{k} = {v:g}" for k, v in report["memory"].items()) or "defaults kept"))
    lines += [f"- {n}" for n in report["notes"]]
    lines += ["", "## Rows with a step time", "", "| id | GPU | held back | measured s | error before | error after |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in report["rows"]:
        if "time" in r:
            t = r["time"]
            lines.append(f"| {r['id']} | {r['gpu']} | {'yes' if r['held_back'] else ''} | {t['measured_s']} "
                         f"| {_pct(t['before'])} | {_pct(t['after'])} |")
    moved = [r for r in report["rows"] if "memory" in r and r["held_back"]
             and abs(r["memory"]["after"]) > abs(r["memory"]["before"]) + 1e-9]
    lines += ["", f"Held-back memory errors raised by the calibration: {len(moved)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=str(DEFAULT_ROWS))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "published.sqlite")
        imported = import_files(store, [args.rows])
        report = calibrate(store.trials())
        store.close()
    out = Path(args.out)
    (out / "calibration_published.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report, imported)
    (out / "calibration_published.md").write_text(text)
    print(text.split("\n## Rows")[0])
    return report


if __name__ == "__main__":
    main()
