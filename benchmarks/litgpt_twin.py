"""litgpt's own training step, simulated at full size under fake tensors and counted by the
device-memory twin: the measured reason why ftmix (which models HF transformers + PEFT + DeepSpeed)
and litgpt's published LoRA rows differ (issue 8, "a source that cannot reach the goal is explained
with the measured reason").

For each litgpt row of `benchmarks/data/published-rows.jsonl` that `benchmarks/published.py` maps to a
LoRA mixture, this builds litgpt's model (`litgpt.lora.GPT` from litgpt's own config of that model,
LoRA on the row's targets, bf16-true as Fabric's `init_module` makes it), and runs litgpt
`finetune/lora.py`'s step: `model(input_ids, lm_head_chunk_size=128)`, `chunked_cross_entropy`,
the loss divided over the accumulation, AdamW (foreach, as on a GPU), two optimizer steps of two
micro steps (one where the row accumulates nothing), the loop's `logits` kept through the backward
and the next forward, at the row's sequence length and micro batch. The twin gives litgpt's allocated peak;
beside it: the row's measured figure and ftmix's prediction for the same setup.

litgpt is not a dependency of ftmix; install it apart (pinned, no dependencies pulled):

    .venv/bin/pip install --no-deps --target .litgpt litgpt==0.5.9 lightning==2.6.6 \\
        lightning-utilities==0.15.3 torchmetrics==1.9.0 jsonargparse==4.53.0
    PYTHONPATH=.litgpt .venv/bin/python benchmarks/litgpt_twin.py [--only ID,ID]

Writes benchmarks/results/litgpt_twin.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"query": "lora_query", "key": "lora_key", "value": "lora_value", "attn out-proj": "lora_projection",
           "mlp (all MLP linears)": "lora_mlp", "lm_head": "lora_head"}


def litgpt_config(row: dict):
    """litgpt's own config for the row's model (matched on its hub id), with the row's LoRA."""
    from litgpt.config import configs
    from litgpt.lora import Config

    org, name = row["model"].split("/", 1)
    # litgpt keys a config by its hub name, or by its own name where the hub renamed the repository
    # (meta-llama/Llama-3.1-8B was Meta-Llama-3.1-8B)
    found = [c for c in configs if c["hf_config"].get("name", "").lower() == name.lower()] or \
        [c for c in configs if c["name"].lower() == name.lower()]
    if not found:
        raise LookupError(f"litgpt has no config for {row['model']}")
    if row["method"] == "full":
        return Config.from_name(found[0]["name"])
    flags = {flag: False for flag in TARGETS.values()}
    for target in row["lora_targets"]:
        flags[TARGETS[target]] = True
    return Config.from_name(found[0]["name"], lora_r=row["lora_r"], lora_alpha=row["lora_alpha"] or 16,
                            lora_dropout=0.05, **flags)


def simulate_litgpt(row: dict, seq_len: int, micro_batch: int) -> dict:
    import torch
    from litgpt.lora import GPT, mark_only_lora_as_trainable
    from litgpt.utils import chunked_cross_entropy

    from framework_twin import micro_steps, twin_steps

    full = row["method"] == "full"  # finetune/full.py: the plain GPT, every parameter trained
    config = litgpt_config(row)

    fsdp = "fsdp" in row["engine"].lower()

    def make():
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # Fabric's init_module under bf16-true
        try:
            if full:
                from litgpt.model import GPT as FullGPT

                model = FullGPT(config)
            else:
                model = GPT(config)
        finally:
            torch.set_default_dtype(default)
        model.max_seq_length = seq_len
        if not full:
            mark_only_lora_as_trainable(model)
        if fsdp:
            model = fsdp1(model, row)
        model.train()
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, foreach=True)

    def forward_loss(model, loop):
        ids = torch.zeros(micro_batch, seq_len, dtype=torch.long)
        # the fit loop's ``logits`` variable: kept through the backward and the next forward
        if full:  # finetune/full.py: whole logits, the loss in chunks
            loop["logits"] = model(ids)
            return chunked_cross_entropy(loop["logits"][..., :-1, :], ids[..., 1:])
        loop["logits"] = model(ids, lm_head_chunk_size=128)  # finetune/lora.py: the head in chunks of 128 tokens too
        loop["logits"][-1] = loop["logits"][-1][..., :-1, :]
        return chunked_cross_entropy(loop["logits"], ids[..., 1:])

    if not fsdp:
        return twin_steps(make, forward_loss, micro_steps(row))
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=int(row["n_gpus"]))
    try:  # built whole, then sharded: Fabric's ``init_module`` builds on the meta device and loads shards
        return twin_steps(make, forward_loss, micro_steps(row), reset_after_make=True)
    finally:
        dist.destroy_process_group()


