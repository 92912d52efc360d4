"""The kernel list's FLOPs (``ftmix.plan.kernels``, torch-free) against torch's ``FlopCounterMode``
on the real step (``ftmix.measure.flops``): tiny models of each architecture family for real, and
catalog models at full size under fake tensors, over the mixture classes (full fine-tuning, LoRA,
QLoRA, GC, SDPA and eager attention, trained heads and embeddings, pure 16-bit).

    .venv/bin/python benchmarks/step_flops.py [--out benchmarks/results] [--only TEXT]

Writes benchmarks/results/step_flops.{json,md}; tests/plan/test_kernels.py predicts every row
again and holds it within 1% of the committed count.
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

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}
TINY_CONFIGS = {
    "tiny-llama": dict(TINY, model_type="llama", tie_word_embeddings=False),
    "tiny-llama-tied": dict(TINY, model_type="llama", tie_word_embeddings=True, num_key_value_heads=4),
    "tiny-qwen2": dict(TINY, model_type="qwen2", tie_word_embeddings=False),
    "tiny-phi3": dict(TINY, model_type="phi3", tie_word_embeddings=False, pad_token_id=0),
    "tiny-phi": dict(TINY, model_type="phi", tie_word_embeddings=False, num_key_value_heads=4),
}
BASE = dict(zero=0, seq_len=32, micro_batch=2, attn="sdpa", precision="bf16")
MIXTURES = [dict(lora=0), dict(lora=0, gc=True), dict(lora=8), dict(lora=8, gc=True), dict(lora=8, attn="eager"),
            dict(lora=8, gc=True, lora_targets="all-linear"),
            dict(lora=0, attn="eager", gc=True), dict(lora=8, quantize="bnb.nf4", gc=True, lora_targets="all-linear"),
            dict(lora=8, modules_to_save="embed_tokens,lm_head"), dict(lora=16, precision="bf16-true")]
# (model, keys): catalog models at full size, under fake tensors
FULL = [("llama-2-7b", dict(lora=0, gc=True, seq_len=2048)), ("llama-2-7b", dict(lora=16, seq_len=4096)),
        ("mistral-7b", dict(lora=16, gc=True, seq_len=2048, quantize="bnb.nf4")),
        ("qwen2.5-7b", dict(lora=16, lora_targets="all-linear", seq_len=1024, attn="eager")),
        ("phi-3-mini", dict(lora=8, gc=True, seq_len=1024))]

ONE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from ftmix.catalog import model_config
from ftmix.measure.flops import count_flops
from ftmix.mixture import mixture_from_flags
name, config, keys, fake = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4] == "1"
if config is None:
    config = model_config(name)[0]
t0 = time.time()
total, by_op = count_flops(config, mixture_from_flags(None, **keys), fake=fake)
print(json.dumps({"counted_flops": total, "by_op": by_op, "count_s": round(time.time() - t0, 1)}))
"""


def cases() -> list[dict]:
    out = [dict(model=name, config=config, keys=dict(BASE, **keys), fake=False)
           for name, config in TINY_CONFIGS.items() for keys in MIXTURES]
    out += [dict(model=name, config=None, keys=dict(BASE, micro_batch=1, **keys), fake=True) for name, keys in FULL]
    return out


def case_id(case: dict) -> str:
    from ftmix.mixture import mixture_from_flags

    m = mixture_from_flags(None, **case["keys"])
    precision = f" {m.precision}" if m.precision != "bf16" else ""
    return f"{case['model']} {m.label}{precision} {m.micro_batch}x{m.seq_len}"


def spec_of(case: dict):
    from ftmix.catalog import load_model, spec_from_hf_config

    return spec_from_hf_config(case["config"], case["model"]) if case["config"] else load_model(case["model"])


def predict(case: dict) -> dict:
    from ftmix.mixture import mixture_from_flags
    from ftmix.plan.kernels import step_flops, step_kernels

    t0 = time.perf_counter()
    m = mixture_from_flags(None, **case["keys"])
    flops = step_flops(spec_of(case), m)
    return {"predicted_flops": flops, "kernels": len(step_kernels(spec_of(case), m)),
            "predict_ms": round(1e3 * (time.perf_counter() - t0), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    def measure(case_id: str, case: dict) -> dict:
        counted = run_case(ONE, case["model"], json.dumps(case["config"]), json.dumps(case["keys"]),
                           "1" if case["fake"] else "0")
        row = dict(case=case_id, **case, **counted, **predict(case))
        row["error"] = round(row["predicted_flops"] / row["counted_flops"] - 1, 6)
        return row

    rows = measured_rows([(case_id(c), c) for c in cases()], args.only, Path(args.out) / "step_flops.json", measure,
                         lambda r: f"{r['case']}: counted {r['counted_flops']:.4g}, predicted "
                                   f"{r['predicted_flops']:.4g} ({100 * r['error']:+.3f}%)")
    write(rows, Path(args.out))

def write(rows: list[dict], out: Path) -> None:
    errors = [abs(r["error"]) for r in rows]
    summary = {"cases": len(rows), "worst": max(errors), "within_1pct": sum(e <= 0.01 for e in errors),
               "exact": sum(e == 0 for e in errors)}
    (out / "step_flops.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    lines = ["# The step's FLOPs: the kernel list against torch's FlopCounterMode", "",
             "Written by `benchmarks/step_flops.py`. One micro step (forward, backward, GC's recompute) of the real "
             "model, counted by `torch.utils.flop_counter.FlopCounterMode` (tiny models for real; catalog models at "
             "full size under fake tensors), against `ftmix.plan.kernels.step_flops` (torch-free).", "",
             f"- cases: {summary['cases']}; within 1%: {summary['within_1pct']}; exact: {summary['exact']}; worst "
             f"|error| {100 * summary['worst']:.3f}%", "",
             "| case | counted FLOPs | predicted FLOPs | error | kernels listed | counted in s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['counted_flops']:.6g} | {r['predicted_flops']:.6g} | "
                     f"{100 * r['error']:+.3f}% | {r['kernels']} | {r['count_s']} |")
    (out / "step_flops.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
