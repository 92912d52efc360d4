"""How long a full-size simulation takes here and how much host memory it uses (issue 10: a
7B-shaped simulation under 60 s and 2 GB of RAM on 2 cores), with the analytic estimate beside it.

    .venv/bin/python benchmarks/simulate_speed.py [--models llama-2-7b] [--out benchmarks/results]
    .venv/bin/python benchmarks/simulate_speed.py --models llama-2-70b --cases 1 --append

Each case runs in its own process so that the peak RSS (VmHWM) is the simulation's alone. Writes
benchmarks/results/simulate_speed.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = [dict(lora=64, gc=False, attn="sdpa", seq_len=256), dict(lora=64, gc=True, attn="sdpa", seq_len=1024),
         dict(lora=0, gc=True, attn="sdpa", seq_len=256)]

ONE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from ftmix.catalog import load_model
from ftmix.estimate import estimate
from ftmix.estimate.sim_input import simulation_config
from ftmix.files import proc_bytes
from ftmix.measure.simulate import simulate
from ftmix.mixture import mixture_from_flags
name, case = sys.argv[1], json.loads(sys.argv[2])
m = mixture_from_flags(None, zero=0, precision="bf16", micro_batch=1, **case)
config, _ = simulation_config(name, m)
t0 = time.time()
sim = simulate(config, m, name)
seconds = time.time() - t0
ana = estimate(load_model(name), m)
print(json.dumps({"model": name, **case, "simulate_s": round(seconds, 1), "peak_rss_gb": round(proc_bytes("/proc/self/status", "VmHWM") / 1e9, 3),
                  "simulated_peak_gb": round(sim.peak / 1e9, 3), "analytic_peak_gb": round(ana.peak / 1e9, 3),
                  "analytic_vs_simulated": round(ana.peak / sim.peak - 1, 4), "peak_at": sim.notes[0]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-2-7b")
    ap.add_argument("--cases", type=int, default=len(CASES), help="the first N cases only (70B: 1)")
    ap.add_argument("--append", action="store_true", help="add the rows to the committed result")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        for case in CASES[:args.cases]:
            proc = subprocess.run([sys.executable, "-c", ONE, name, json.dumps(case)], capture_output=True, text=True,
                                  timeout=1800)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else \
                {"model": name, **case, "error": proc.stderr.strip().splitlines()[-1:]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.append and (out / "simulate_speed.json").exists():
        rows = json.loads((out / "simulate_speed.json").read_text())["rows"] + rows
    (out / "simulate_speed.json").write_text(json.dumps({"cpu_cores": __import__("os").cpu_count(), "rows": rows},
                                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
