"""The typer app. Bad input raises FtmixError anywhere below; ``_guard`` turns it into one stderr
line and exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer
from rich.table import Table

from ftmix.catalog import gpu_names, load_gpu, load_model, model_names
from ftmix.cli import options as o
from ftmix.cli.render import console, estimate_table, print_json
from ftmix.errors import FtmixError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Choose, predict and run the fastest fine-tuning optimization mixture that fits your GPUs.")


def guard(fn):
    """One clear line on stderr and exit 2 for bad input, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FtmixError as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise typer.Exit(2) from None

    return wrapper


@app.command("models")
@guard
def models_cmd(json_out: o.Json = False):
    """List the built-in model architectures."""
    rows = []
    for name in model_names():
        m = load_model(name)
        rows.append(dict(name=name, nominal=m.nominal_size, params=m.total_params, layers=m.layers, hidden=m.hidden,
                         heads=m.heads, kv_heads=m.kv_heads, intermediate=m.intermediate, vocab=m.vocab,
                         tied_embeddings=m.tied_embeddings, max_positions=m.max_positions, hub_id=m.hub_id))
    if json_out:
        return print_json({"models": rows})
    table = Table(title="ftmix models")
    for col in ("name", "nominal", "params", "layers", "hidden", "heads", "kv", "inter", "vocab", "max pos", "hub id"):
        table.add_column(col, justify="left" if col in ("name", "hub id") else "right")
    for r in rows:
        table.add_row(r["name"], r["nominal"], f"{r['params'] / 1e9:.3f}B", str(r["layers"]), str(r["hidden"]),
                      str(r["heads"]), str(r["kv_heads"]), str(r["intermediate"]), str(r["vocab"]),
                      str(r["max_positions"]), r["hub_id"] or "")
    console.print(table)


@app.command("gpus")
@guard
def gpus_cmd(json_out: o.Json = False):
    """List the built-in GPUs."""
    rows = []
    for name in gpu_names():
        g = load_gpu(name)
        rows.append(dict(name=name, memory_gb=round(g.memory_gb, 2), bf16=g.bf16, flash_attention_2=g.flash_attention_2,
                         peak_tflops=g.peak_flops_16bit / 1e12, memory_bandwidth_gbs=g.memory_bandwidth / 1e9,
                         intra_node_gbs=g.intra_node_bandwidth / 1e9, inter_node_gbs=g.inter_node_bandwidth / 1e9,
                         architecture=g.architecture))
    if json_out:
        return print_json({"gpus": rows})
    table = Table(title="ftmix gpus")
    for col in ("name", "arch", "memory GB", "bf16", "FA2", "TFLOP/s", "HBM GB/s", "link GB/s", "node GB/s"):
        table.add_column(col, justify="left" if col in ("name", "arch") else "right")
    for r in rows:
        table.add_row(r["name"], r["architecture"], f"{r['memory_gb']:.1f}", "yes" if r["bf16"] else "no",
                      "yes" if r["flash_attention_2"] else "no", f"{r['peak_tflops']:g}", f"{r['memory_bandwidth_gbs']:g}",
                      f"{r['intra_node_gbs']:g}", f"{r['inter_node_gbs']:g}")
    console.print(table)


@app.command("estimate")
@guard
def estimate_cmd(
    model: o.Model = "llama-2-7b",
    gpu: o.Gpu = None,
    method: Annotated[str, typer.Option("--method", help="analytic (architecture-aware) | paper (the study's section 4).")] = "analytic",
    zero: o.Zero = None, offload: o.Offload = None, lora: o.Lora = None, lora_alpha: o.LoraAlpha = None,
    lora_targets: o.LoraTargets = None, gc: o.Gc = None, attn: o.Attn = None, precision: o.Precision = None,
    micro_batch: o.MicroBatch = None, seq_len: o.SeqLen = None, gpus: o.Gpus = None, nodes: o.Nodes = None,
    safety_margin: Annotated[float, typer.Option("--safety-margin", help="Fraction of GPU memory kept free for the fit verdict.")] = 0.05,
    json_out: o.Json = False,
):
    """Peak GPU memory (and CPU RAM) of a fine-tuning step under a mixture, with a breakdown."""
    from ftmix.estimate import estimate
    from ftmix.mixture import mixture_from_flags

    spec = load_model(model)
    gpu_spec = load_gpu(gpu) if gpu else None
    mix = mixture_from_flags(gpu_spec, zero=zero, offload=offload, lora=lora, lora_alpha=lora_alpha,
                             lora_targets=lora_targets, gc=gc, attn=attn, precision=precision,
                             micro_batch=micro_batch, seq_len=seq_len, gpus=gpus, nodes=nodes)
    est = estimate(spec, mix, gpu_spec, method, safety_margin)
    if json_out:
        return print_json(est.to_json())
    estimate_table(est)
