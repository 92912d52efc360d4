"""The run record (run.json): the mixture, what the engine reports, the measurements (max over
ranks) and ftmix's own predictions for the same mixture, side by side. Typed and versioned
(``RunRecord``), and written and read here only."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.files import read_json

GB = 1e9
# 2: the version written into the record (1: run.json before it was, read the same way)
SCHEMA_VERSION = 2
RUN_JSON = "run.json"


@dataclass
class RunRecord:
    """One run, as run.json holds it (docs/train.md, "The run record")."""

    config: dict  # the TrainConfig, every key
    mixture: dict  # the Mixture the run resolved
    label: str = ""
    model: str = ""
    device: str | None = None
    gpu: str | None = None
    attn_implementation: str | None = None
    notes: list = field(default_factory=list)
    engine: dict = field(default_factory=dict)  # what the engine says it ran (ftmix.engines)
    artifacts: dict = field(default_factory=dict)  # the final model and tokenizer, the random init's checksum
    data: dict = field(default_factory=dict)  # the data report
    measured: dict = field(default_factory=dict)  # peaks over ranks, step times, the loss curve, the twin
    predicted: dict = field(default_factory=dict)  # ftmix's estimate (and step time) for the same mixture
    versions: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)  # predicted beside measured, where both are the same thing
    comparison_components: dict | None = None  # the estimate's components beside the twin's roles
    eval: dict | None = None  # `ftmix eval`'s latest scores, base and fine-tuned
    attempts: list | None = None  # --mixture auto: every mixture tried
    auto: dict | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, data, where: str = RUN_JSON) -> RunRecord:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict) \
                or not isinstance(data.get("mixture"), dict):
            raise FtmixError(f"{where} is not an ftmix run record (no config or mixture)")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise FtmixError(f"{where}: run record version {version!r} is newer than this ftmix reads "
                             f"({SCHEMA_VERSION}); upgrade ftmix")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, **({} if "schema_version" in data
                                                                        else {"schema_version": 1}))

    def to_json(self) -> dict:
        """The record as run.json holds it; keys a run did not have (eval, attempts) left out."""
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None or k in ("device", "gpu", "attn_implementation")}


def read_record(run_dir: str | Path) -> RunRecord:
    """A run folder's run.json, checked (one clear error for a folder without one or a foreign file)."""
    path = Path(run_dir).expanduser() / RUN_JSON
    if not path.is_file():
        raise FtmixError(f"--run {run_dir}: no run.json there (a finished `ftmix train` output dir)")
    return RunRecord.from_json(read_json(path, "run record"), str(path))


def write_record(run_dir: str | Path, record: RunRecord) -> dict:
    """run.json of the record, written at the current version; returns what was written."""
    record.schema_version = SCHEMA_VERSION
    data = record.to_json()
    (Path(run_dir) / RUN_JSON).write_text(json.dumps(data, indent=1) + "\n")
    return data


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

    for r, row in zip(ranks, per_rank):
        if r.get("twin"):
            row.update(twin_device=r["twin"]["device_peak_bytes"], twin_host=r["twin"]["host_peak_bytes"])
    measured = dict(head["measured"])
    measured.update(peak_gpu_allocated_gb=_gb(top("gpu_allocated")), peak_gpu_reserved_gb=_gb(top("gpu_reserved")),
                    peak_cpu_hwm_gb=_gb(top("cpu_hwm")), per_rank=per_rank, ranks=len(ranks),
                    twin=merge_twins(ranks))
    record = {k: v for k, v in head.items() if k not in ("rank", "peaks", "measured", "twin")}
    record["measured"] = measured
    record["comparison"] = _compare(record.get("predicted") or {}, measured, record.get("device"))
    if measured.get("twin") and (record.get("predicted") or {}).get("breakdown_bytes"):
        top = max((r for r in ranks if r.get("twin")), key=lambda r: r["twin"]["device_peak_bytes"])
        record["comparison_components"] = compare_components(record["predicted"]["breakdown_bytes"],
                                                             top["twin"]["device_by_role"])
    return write_record(out, RunRecord.from_json(record))