def fsdp1(model, row: dict):
    """Lightning Fabric's ``FSDPStrategy`` as the row states it (rank 0 of ``n_gpus`` under a fake
    process group): torch FSDP1, FULL_SHARD, ``use_orig_params=True`` (Fabric's default),
    ``limit_all_gathers``, wrapped per ``Block`` where the row says ``auto_wrap=Block``, else as
    litgpt 0.5.9 wraps (LoRA: every ``nn.Linear``; full: every ``Block``), activation checkpointing
    per ``Block`` (non-reentrant)."""
    import functools

    import torch
    from litgpt.model import Block
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                             apply_activation_checkpointing,
                                                                             checkpoint_wrapper)
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    engine = row["engine"].lower()
    per_block = "auto_wrap=block" in engine or row["method"] == "full"
    model = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({Block} if per_block else {torch.nn.Linear}),
                                     sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                                     limit_all_gathers=True, device_id=torch.device("cpu"))
    if str(row.get("gradient_checkpointing", "")).lower().startswith("yes"):
        apply_activation_checkpointing(
            model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
            check_fn=lambda m: isinstance(m, Block))
    return model


def errors(rows: list[dict]) -> dict:
    """Median and worst |error| of litgpt's simulated step and of ftmix's prediction over ``rows``."""
    if not rows:
        return {"n": 0, "litgpt_median": None, "litgpt_worst": None, "ftmix_median": None, "ftmix_worst": None}
    return {"n": len(rows), "litgpt_median": round(statistics.median(abs(r["litgpt_error"]) for r in rows), 4),
            "litgpt_worst": round(max(abs(r["litgpt_error"]) for r in rows), 4),
            "ftmix_median": round(statistics.median(abs(r["ftmix_error"]) for r in rows), 4),
            "ftmix_worst": round(max(abs(r["ftmix_error"]) for r in rows), 4)}


