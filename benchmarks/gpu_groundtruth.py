"""Ground truth on a real GPU: peak memory and step time of a grid of fine-tuning mixtures.

Each row builds a random-init model of a real shape directly on the device (bf16), applies the
mixture through ``ftmix.model.build.build_model`` (the code path ``ftmix train`` runs: PEFT LoRA,
non-reentrant GC, eager / sdpa / fa2 -> flash), runs warm-up plus ``--steps`` full optimizer steps
(one micro batch per step, fused AdamW lr 4e-4 betas 0.9/0.99 as the trainer uses) on random tokens,
and records max_memory_allocated / max_memory_reserved (reset after the model build, and including
it), memory after the build, median step time, tokens/s and achieved TFLOP/s (FLOPs counted by
torch's FlopCounterMode on the warm-up step; attention counted dense, as torch counts it), with
ftmix's analytic estimate beside each. An OOM is a result: recorded, and the grid goes on.

    PYTHONPATH=src python benchmarks/gpu_groundtruth.py --out DIR            # on the GPU (H200: ~6 min)
    PYTHONPATH=src python benchmarks/gpu_groundtruth.py --device cpu --tiny  # the same path on CPU, tiny shapes

Writes DIR/gpu_groundtruth_<gpu>.jsonl and .md. Needs torch, transformers, peft; not DeepSpeed.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ftmix.catalog import load_model  # noqa: E402
from ftmix.estimate import estimate  # noqa: E402
from ftmix.mixture import Mixture  # noqa: E402


@dataclass(frozen=True)
class Row:
    model: str
    mixture: Mixture
    variant: str = "mixed"  # full FT: "fp32-master+autocast" or "pure-bf16"; LoRA: bf16 base + fp32 adapters + autocast


def lora(model, s, attn, gc_on, b=1, targets="q_proj,v_proj"):
    return Row(model, Mixture(zero=0, offload="none", lora=64, lora_alpha=32, lora_targets=targets, gc=gc_on,
                              attn=attn, precision="bf16", micro_batch=b, seq_len=s))


def grid() -> list[Row]:
    rows = [lora("llama-2-7b", s, attn, g) for s in (256, 1024, 4096) for attn in ("sdpa", "eager") for g in (False, True)]
    full = Mixture(zero=0, offload="none", lora=0, attn="sdpa", precision="bf16", seq_len=256)
    rows += [Row("llama-2-7b", full, "fp32-master+autocast"), Row("llama-2-7b", full, "pure-bf16")]
    rows += [lora("llama-2-13b", s, "sdpa", True) for s in (256, 4096)]
    rows += [lora("qwen2.5-7b", s, "sdpa", True, targets="all-linear") for s in (256, 2048, 8192)]
    rows += [lora("llama-2-7b", 1024, "sdpa", False, b=4)]
    return rows


TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, vocab_size=1024)


def tiny_config(name: str) -> dict:
    """The model's config shrunk, keeping its kind (GQA ratio, biases, vocabulary/hidden ratio)."""
    from importlib import resources

    cfg = json.loads(resources.files("ftmix.catalog").joinpath(f"data/models/{name}.json").read_text())["config"]
    ratio = cfg["num_attention_heads"] // cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    return dict(cfg, **TINY, num_key_value_heads=max(1, 4 // ratio), max_position_embeddings=1024)


class Memory:
    """CUDA allocator figures, or on CPU the process high-water mark (VmHWM after a reset)."""

    def __init__(self, device: str):
        self.device = device

    def now(self) -> int:
        import torch

        if self.device == "cuda":
            return torch.cuda.memory_allocated()
        from ftmix.train.measure import cpu_rss_bytes

        return cpu_rss_bytes() or 0

    def reset(self) -> None:  # noqa: D401 - torch's peak restarts from what is allocated now
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            from ftmix.train.measure import reset_cpu_peak

            reset_cpu_peak()

    def peaks(self) -> tuple[int, int | None]:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        from ftmix.train.measure import cpu_peak_bytes

        return cpu_peak_bytes() or 0, None


