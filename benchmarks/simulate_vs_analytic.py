"""The analytic estimate against the simulation (the real code under fake tensors) for catalog
models, one GPU without DeepSpeed (what simulate covers). Issue 10's goal for the analytic method:
within 3% of the simulation. Writes benchmarks/results/simulate_vs_analytic.{json,md}.

    .venv/bin/python benchmarks/simulate_vs_analytic.py [--models a,b] [--seq-lens 256,1024]
"""

from __future__ import annotations

import argparse
import itertools
import json
import warnings
from pathlib import Path

MODELS = "smollm2-135m,phi-2,phi-3-mini,llama-2-7b,mistral-7b,qwen2.5-7b,llama-3-8b"


def main() -> None:
    warnings.simplefilter("ignore")
    from ftmix.catalog import load_model
    from ftmix.estimate import estimate
    from ftmix.estimate.sim_input import simulation_config
    from ftmix.measure.simulate import simulate
    from ftmix.mixture import mixture_from_flags

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--seq-lens", default="1024")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    rows = []
    for name, s, (lora, gc) in itertools.product(args.models.split(","), [int(x) for x in args.seq_lens.split(",")],
                                                 [(64, False), (0, True)]):
        m = mixture_from_flags(None, zero=0, precision="bf16", micro_batch=1, lora=lora, gc=gc, attn="sdpa", seq_len=s)
        config, _ = simulation_config(name, m)
        sim = simulate(config, m, name).peak
        ana = estimate(load_model(name), m).peak
        rows.append({"model": name, "seq_len": s, "lora": lora, "gc": gc, "simulated_gb": round(sim / 1e9, 3),
                     "analytic_gb": round(ana / 1e9, 3), "error": round(ana / sim - 1, 4)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    within = sum(abs(r["error"]) <= 0.03 for r in rows)
    (out / "simulate_vs_analytic.json").write_text(json.dumps({"within_3pct": within, "n": len(rows), "rows": rows},
                                                              indent=1) + "\n")
    lines = ["# Analytic estimate vs simulation (one GPU, no DeepSpeed, SDPA, bf16)", "",
             f"Written by `benchmarks/simulate_vs_analytic.py`. Within 3%: {within} of {len(rows)}.", "",
             "| model | s | mixture | simulated GB | analytic GB | error |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        mix = f"LoRA r{r['lora']}" if r["lora"] else "full FT"
        mix += " + GC" if r["gc"] else ""
        lines.append(f"| {r['model']} | {r['seq_len']} | {mix} | {r['simulated_gb']} | {r['analytic_gb']} | "
                     f"{100 * r['error']:+.1f}% |")
    (out / "simulate_vs_analytic.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