def main() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma list of row ids")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--merge", action="store_true",
                    help="with --only: replace or add those rows in the committed result, keep the rest")
    args = ap.parse_args()
    try:
        import litgpt  # noqa: F401
    except ImportError:
        sys.exit("error: litgpt is not installed; see this script's docstring")
    published = json.loads((ROOT / "benchmarks" / "results" / "published.json").read_text())
    rows = {json.loads(line)["id"]: json.loads(line)
            for line in (ROOT / "benchmarks" / "data" / "published-rows.jsonl").read_text().splitlines() if line}
    wanted = set(args.only.split(",")) - {""}
    results = []
    for p in published["rows"]:
        row = rows[p["id"]]
        memory = p.get("memory") or {}
        if not row["source_group"].startswith("litgpt/") or row["method"] not in ("lora", "full") or \
                "thunder" in row["source_group"] or (memory.get("error") is None and not p.get("oom")):
            continue
        if wanted and p["id"] not in wanted:
            continue
        t = time.time()
        try:
            report = simulate_litgpt(row, row["seq_len"], row["micro_batch"])
        except Exception as exc:  # noqa: BLE001 - a row litgpt cannot build is reported, not fatal
            results.append(dict(id=p["id"], model=row["model"], error=str(exc).splitlines()[0][:200]))
            print(json.dumps(results[-1]), flush=True)
            continue
        litgpt_gb = report["device_peak_bytes"] / 1e9
        what = "full FT" if row["method"] == "full" else f"LoRA r{row['lora_r']} {'+'.join(row['lora_targets'])}"
        base = dict(id=p["id"], model=row["model"], seq_len=row["seq_len"], micro_batch=row["micro_batch"], lora=what,
                    litgpt_simulated_gb=round(litgpt_gb, 3))
        if "fsdp" in row["engine"].lower():
            base["fsdp"] = f"FSDP1 over {row['n_gpus']} ranks"
        if p.get("oom"):  # the row ran out of memory: does litgpt's own peak pass the GPU's memory?
            from ftmix.catalog import load_gpu

            gpu_gb = round(load_gpu(p["gpu"]).memory_bytes / 1e9, 1)  # the allocated peak alone against it
            results.append(dict(base, measured_gb="OOM", gpu_gb=gpu_gb, litgpt_fits=litgpt_gb < gpu_gb,
                                ftmix_fits=p["oom"]["predicted_fits"], seconds=round(time.time() - t, 1)))
            print(json.dumps(results[-1]), flush=True)
            continue
        if "below_model_states_gb" in memory:  # left out of the statistics (published.md): shown, not averaged
            base["below_model_states_gb"] = memory["below_model_states_gb"]
        results.append(dict(base, measured_gb=memory["measured_gb"],
                            ftmix_gb=memory["predicted_gb"],
                            litgpt_error=round(litgpt_gb / memory["measured_gb"] - 1, 4), ftmix_error=memory["error"],
                            litgpt_peak_at=report["device_peak_at"],
                            litgpt_by_role_gb={k: round(v / 1e9, 3) for k, v in report["device_by_role"].items()},
                            seconds=round(time.time() - t, 1)))
        print(json.dumps(results[-1]), flush=True)
    if args.merge:
        fresh = {r["id"]: r for r in results}
        old = json.loads((Path(args.out) / "litgpt_twin.json").read_text())["rows"]
        results = [fresh.pop(r["id"], r) for r in old] + list(fresh.values())
    scored = [r for r in results if "litgpt_error" in r and "below_model_states_gb" not in r]
    ok = [r for r in scored if "fsdp" not in r]
    summary = dict(errors(ok), fsdp=errors([r for r in scored if "fsdp" in r]))
    out = Path(args.out)
    (out / "litgpt_twin.json").write_text(json.dumps({"summary": summary, "rows": results}, indent=1) + "\n")
    lines = ["# litgpt's own step, simulated, against its published LoRA rows", "",
             "Written by `benchmarks/litgpt_twin.py` (litgpt 0.5.9 under fake tensors, counted by the device-memory "
             "twin). GB = 1e9 bytes, `torch.cuda.max_memory_allocated` as litgpt prints it.", "",
             f"- litgpt simulated vs measured: median {100 * summary['litgpt_median']:.1f}%, worst "
             f"{100 * summary['litgpt_worst']:.1f}% (n={summary['n']})" if ok else "- no rows",
             f"- ftmix (HF transformers + PEFT) vs measured: median {100 * summary['ftmix_median']:.1f}%, worst "
             f"{100 * summary['ftmix_worst']:.1f}%" if ok else "",
             f"- the FSDP rows (litgpt's step under torch FSDP1 as Lightning Fabric wraps it, rank 0 of a fake process "
             f"group): litgpt simulated median {100 * summary['fsdp']['litgpt_median']:.1f}%, worst "
             f"{100 * summary['fsdp']['litgpt_worst']:.1f}%; ftmix (FSDP2) median "
             f"{100 * summary['fsdp']['ftmix_median']:.1f}%, worst {100 * summary['fsdp']['ftmix_worst']:.1f}% "
             f"(n={summary['fsdp']['n']})" if summary["fsdp"]["n"] else "", "",
             "| id | model | s x b | LoRA | measured | litgpt simulated | error | ftmix | error |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['id']} | {r['model']} | | | error: {r['error']} | | | | |")
            continue
        if r["measured_gb"] == "OOM":
            lines.append(f"| {r['id']} | {r['model']} | {r['seq_len']} x {r['micro_batch']} | {r['lora']}"
                         f"{' (' + r['fsdp'] + ')' if 'fsdp' in r else ''} | OOM "
                         f"({r['gpu_gb']} GB GPU) | {r['litgpt_simulated_gb']} | "
                         f"{'fits (wrong)' if r['litgpt_fits'] else 'does not fit'} | | "
                         f"{'fits (wrong)' if r['ftmix_fits'] else 'does not fit'} |")
            continue
        if "below_model_states_gb" in r:
            lines.append(f"| {r['id']} | {r['model']} | {r['seq_len']} x {r['micro_batch']} | {r['lora']} | "
                         f"{r['measured_gb']} (below the {r['below_model_states_gb']} GB its model states need: "
                         f"not averaged) | {r['litgpt_simulated_gb']} | {100 * r['litgpt_error']:+.1f}% | "
                         f"{r['ftmix_gb']} | {100 * r['ftmix_error']:+.1f}% |")
            continue
        lines.append(f"| {r['id']} | {r['model']} | {r['seq_len']} x {r['micro_batch']} | {r['lora']}"
                     f"{' (' + r['fsdp'] + ')' if 'fsdp' in r else ''} | "
                     f"{r['measured_gb']} | {r['litgpt_simulated_gb']} | {100 * r['litgpt_error']:+.1f}% | "
                     f"{r['ftmix_gb']} | {100 * r['ftmix_error']:+.1f}% |")
    (out / "litgpt_twin.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
