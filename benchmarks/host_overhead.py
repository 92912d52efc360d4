"""The host's time to issue a training step's operations, measured where compute is negligible: a
Llama-shaped model at tiny width (hidden 64, 16 tokens) and growing depth, one CPU thread, the real
step (HF model + PEFT, forward, backward, foreach AdamW), every aten operation dispatched counted.
On a GPU each of these is a launch the Python/PyTorch/PEFT stack must issue; when the kernels are
shorter than that, the step is host-bound (small models, short batches).

    .venv/bin/python benchmarks/host_overhead.py [--out benchmarks/results]

Writes benchmarks/results/host_overhead.json: per mixture class the operations per decoder layer,
per LoRA-wrapped linear and per step (a least-squares line over the depths), the seconds per
operation (the median over every case: ``plan.constants.RuntimeConstants.host_seconds_per_op``), and
the check at full depth: the count ``plan.runtime.host_ops`` derives against the real step's on
Llama, Qwen2 and Phi-3 over five mixture classes.
tests/plan/test_runtime.py holds the runtime's constants to this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

DEPTHS = (2, 6, 12)
# (class, mixture keys): no adapters (every linear trained), LoRA on q/v and on every linear, each with GC
CLASSES = [("full", dict(lora=0)), ("full gc", dict(lora=0, gc=True)),
           ("lora q,v", dict(lora=16)), ("lora q,v gc", dict(lora=16, gc=True)),
           ("lora all", dict(lora=16, lora_targets="all-linear")),
           ("lora all gc", dict(lora=16, lora_targets="all-linear", gc=True))]


# the count the runtime derives (``plan.runtime.host_ops``) against the real step's, at full depth
# (32 layers) on three families: Llama's seven linears, Qwen2's q/k/v biases, Phi-3's fused projections
CHECK_FAMILIES = {"llama": {}, "qwen2": {}, "phi3": {"pad_token_id": 0}}
CHECK_CLASSES = [dict(lora=0), dict(lora=0, gc=True), dict(lora=16), dict(lora=16, gc=True),
                 dict(lora=8, lora_targets="all-linear", gc=True)]


def config_of(model_type: str, layers: int) -> dict:
    return dict(model_type=model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
                tie_word_embeddings=False, **CHECK_FAMILIES.get(model_type, {}))


def mixture_of(keys: dict):
    from ftmix.mixture import mixture_from_flags

    return mixture_from_flags(None, **dict(dict(zero=0, seq_len=16, micro_batch=1, attn="sdpa", precision="bf16-true"),
                                           **keys))


def predicted_ops(row: dict) -> float:
    from ftmix.catalog import spec_from_hf_config
    from ftmix.plan.runtime import host_ops

    return host_ops(spec_from_hf_config(config_of(row["model_type"], row["layers"]), "check"), mixture_of(row["keys"]))


def measure(layers: int, keys: dict, model_type: str = "llama") -> dict:
    import time

    from ftmix.measure.host_issue import step_ops_and_seconds

    def fastest(step, device) -> float:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return min(times)

    ops, seconds = step_ops_and_seconds(config_of(model_type, layers), mixture_of(keys), "cpu", fastest)
    return {"layers": layers, "ops": ops, "seconds": seconds}


def line(points: list[tuple[int, int]]) -> tuple[float, float]:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    classes = {}
    for name, keys in CLASSES:
        cases = [measure(layers, keys) for layers in DEPTHS]
        per_layer, base = line([(c["layers"], c["ops"]) for c in cases])
        classes[name] = {"keys": keys, "cases": cases, "ops_per_layer": round(per_layer, 1), "ops_base": round(base, 1)}
        print(f"{name}: {per_layer:.1f} ops per layer + {base:.0f}; "
              f"{1e6 * statistics.median(c['seconds'] / c['ops'] for c in cases):.2f} us per op", flush=True)
    per_op = statistics.median(c["seconds"] / c["ops"] for v in classes.values() for c in v["cases"])
    # a LoRA-wrapped linear's operations: all-linear (7 wrapped) against q,v (2 wrapped), per layer
    lora_linear = {gc: (classes[f"lora all{gc}"]["ops_per_layer"] - classes[f"lora q,v{gc}"]["ops_per_layer"]) / 5
                   for gc in ("", " gc")}
    check = []
    for model_type in CHECK_FAMILIES:
        for keys in CHECK_CLASSES:
            row = dict(measure(32, keys, model_type), model_type=model_type, keys=keys)
            row["predicted_ops"] = predicted_ops(row)
            row["error"] = round(row["predicted_ops"] / row["ops"] - 1, 4)
            check.append(row)
            print(f"check {model_type} {keys}: counted {row['ops']}, predicted {row['predicted_ops']:.0f} "
                  f"({100 * row['error']:+.1f}%)", flush=True)
    result = {"machine": f"{torch.__version__}, 1 thread", "seconds_per_op": per_op,
              "ops_per_lora_linear": {"no gc": round(lora_linear[""], 1), "gc": round(lora_linear[" gc"], 1)},
              "classes": classes, "check_32_layers": check,
              "check_worst": max(abs(r["error"]) for r in check)}
    (Path(args.out) / "host_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "classes"}))


if __name__ == "__main__":
    main()
