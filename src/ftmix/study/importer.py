"""``ftmix study import``: measurements made elsewhere into the store, beside the study's own trials.

Three kinds of file, told apart by their content:
- a ``run.json`` of ``ftmix train`` from any machine (a GPU run's CUDA counters, or the CPU twin's);
- the JSON Lines of ``benchmarks/gpu_groundtruth.py`` (first line ``{"environment": ...}``);
- published rows in the format of ``benchmarks/data/published-rows.jsonl``: the rows whose setup ftmix
  can represent (``study.published``); the others are counted and listed with the reason.

Each becomes a finished trial with its predictions (ftmix's default constants), and the inputs that
calibration needs to predict it again. Importing the same file twice updates, never duplicates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftmix.catalog import load_gpu, load_model, match_gpu
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.files import json_lines, read_text
from ftmix.job.record import RunRecord
from ftmix.mixture import Mixture
from ftmix.plan import step_time
from ftmix.study.predict import inputs_of, model_config
from ftmix.study.published import NotRepresented, model_states_floor, represent
from ftmix.study.store import Store
from ftmix.study.trial import measurements


def import_files(store: Store, paths: list[str], study: str | None = None) -> dict:
    summary = {"imported": 0, "files": [], "not_represented": [], "not_represented_by_reason": {}}
    for path in paths:
        text = read_text(path, "measurement file")
        kind, rows = _parse(path, text)
        added, skipped = 0, []
        for row in rows:
            got = _convert(kind, row, path)
            if isinstance(got, str):
                skipped.append({"file": str(path), "id": _row_id(row), "why": got})
                continue
            got["study"] = study or got["study"]
            store.upsert(got)
            added += 1
        summary["files"].append({"file": str(path), "kind": kind, "imported": added, "not_represented": len(skipped)})
        summary["imported"] += added
        summary["not_represented"] += skipped
    for s in summary["not_represented"]:
        reasons = summary["not_represented_by_reason"]
        reasons[s["why"]] = reasons.get(s["why"], 0) + 1
    summary["not_represented_by_reason"] = dict(sorted(summary["not_represented_by_reason"].items(),
                                                       key=lambda kv: -kv[1]))
    return summary


def _row_id(row: dict) -> str:
    return str(row.get("id") or row.get("label") or "?")


def _parse(path, text: str) -> tuple[str, list[dict]]:
    stripped = text.strip()
    if not stripped:
        raise FtmixError(f"{path} is empty")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        if "measured" in whole and "mixture" in whole:
            return "run.json", [whole]
        if "id" not in whole or not PUBLISHED_KEYS <= set(whole):
            raise FtmixError(f"{path}: a JSON object that is neither an ftmix run.json nor a published row")
        lines = [whole]
    else:
        lines = json_lines(stripped, path)
    if lines and "environment" in lines[0]:
        env = lines[0]["environment"]
        return "gpu_groundtruth", [dict(r, _environment=env) for r in lines[1:]]
    if all("id" in r for r in lines):
        missing = sorted(PUBLISHED_KEYS - set(lines[0]))
        if missing:
            raise FtmixError(f"{path}: rows with an id but no {', '.join(missing)}: not published measurements "
                             "(training data? `ftmix train --data` reads that)")
        return "published", lines
    raise FtmixError(f"{path}: JSON Lines that are neither published rows (each with an id) nor "
                     "gpu_groundtruth output (first line {\"environment\": ...})")


# what every row of benchmarks/data/published-rows.jsonl carries to be a measurement
PUBLISHED_KEYS = frozenset({"model", "gpu", "method", "measured", "seq_len"})


def _convert(kind: str, row: dict, path) -> dict | str:
    if kind == "run.json":
        return _from_run_json(row, path)
    if kind == "gpu_groundtruth":
        return _from_groundtruth(row)
    return _from_published(row)


def _ident(prefix: str, *parts) -> str:
    return prefix + hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _from_run_json(record: dict, path) -> dict:
    record = RunRecord.from_json(record, str(path)).to_json()  # read as train writes it: job.record
    meas = measurements(record)
    config = record.get("config") or {}
    return dict(meas, id=_ident("run-", config.get("output_dir"), record.get("mixture"), record.get("versions"),
                                (record.get("measured") or {}).get("total_s")),
                study="imported", source="import:run.json", status="ok", trial_key=f"{Path(path).name}: {record.get('label')}",
                config=config)


def _from_groundtruth(row: dict) -> dict | str:
    env = row["_environment"]
    if env.get("gpu") in (None, "cpu"):
        return "gpu_groundtruth run on CPU: its memory figures are RSS, not device bytes"
    gpu = match_gpu(env["gpu"], env.get("total_memory") or 0)
    if gpu is None:
        return f"GPU {env['gpu']} is not in ftmix's catalog"
    mix = dict(row["mixture"])
    if row.get("variant") == "pure-bf16":
        mix["precision"] = "bf16-true"
    m = Mixture(**mix)
    spec = load_model(row["model"])
    est = estimate(spec, m, gpu, grad_accum=1)  # its step(): one micro step per optimizer step
    out = {"id": _ident("gt-", gpu.name, row["model"], mix, row.get("variant")), "study": "gpu_groundtruth",
           "source": "import:gpu_groundtruth", "trial_key": f"{row['model']} {m.label} ({row.get('variant')})",
           "label": m.label, "gpu": gpu.name, "device": "cuda", "versions": {k: env.get(k) for k in ("torch", "transformers", "peft")},
           "inputs": inputs_of(model_config({"model": row["model"]}), m, gpu, m.micro_batch * m.world, grad_accum=1),
           "predicted_peak_gb": est.peak / 1e9, "predicted_fits": None if est.fits is None else int(est.fits),
           "predicted_step_s": step_time(spec, gpu, m, m.micro_batch * m.world).total, "record": row}
    if row.get("status") == "OOM":
        return dict(out, status="oom", error=row.get("error"))
    return dict(out, status="ok", peak_gb=row["max_allocated"] / 1e9, peak_what="gpu_allocated",
                step_s=row.get("median_step_s"), tokens_per_s=row.get("tokens_per_s"))


def _from_published(raw: dict) -> dict | str:
    try:
        row = represent(raw)
    except NotRepresented as exc:
        return str(exc)
    except FtmixError as exc:
        return f"not a valid setup for ftmix: {exc}"
    if row.row_type == "max_context_at_budget":
        return "a longest context at a memory budget, not a run (benchmarks/published.py checks it)"
    m, gpu = row.mixture, row.gpu
    per_step = m.micro_batch * m.world  # the published speeds are per micro step
    try:
        est = estimate(row.spec, m, gpu, grad_accum=row.grad_accum)
    except FtmixError as exc:
        return f"not a valid setup for ftmix: {exc}"
    what = row.memory_what or "allocated"
    predicted = {"allocated": est.peak, "reserved": est.reserved, "device_total": est.device_total}[what]
    out = {"id": "pub-" + raw["id"], "study": "published", "source": "import:published", "tag": row.source,
           "trial_key": f"{raw['id']}: {m.label}", "label": m.label, "gpu": gpu.name if gpu else None,
           "inputs": inputs_of(row.hf_config, m, gpu, per_step, what, row.grad_accum),
           "predicted_peak_gb": predicted / 1e9,
           "predicted_fits": None if est.fits is None else int(est.fits), "record": raw,
           "versions": {"software": raw.get("software")}}
    if gpu is not None:
        out["predicted_step_s"] = step_time(row.spec, gpu, m, per_step).total
    if row.row_type == "oom":
        return dict(out, status="oom", error="published: out of memory")
    out.update(status="ok", peak_gb=None if row.memory_bytes is None else row.memory_bytes / 1e9,
               peak_what=None if row.memory_bytes is None else what)
    if row.memory_bytes is not None:
        floor = model_states_floor(row)
        if row.memory_bytes < floor:  # a figure below the states its stated setup must hold: another setup
            out.update(status="excluded", error=f"measured {row.memory_bytes / 1e9:.2f} GB, below the "
                                                f"{floor / 1e9:.2f} GB of model states its stated setup holds")
    if row.speed is not None:
        kind, value = row.speed
        step = value if kind == "s_per_micro_step" else m.tokens / value
        out.update(step_s=step, tokens_per_s=m.tokens / step)
    return out


def gpu_or_none(name: str | None):
    return load_gpu(name) if name else None