def merge_twins(ranks: list[dict]) -> dict | None:
    """The device-memory twin over ranks: the device peak is the highest rank's, with its breakdown;
    host bytes add up over the ranks of a node (each offloads its own partition)."""
    twins = [(r["rank"], r["twin"]) for r in ranks if r.get("twin")]
    if not twins:
        return None
    rank, top = max(twins, key=lambda rt: rt[1]["device_peak_bytes"])
    return {"device_peak_gb": _gb(top["device_peak_bytes"]), "device_peak_bytes": top["device_peak_bytes"],
            "rank": rank, "device_peak_at": top["device_peak_at"],
            "device_by_role_gb": {k: _gb(v) for k, v in top["device_by_role"].items()},
            "device_top_sites": top["device_top_sites"],
            "host_peak_gb": _gb(sum(t["host_peak_bytes"] for _, t in twins)),
            "host_peak_bytes": sum(t["host_peak_bytes"] for _, t in twins),
            "host_peak_per_rank_gb": [_gb(t["host_peak_bytes"]) for _, t in twins]}


# The estimate's breakdown and the twin's roles, grouped into what both can name.
# Gradients and DeepSpeed's buffers are one group: DeepSpeed moves gradients into its buckets and
# partitions as they come, so where one ends and the other starts is the engine's business.
COMPONENTS = {
    "parameters": (("parameters", "gathered_params"), ("parameter",)),
    "optimizer states (fp32 master + moments)": (("optimizer",), ("fp32 master", "optimizer state")),
    "gradients and DeepSpeed buffers": (("gradients", "zero_buffers", "optimizer_step"),
                                        ("gradient", "bucket", "deepspeed buffer")),
    "activations and temporaries": (("activations", "loss_head", "autocast_copies", "gc_recompute", "backward_working"),
                                    ("activation", "temporary")),
}


def compare_components(predicted: dict, measured_roles: dict) -> dict:
    """Bytes per component at the peak: the estimate's breakdown against the twin's roles."""
    rows = {}
    for name, (pkeys, roles) in COMPONENTS.items():
        p = sum(predicted.get(k, 0) for k in pkeys)
        m = sum(measured_roles.get(r, 0) for r in roles)
        rows[name] = {"predicted": round(p), "measured": m, "error": None if not m else round(p / m - 1, 4)}
    return rows


def _fine(x):
    """GB to the byte (tiny CPU runs hold kilobytes)."""
    return None if x is None else x / GB


def _gb(x):
    return None if x is None else round(x / GB, 4)


def _compare(predicted: dict, measured: dict, device: str | None = "cuda") -> dict:
    """Prediction beside measurement where both are of the same thing: step time only on a GPU
    (the prediction is a GPU's; a CPU's step time is another machine's)."""
    rows = {}
    twin = measured.get("twin") or {}
    estimate = predicted.get("estimate") or {}
    peak = predicted.get("peak_bytes")
    peak = predicted.get("peak_gb") if peak is None else peak / GB
    cpu = predicted.get("cpu_bytes")
    cpu = estimate.get("cpu_gb") if cpu is None else cpu / GB
    host = twin.get("host_peak_bytes")
    pairs = [(peak, measured.get("peak_gpu_allocated_gb"), "peak memory allocated per GPU (GB)"),
             (peak, _fine(twin.get("device_peak_bytes")), "device peak per GPU, twin (GB)"),
             (cpu, _fine(host), "host memory per node, twin (GB)"),
             (predicted.get("step_time_s"), measured.get("median_step_s"), "seconds per optimizer step")]
    for p, m, what in pairs:
        if what == "seconds per optimizer step" and device != "cuda":
            continue
        if m is None and what != "seconds per optimizer step":
            continue  # a counter this run does not have (CUDA's on a CPU, the twin's when off)
        rows[what] = {"predicted": None if p is None else round(p, 9), "measured": m,
                      "error": None if (p is None or not m) else round(p / m - 1, 4)}
    return rows
