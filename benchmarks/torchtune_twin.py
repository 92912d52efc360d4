"""torchtune's own LoRA training step, simulated at full size under fake tensors and counted by the
device-memory twin: the measured reason why ftmix (which models HF transformers + PEFT) and
torchtune's published rows differ (issue 8, "a source that cannot reach the goal is explained with
the measured reason").

For each torchtune row of `benchmarks/data/published-rows.jsonl` that `benchmarks/published.py` maps
to a mixture and compares on memory, this builds torchtune 0.1.1's model (the April 2024 release
the rows were measured with: `lora_llama2_7b` / `lora_llama3_8b` with the row's LoRA, built in
bf16 as the recipe's `set_default_dtype(bf16)` does) and runs `recipes/lora_finetune_single_device
.py`'s step: activation checkpointing on every `TransformerDecoderLayer` (`checkpoint_wrapper`,
non-reentrant), `logits = model(ids)` (the head's output `.float()`), the shift
`logits[..., :-1, :].contiguous()`, `CrossEntropyLoss` over `logits.transpose(1, 2)` (the loop's
`logits` variable alive through the backward and the next forward, as in the recipe), the loss
divided over the accumulation, AdamW (foreach, as on a GPU) on the adapters, two optimizer steps of
two micro steps (one where the row accumulates nothing), every row `seq_len` tokens (a batch padded to its longest sample is at most
that). The twin gives torchtune's allocated peak; beside it the row's figure (reserved or
unstated) and ftmix's predictions of allocated and reserved.

torchtune is not a dependency of ftmix; install it apart (pinned, no dependencies pulled; the
tokenizer libraries are only imported):

    .venv/bin/pip install --no-deps --target .torchtune torchtune==0.1.1 torchao==0.1 omegaconf==2.3.0 \\
        antlr4-python3-runtime==4.9.3 sentencepiece==0.2.3 tiktoken==0.14.0 setuptools==75.8.0
    PYTHONPATH=.torchtune .venv/bin/python benchmarks/torchtune_twin.py

Writes benchmarks/results/torchtune_twin.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDERS = {"meta-llama/Llama-2-7b-hf": "torchtune.models.llama2:lora_llama2_7b",
            "meta-llama/Meta-Llama-3-8B": "torchtune.models.llama3:lora_llama3_8b"}


def build(row: dict):
    import importlib

    module, name = BUILDERS[row["model"]].split(":")
    builder = getattr(importlib.import_module(module), name)
    attn = [t for t in row["lora_targets"] if t in ("q_proj", "k_proj", "v_proj", "output_proj")]
    return builder(lora_attn_modules=attn, apply_lora_to_mlp=False, apply_lora_to_output=False,
                   lora_rank=row["lora_r"], lora_alpha=row["lora_alpha"])


def simulate_torchtune(row: dict, seq_len: int, micro_batch: int) -> dict:
    import torch
    from torchtune import modules, utils
    from torchtune.modules.peft.peft_utils import get_adapter_params, set_trainable_params

    from framework_twin import micro_steps, twin_steps

    loss_fn = torch.nn.CrossEntropyLoss()

    def make():
        with utils.set_default_dtype(torch.bfloat16):  # the recipe's dtype: bf16
            model = build(row)
        set_trainable_params(model, get_adapter_params(model))
        utils.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerDecoderLayer})
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, foreach=True)

    def forward_loss(model, loop):
        ids = torch.zeros(micro_batch, seq_len, dtype=torch.long)
        # the recipe's ``logits`` variable: rebound to the new fp32 logits after the forward, then
        # to their shifted copy (transposed), kept through the backward and the next forward
        loop["logits"] = model(ids)
        loop["logits"] = loop["logits"][..., :-1, :].contiguous().transpose(1, 2)
        return loss_fn(loop["logits"], ids[..., 1:].contiguous())

    return twin_steps(make, forward_loss, micro_steps(row))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    try:
        import torchtune  # noqa: F401
    except ImportError:
        sys.exit("error: torchtune is not installed; see this script's docstring")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ftmix.estimate import estimate
    from ftmix.study.published import represent

    published = json.loads((ROOT / "benchmarks" / "results" / "published.json").read_text())
    rows = {json.loads(line)["id"]: json.loads(line)
            for line in (ROOT / "benchmarks" / "data" / "published-rows.jsonl").read_text().splitlines() if line}
    results = []
    for p in published["rows"]:
        row = rows[p["id"]]
        memory = p.get("memory") or {}
        if not row["source_group"].startswith("torchtune/") or memory.get("error") is None:
            continue
        t = time.time()
        report = simulate_torchtune(row, row["seq_len"], row["micro_batch"])
        est = estimate(*(lambda r: (r.spec, r.mixture, r.gpu))(represent(row)), grad_accum=row.get("grad_accum"))
        simulated = report["device_peak_bytes"] / 1e9
        results.append(dict(
            id=p["id"], source=row["source_group"], model=row["model"], seq_len=row["seq_len"],
            micro_batch=row["micro_batch"], lora=f"LoRA r{row['lora_r']} {'+'.join(row['lora_targets'])}",
            measured_gb=memory["measured_gb"], measured_what=memory["what"],
            measured_stat=row["measured"]["peak_memory"]["what"],
            torchtune_allocated_gb=round(simulated, 3), ftmix_allocated_gb=round(est.peak / 1e9, 3),
            ftmix_reserved_gb=round(est.reserved / 1e9, 3), ftmix_gb=memory["predicted_gb"],
            ftmix_error=memory["error"],
            torchtune_vs_ftmix_allocated=round(est.peak / 1e9 / simulated - 1, 4),
            measured_over_torchtune_allocated=round(memory["measured_gb"] / simulated - 1, 4),
            torchtune_peak_at=report["device_peak_at"],
            torchtune_by_role_gb={k: round(v / 1e9, 3) for k, v in report["device_by_role"].items()},
            torchtune_top_sites=[dict(s, gb=round(s.pop("bytes") / 1e9, 3)) for s in report["device_top_sites"][:6]],
            seconds=round(time.time() - t, 1)))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "torchtune_top_sites"}), flush=True)
    agree = [abs(r["torchtune_vs_ftmix_allocated"]) for r in results]
    summary = {"n": len(results),
               "ftmix_vs_torchtune_allocated_worst": round(max(agree), 4) if agree else None,
               "measured_over_torchtune_allocated": [r["measured_over_torchtune_allocated"] for r in results],
               "measured_over_torchtune_allocated_median": round(statistics.median(
                   r["measured_over_torchtune_allocated"] for r in results), 4) if results else None}
    out = Path(args.out)
    (out / "torchtune_twin.json").write_text(json.dumps({"summary": summary, "rows": results}, indent=1) + "\n")
    lines = ["# torchtune's own LoRA step, simulated, against its published rows", "",
             "Written by `benchmarks/torchtune_twin.py` (torchtune 0.1.1 under fake tensors, counted by the "
             "device-memory twin: the allocated peak, `torch.cuda.max_memory_allocated`). GB = 1e9 bytes.", ""]
    if results:
        lines += [f"- ftmix's allocated peak vs torchtune's own: worst {100 * summary['ftmix_vs_torchtune_allocated_worst']:.1f}% "
                  f"(n={summary['n']})",
                  f"- the published figure over torchtune's own allocated peak: median "
                  f"{100 * summary['measured_over_torchtune_allocated_median']:+.1f}%", ""]
    lines += ["| id | model | s x b | LoRA | published (stat) | torchtune allocated (simulated) | published / allocated | "
              "ftmix allocated | ftmix predicted (stat) | error |",
              "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['id']} | {r['model']} | {r['seq_len']} x {r['micro_batch']} | {r['lora']} | "
                     f"{r['measured_gb']} ({r['measured_what']}) | {r['torchtune_allocated_gb']} | "
                     f"{100 * r['measured_over_torchtune_allocated']:+.1f}% | {r['ftmix_allocated_gb']} | "
                     f"{r['ftmix_gb']} ({r['measured_what']}) | {100 * r['ftmix_error']:+.1f}% |")
    (out / "torchtune_twin.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