def register_cpu_sdpa_flops() -> None:
    """torch's FlopCounterMode has no formula for the CPU flash-SDPA ops; give it the CUDA ones'."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:
        fc.register_flop_formula(fwd)(lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
    if bwd is not None and bwd not in fc.flop_registry:
        fc.register_flop_formula(bwd)(lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))


def run_row(row: Row, device: str, steps: int, tiny: bool, gpu_name: str | None) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ftmix.job.source import ModelSource, resolve_source
    from ftmix.model.build import build_model

    m = row.mixture
    seq = max(32, m.seq_len // 16) if tiny else m.seq_len
    m = m.with_(seq_len=seq)
    source = (ModelSource("catalog-config", row.model, config=tiny_config(row.model)) if tiny
              else resolve_source(row.model, random_init=True))
    memory = Memory(device)
    out = {"model": row.model, "variant": row.variant, "mixture": m.to_dict(), "label": m.label,
           "device": device, "tiny": tiny, "steps": steps}
    model = optimizer = None
    try:
        start = time.perf_counter()
        built = build_model(source, m, device)
        model = built.model
        if row.variant == "pure-bf16":
            model.to(torch.bfloat16)
        out["attn_implementation"], out["notes"] = built.attn_implementation, built.notes
        out["build_s"] = round(time.perf_counter() - start, 2)
        out["memory_after_build"] = memory.now()
        params = [p for p in model.parameters() if p.requires_grad]
        out["trainable_params"] = sum(p.numel() for p in params)
        fused = device == "cuda"
        optimizer = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.99), fused=fused, foreach=not fused)
        autocast = row.variant != "pure-bf16"
        vocab = built.config["vocab_size"]
        batch = torch.randint(0, vocab, (m.micro_batch, seq), device=device)

        def step():
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        out["max_allocated_incl_build"], _ = memory.peaks()  # since process start: the build's transients too
        memory.reset()
        with FlopCounterMode(display=False) as counter:
            step()  # warm-up: Adam states appear, kernels are chosen
        flops = counter.get_total_flops()
        times = []
        for _ in range(steps):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        allocated, reserved = memory.peaks()
        median = statistics.median(times)
        out.update(status="ok", max_allocated=allocated, max_reserved=reserved,
                   max_allocated_excl_model=allocated - out["memory_after_build"],
                   median_step_s=round(median, 5), tokens_per_s=round(m.tokens / median, 1),
                   flops_per_step=flops, achieved_tflops=float(f"{flops / median / 1e12:.6g}"))
    except torch.OutOfMemoryError as exc:
        out.update(status="OOM", error=str(exc).splitlines()[0][:200])
    finally:
        model = optimizer = None  # drop the references before emptying the cache
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    if not tiny:
        spec = load_model(row.model)
        est = estimate(spec, m, grad_accum=1)  # one micro step per optimizer step (step() above)
        out["estimate_peak_gb"] = round(est.peak / 1e9, 3)
        if out.get("status") == "ok" and device == "cuda":
            out["estimate_error"] = round(est.peak / out["max_allocated"] - 1, 4)
    return out


def environment(device: str) -> dict:
    import importlib.metadata as md

    import torch

    env = {"device": device, "python": platform.python_version(),
           **{p: md.version(p) for p in ("torch", "transformers", "peft")}}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, total_memory=props.total_memory)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    else:
        env.update(gpu="cpu", total_memory=None, driver=None)
    return env


def markdown(env: dict, rows: list[dict]) -> str:
    unit = "GB (1e9)"
    lines = [f"# Ground truth: {env['gpu']}", "",
             f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, driver {env.get('driver')}; "
             f"total memory {(env.get('total_memory') or 0) / 1e9:.1f} GB. Peaks in {unit}; "
             "max allocated is reset after the model build (the resident model is in it; the jsonl also has the "
             "peak including the build, max_allocated_incl_build, and without the model, max_allocated_excl_model). "
             + ("On CPU every memory figure is the process RSS high-water mark (VmHWM), not tensor bytes."
                if env["gpu"] == "cpu" else ""), "",
             "| model | mixture | variant | s | b | status | after build | max allocated | max reserved | ftmix estimate | error | step s | tokens/s | TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["mixture"]
        g = (lambda v: "-" if v is None else f"{v / 1e9:.2f}")
        err = r.get("estimate_error")
        lines.append(f"| {r['model']} | {r['label']} | {r['variant']} | {m['seq_len']} | {m['micro_batch']} | {r['status']} "
                     f"| {g(r.get('memory_after_build'))} | {g(r.get('max_allocated'))} | {g(r.get('max_reserved'))} "
                     f"| {r.get('estimate_peak_gb', '-')} | {'-' if err is None else f'{100 * err:+.1f}%'} "
                     f"| {r.get('median_step_s', '-')} | {r.get('tokens_per_s', '-')} | {r.get('achieved_tflops', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU check of the same path)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", default=None, help="substring filter on model/label")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --tiny for the CPU check")
    register_cpu_sdpa_flops()
    env = environment(args.device)
    slug = env["gpu"].lower().replace("nvidia ", "").replace(" ", "-") + ("-tiny" if args.tiny else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"gpu_groundtruth_{slug}.jsonl"
    results = []
    with jsonl.open("w") as f:
        f.write(json.dumps({"environment": env}) + "\n")
        for row in grid():
            if args.only and args.only not in f"{row.model} {row.mixture.label} {row.variant}":
                continue
            result = run_row(row, args.device, args.steps, args.tiny, env["gpu"])
            results.append(result)
            f.write(json.dumps(result) + "\n")
            f.flush()
            print(f"{result['model']:12} {result['label']:40} s={result['mixture']['seq_len']:5} {result['status']:3} "
                  f"{(result.get('max_allocated') or 0) / 1e9:7.2f} GB {result.get('median_step_s', '-')} s", flush=True)
    (out / f"gpu_groundtruth_{slug}.md").write_text(markdown(env, results))
    return results


if __name__ == "__main__":
    main()
