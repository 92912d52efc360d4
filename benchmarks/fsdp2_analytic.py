"""The analytic FSDP2 model (``ftmix.estimate.fsdp2``, milliseconds, torch-free) against the FSDP2
simulation (the real ``fully_shard`` code under a fake process group, equal to real gloo ranks:
benchmarks/results/fsdp2_simulation.md) on catalog models at full size: rank 0's peak of each.

    .venv/bin/python benchmarks/fsdp2_analytic.py [--out benchmarks/results] [--only TEXT]  # cases whose id has TEXT
    .venv/bin/python benchmarks/fsdp2_analytic.py --repredict   # the committed simulations, predicted anew

Each case simulates in its own process (tens of seconds each). Writes
benchmarks/results/fsdp2_analytic.{json,md}; tests/estimate/test_fsdp2.py predicts every row
again and holds it within 1% of its committed simulation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from isolated import measured_rows, run_case  # noqa: E402 - the benchmarks' shared helpers

BASE = dict(sharding="fsdp2", offload="none", precision="bf16", attn="sdpa", micro_batch=1)
# (model, mixture keys, grad_accum): FULL_SHARD and SHARD_GRAD_OP, LoRA and full fine-tuning, GC,
# pure 16-bit, one micro step per optimizer step, tied and untied heads, biases, fused q/k/v
CASES = [
    ("llama-2-7b", dict(zero=3, lora=0, gc=True, seq_len=1024, gpus=8), None),
    ("llama-2-7b", dict(zero=3, lora=64, gc=False, seq_len=1024, gpus=8), None),
    ("llama-2-7b", dict(zero=3, lora=0, gc=True, seq_len=4096, gpus=8), None),
    ("llama-2-7b", dict(zero=2, lora=0, gc=True, seq_len=1024, gpus=8), None),
    ("llama-2-7b", dict(zero=3, lora=16, lora_targets="all-linear", gc=True, seq_len=4096, gpus=8), None),
    ("llama-2-7b", dict(zero=3, lora=0, gc=True, seq_len=2048, gpus=8, precision="bf16-true"), None),
    ("llama-2-7b", dict(zero=3, lora=0, gc=True, seq_len=2048, gpus=8), 1),
    ("llama-2-13b", dict(zero=3, lora=0, gc=True, seq_len=2048, gpus=8), None),
    ("mistral-7b", dict(zero=3, lora=16, gc=False, seq_len=2048, gpus=4), None),
    ("qwen2.5-7b", dict(zero=3, lora=16, gc=True, seq_len=2048, gpus=4), None),
    ("phi-3-mini", dict(zero=3, lora=8, gc=False, seq_len=1024, gpus=4), None),
    ("smollm2-135m", dict(zero=3, lora=0, gc=False, seq_len=512, gpus=2), None),
    ("llama-3-8b", dict(zero=3, lora=0, gc=True, seq_len=8192, gpus=8), None),
    ("llama-2-70b", dict(zero=3, lora=0, gc=True, seq_len=1024, gpus=8), None),
    # QLoRA: 4-bit codes in 16-bit storage, sharded (bitsandbytes' FSDP-QLoRA)
    ("llama-2-7b", dict(zero=3, lora=16, quantize="bnb.nf4", gc=False, seq_len=512, micro_batch=2, gpus=2), None),
    ("llama-2-13b", dict(zero=3, lora=8, quantize="bnb.nf4-dq", gc=True, seq_len=2048, gpus=4), None),
    ("mistral-7b", dict(zero=2, lora=16, quantize="bnb.nf4", gc=True, seq_len=1024, gpus=8), None),
    ("qwen2.5-7b", dict(zero=3, lora=16, quantize="bnb.nf4", gc=False, seq_len=1024, gpus=2,
                        precision="bf16-true"), None),
    ("llama-3-8b", dict(zero=3, lora=8, lora_targets="all-linear", quantize="bnb.fp4", gc=True, seq_len=4096,
                        gpus=2), None),
]

ONE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from ftmix.estimate.sim_input import simulation_config
from ftmix.measure.simulate import simulate
from ftmix.mixture import mixture_from_flags
name, keys, accum = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
m = mixture_from_flags(None, **keys)
config, _ = simulation_config(name, m)
t0 = time.time()
sim = simulate(config, m, name, grad_accum=accum)
print(json.dumps({"simulated_bytes": round(sim.peak), "simulate_s": round(time.time() - t0, 1),
                  "simulated_at": sim.notes[0], "simulated_breakdown": {k: round(v) for k, v in sim.breakdown.items()}}))
"""


