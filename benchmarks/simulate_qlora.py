"""The quantized setups under fake tensors (issue 20): bitsandbytes' real quantized modules (its ops
have fake kernels) simulated (1) on the tiny models of the QLoRA conformance grid, against the
device-memory twin of the real CPU runs committed in benchmarks/results/conformance_qlora.json
(goal: within 0.5%), and (2) at full size, 7B and 70B QLoRA, against the analytic method, with the
wall time and the peak RAM of each simulation (goal: under a minute and 2 GB each). Writes
benchmarks/results/simulate_qlora.json and .md.

    .venv/bin/python benchmarks/simulate_qlora.py      # ~6 min on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conformance import QLORA_KEYS, SHAPES  # noqa: E402 - the grid's own shapes and keys

FULL = [  # (model, mixture flags)
    ("llama-2-7b", dict(quantize="bnb.nf4", gc=True, seq_len=1024)),
    ("llama-2-7b", dict(quantize="bnb.nf4-dq", seq_len=512, dora=True)),
    ("llama-2-7b", dict(quantize="bnb.nf4", seq_len=512, modules_to_save="lm_head", optimizer="paged_adamw_8bit")),
    ("llama-2-7b", dict(quantize="bnb.int8", gc=True, seq_len=1024)),
    ("mistral-7b", dict(quantize="bnb.fp4", seq_len=2048, lora_targets="all-linear")),
    ("llama-2-70b", dict(quantize="bnb.nf4-dq", gc=True, seq_len=2048)),
]


def tiny_cases() -> list[dict]:
    rows = json.loads((RESULTS / "conformance_qlora.json").read_text())["rows"]
    return [r for r in rows if r["zero"] == 0 and r["ranks"] == 1]


def simulate_tiny(row: dict) -> dict:
    from ftmix.measure.simulate import simulate
    from ftmix.mixture import Mixture

    m = Mixture(zero=0, offload="none", lora=row["lora"], gc=row["gc"], attn=row["attn"], precision="bf16",
                seq_len=128, **{k: row.get(k, v) for k, v in QLORA_KEYS.items()})
    est = simulate({"model_type": "llama", **SHAPES[row["shape"]]}, m, row["shape"])
    return {"name": row["name"], "measured_bytes": row["measured_bytes"], "simulated_bytes": round(est.peak),
            "error": round(est.peak / row["measured_bytes"] - 1, 4)}


def full_size(model: str, flags: dict) -> dict:
    """One simulation in a fresh process (its own wall time and peak RAM) and the analytic method."""
    args = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    cmd = [sys.executable, "-m", "ftmix", "estimate", "--model", model, "--zero", "0", "--json", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.time()
    with tempfile.NamedTemporaryFile("r") as rss_file:  # GNU time's maximum resident set, in KB
        sim = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd, "--method", "simulate"],
                             capture_output=True, text=True, env=env, timeout=900)
        rss_kb = int(rss_file.read().strip().splitlines()[-1])
    seconds = time.time() - start
    if sim.returncode != 0:
        return {"model": model, "flags": flags, "error": sim.stderr.strip().splitlines()[-1:]}
    analytic = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)
    simulated = json.loads(sim.stdout)
    return {"model": model, "flags": flags, "simulated_gb": simulated["peak_gb"], "analytic_gb": analytic["peak_gb"],
            "error": round(analytic["peak_gb"] / simulated["peak_gb"] - 1, 4), "seconds": round(seconds, 1),
            "max_rss_gb": round(rss_kb * 1024 / 1e9, 2),
            "simulated_peak_at": simulated["notes"][0]}


def main() -> None:
    tiny = [simulate_tiny(r) for r in tiny_cases()]
    for r in tiny:
        print(f"{r['name']}: simulate {r['error']:+.2%} vs the twin", flush=True)
    full = []
    for model, flags in FULL:
        full.append(full_size(model, flags))
        print(full[-1], flush=True)
    result = {"tiny": tiny, "full_size": full,
              "summary": {"tiny_worst": max(abs(r["error"]) for r in tiny),
                          "full_worst": max(abs(r["error"]) for r in full if isinstance(r.get("error"), float)),
                          "slowest_s": max(r.get("seconds", 0) for r in full),
                          "largest_rss_gb": max(r.get("max_rss_gb") or 0 for r in full)}}
    (RESULTS / "simulate_qlora.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Quantized setups simulated under fake tensors", "", "Written by `benchmarks/simulate_qlora.py`.", "",
             f"Summary: {json.dumps(result['summary'])}", "", "## Tiny models: simulate vs the twin of real CPU runs",
             "", "| case | measured B | simulated B | error |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['name']} | {r['measured_bytes']:,} | {r['simulated_bytes']:,} | {100 * r['error']:+.2f}% |"
              for r in tiny]
    lines += ["", "## Full size: analytic vs simulate (seconds and peak RAM of the simulation)", "",
              "| model | mixture | simulated GB | analytic GB | error | s | RAM GB |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in full:
        if not isinstance(r.get("error"), float):
            lines.append(f"| {r['model']} | {r['flags']} | failed: {r.get('error')} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['flags']} | {r['simulated_gb']} | {r['analytic_gb']} | "
                     f"{100 * r['error']:+.2f}% | {r['seconds']} | {r['max_rss_gb']} |")
    (RESULTS / "simulate_qlora.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
