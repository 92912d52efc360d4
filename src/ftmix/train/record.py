"""The run record (run.json): the mixture, what the engine reports, the measurements (max over
ranks) and ftmix's own predictions for the same mixture, side by side."""

from __future__ import annotations

import json
from pathlib import Path

GB = 1e9


def merge_ranks(output_dir: str | Path) -> dict:
    """Combine ranks/rank*.json into run.json; peaks are the max over ranks (the study's figure)."""
    out = Path(output_dir)
    ranks = [json.loads(p.read_text()) for p in sorted((out / "ranks").glob("rank*.json"))]
    if not ranks:
        raise FileNotFoundError(f"no rank records in {out / 'ranks'}")
    head = next((r for r in ranks if r["rank"] == 0), ranks[0])
    per_rank = [{"rank": r["rank"], **r["peaks"]} for r in ranks]

    def top(key):
        values = [r["peaks"].get(key) for r in ranks if r["peaks"].get(key) is not None]
        return max(values) if values else None

    measured = dict(head["measured"])
    measured.update(peak_gpu_allocated_gb=_gb(top("gpu_allocated")), peak_gpu_reserved_gb=_gb(top("gpu_reserved")),
                    peak_cpu_hwm_gb=_gb(top("cpu_hwm")), per_rank=per_rank, ranks=len(ranks))
    record = {k: v for k, v in head.items() if k not in ("rank", "peaks", "measured")}
    record["measured"] = measured
    record["comparison"] = _compare(record.get("predicted") or {}, measured)
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _gb(x):
    return None if x is None else round(x / GB, 4)


def _compare(predicted: dict, measured: dict) -> dict:
    rows = {}
    pairs = [("peak_gb", "peak_gpu_allocated_gb", "peak memory allocated per GPU (GB)"),
             ("step_time_s", "median_step_s", "seconds per optimizer step")]
    for pkey, mkey, what in pairs:
        p, m = predicted.get(pkey), measured.get(mkey)
        rows[what] = {"predicted": p, "measured": m,
                      "error": None if (p is None or not m) else round(p / m - 1, 4)}
    return rows