def case_id(name: str, keys: dict, accum) -> str:
    from ftmix.mixture import mixture_from_flags

    m = mixture_from_flags(None, **dict(BASE, **keys))
    precision = f" {m.precision}" if m.precision != "bf16" else ""
    return f"{name} {m.world}x {m.label}{precision} s={m.seq_len}" + (f" grad_accum={accum}" if accum else "")


def predict(name: str, keys: dict, accum) -> dict:
    from ftmix.catalog import load_model
    from ftmix.estimate import estimate
    from ftmix.mixture import mixture_from_flags

    t0 = time.perf_counter()
    est = estimate(load_model(name), mixture_from_flags(None, **dict(BASE, **keys)), grad_accum=accum)
    return {"analytic_bytes": round(est.peak), "analytic_ms": round(1e3 * (time.perf_counter() - t0), 2),
            "analytic_at": est.notes[0], "analytic_breakdown": {k: round(v) for k, v in est.breakdown.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", default=None)
    ap.add_argument("--repredict", action="store_true",
                    help="keep the committed simulations; recompute the analytic side with the current model")
    args = ap.parse_args()
    if args.repredict:
        old = json.loads((Path(args.out) / "fsdp2_analytic.json").read_text())["rows"]
        rows = [dict(r, case=case_id(r["model"], r["keys"], r["grad_accum"]),
                     **predict(r["model"], r["keys"], r["grad_accum"])) for r in old]
        for r in rows:
            r["error"] = round(r["analytic_bytes"] / r["simulated_bytes"] - 1, 5)
        write(rows, Path(args.out))
        return
    def measure(case_id: str, case: tuple) -> dict:
        name, keys, accum = case
        sim = run_case(ONE, name, json.dumps(dict(BASE, **keys)), json.dumps(accum))
        row = dict(case=case_id, model=name, keys=keys, grad_accum=accum, **sim, **predict(name, keys, accum))
        row["error"] = round(row["analytic_bytes"] / row["simulated_bytes"] - 1, 5)
        return row

    rows = measured_rows([(case_id(*c), c) for c in CASES], args.only, Path(args.out) / "fsdp2_analytic.json",
                         measure, lambda r: f"{r['case']}: simulated {r['simulated_bytes'] / 1e9:.3f} GB, analytic "
                                            f"{r['analytic_bytes'] / 1e9:.3f} GB ({100 * r['error']:+.2f}%)")
    write(rows, Path(args.out))

def write(rows: list[dict], out: Path) -> None:
    errors = [abs(r["error"]) for r in rows]
    summary = {"cases": len(rows), "worst": max(errors), "median": sorted(errors)[len(errors) // 2],
               "within_1pct": sum(e <= 0.01 for e in errors)}
    (out / "fsdp2_analytic.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    lines = ["# FSDP2: the analytic model against the simulation", "",
             "Written by `benchmarks/fsdp2_analytic.py`. Rank 0's peak allocated bytes; the simulation runs the real "
             "`fully_shard` code under a fake process group (equal to real gloo ranks, fsdp2_simulation.md); the "
             "analytic method is `ftmix estimate --sharding fsdp2` (torch-free).", "",
             f"- cases: {summary['cases']}; within 1%: {summary['within_1pct']}; median |error| "
             f"{100 * summary['median']:.2f}%, worst {100 * summary['worst']:.2f}%", "",
             "| case | simulated GB | analytic GB | error | simulated at | analytic at | simulate s | analytic ms |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['simulated_bytes'] / 1e9:.3f} | {r['analytic_bytes'] / 1e9:.3f} | "
                     f"{100 * r['error']:+.2f}% | {r['simulated_at'][9:]} | {r['analytic_at'][9:]} | "
                     f"{r['simulate_s']} | {r['analytic_ms']} |")
    (out / "fsdp2_analytic.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
