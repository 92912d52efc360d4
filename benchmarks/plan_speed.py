"""How fast ftmix plans: one plan and a 4 x 5 matrix, on this machine's cores.

Goals (issue 3): one plan < 50 ms; a 4 x 5 matrix < 1 s. Writes benchmarks/results/plan_speed.json.

    .venv/bin/python benchmarks/plan_speed.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from ftmix.catalog import load_gpu, load_model
from ftmix.plan import matrix, plan


def timed(fn, repeats):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), max(samples)


def main():
    a100, v100 = load_gpu("a100-80gb"), load_gpu("v100-32gb")
    llama7 = load_model("llama-2-7b")
    models = [load_model(n) for n in ("llama-2-7b", "llama-2-13b", "llama-2-70b", "falcon-180b")]
    plan_med, plan_max = timed(lambda: plan(llama7, a100, dict(gpus=8)), 50)
    search_med, _ = timed(lambda: plan(llama7, a100, dict(gpus=8), search_batch=True), 20)
    nofit_med, _ = timed(lambda: plan(models[3], v100, dict(gpus=8, nodes=2, offload="optimizer", seq_len=2048),
                                      effective_batch=16), 5)
    matrix_med, matrix_max = timed(lambda: matrix(models, v100, [256, 512, 1024, 2048, 4096], dict(gpus=16),
                                                  effective_batch=16), 5)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "plan_ms_median": round(plan_med * 1e3, 2), "plan_ms_max": round(plan_max * 1e3, 2),
        "plan_search_batch_ms_median": round(search_med * 1e3, 2),
        "plan_nothing_fits_with_suggestions_ms": round(nofit_med * 1e3, 2),
        "matrix_4x5_s_median": round(matrix_med, 4), "matrix_4x5_s_max": round(matrix_max, 4),
        "goal_plan_ms": 50, "goal_matrix_s": 1.0,
        "plan_vs_goal": round(50 / (plan_med * 1e3), 1), "matrix_vs_goal": round(1.0 / matrix_med, 1),
    }
    out = Path(__file__).parent / "results" / "plan_speed.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
