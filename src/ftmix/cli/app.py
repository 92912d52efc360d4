"""The typer app. Bad input raises FtmixError anywhere below; ``_guard`` turns it into one stderr
line and exit code 2."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ftmix import api
from ftmix.api import positive_int, split_list
from ftmix.catalog import gpu_names, load_gpu, load_model, match_gpu, model_names
from ftmix.cli import options as o
from ftmix.cli.options import guard
from ftmix.cli.render import (LazyProgress, compare_report, console, context_matrix_table, estimate_table, eval_table,
                              arch_fit_report, gpu_calibration_report, step_time_line,
                              matrix_table,
                              plan_report, print_json, reach_table, train_summary)
from ftmix.cli.study import study_app
from ftmix.errors import FtmixError
from ftmix.estimate.arch_fits import read_fits, user_fits_path, write_fit
from ftmix.estimate.sim_input import simulation_config
from ftmix.files import engine_output_to
from ftmix.job.checkpoints import last_checkpoint
from ftmix.job.config import TrainConfig
from ftmix.mixture import DEFAULTS, mixture_from_flags
from ftmix.plan.gpu_fit import fit
from ftmix.plan.matrix import png_path, write_png
from ftmix.train.export import export, plan_export

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Choose, predict and run the fastest fine-tuning optimization mixture that fits your GPUs.")


def _version(value: bool):
    if value:
        sys.stdout.write(f"ftmix {importlib.metadata.version('ftmix')}\n")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print ftmix's version and exit.")] = False):
    """ftmix: estimate, plan, matrix, train, study."""


def mixture_flags(values: dict) -> dict:
    """The mixture keys among a command's parameters (None where the flag was not given)."""
    return {k: values[k] for k in DEFAULTS if k in values}


OOM_EXIT = 3  # `ftmix train`: the run ran out of memory (as `plan`'s 3: nothing fits)


SearchBatch = Annotated[bool, typer.Option("--search-batch", help="Also search the micro batch at the fixed effective batch.")]
EffectiveBatch = Annotated[int, typer.Option("--effective-batch", metavar="N", help="Samples per optimizer step, all GPUs together (the study: 8).")]
Calibration = Annotated[Optional[str], typer.Option("--calibration", metavar="FILE", help="A calibration (`ftmix study calibrate`, or a JSON object of constants: docs/plan.md); default $FTMIX_CALIBRATION.")]
AnyGpu = Annotated[bool, typer.Option("--calibration-any-gpu", help="Use a calibration fitted on other GPU types too (its all-GPU constants).")]
Margin = Annotated[float, typer.Option("--safety-margin", metavar="FRACTION", help="Fraction of GPU memory kept free for the fit verdict.")]
CpuRam = Annotated[str, typer.Option("--cpu-ram", metavar="GB|none|auto", help="Host RAM per node in GB that offload may use: a number, "
                                     "none (no limit), or auto (this machine's RAM when it has an NVIDIA GPU, else none).")]
NOTHING_FITS = 3  # plan's exit code when no mixture fits (scripts can tell it from success and from bad input)


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
    # whole names in a narrow terminal or a pipe (80 columns): the hub ids go below the table
    wide = console.width >= 150
    table = Table(title="ftmix models", padding=(0, 1) if wide else (0, 0))
    for col in ("name", "nominal", "params", "layers", "hidden", "heads", "kv", "inter", "vocab", "max pos") + (
            ("hub id",) if wide else ()):
        table.add_column(col, justify="left" if col in ("name", "hub id") else "right", no_wrap=True,
                         min_width=max(len(r["name"]) for r in rows) if col == "name" else None)
    for r in rows:
        table.add_row(r["name"], r["nominal"], f"{r['params'] / 1e9:.3f}B", str(r["layers"]), str(r["hidden"]),
                      str(r["heads"]), str(r["kv_heads"]), str(r["intermediate"]), str(r["vocab"]),
                      str(r["max_positions"]), *((r["hub_id"] or "",) if wide else ()))
    console.print(table)
    if not wide:
        for r in rows:
            if r["hub_id"]:
                console.print(f"{r['name']}: {r['hub_id']}", soft_wrap=True)


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
        table.add_column(col, justify="left" if col in ("name", "arch") else "right", overflow="fold")
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
    method: Annotated[str, typer.Option("--method", metavar="analytic|paper|simulate", help="analytic (architecture-aware) | paper (the study's section 4) | simulate (the real model code under fake tensors: any architecture transformers builds; ZeRO stages and several GPUs shard the model states as the engines do).")] = "analytic",
    zero: o.MIX.zero = None, offload: o.MIX.offload = None, lora: o.MIX.lora = None, lora_alpha: o.MIX.lora_alpha = None,
    lora_targets: o.MIX.lora_targets = None, gc: o.MIX.gc = None, attn: o.MIX.attn = None, precision: o.MIX.precision = None,
    micro_batch: o.MIX.micro_batch = None, seq_len: o.MIX.seq_len = None, gpus: o.MIX.gpus = None, nodes: o.MIX.nodes = None,
    packing: o.MIX.packing = None,
    quantize: o.MIX.quantize = None, optimizer: o.MIX.optimizer = None, modules_to_save: o.MIX.modules_to_save = None,
    dora: o.MIX.dora = None, sharding: o.MIX.sharding = None,
    safety_margin: Margin = 0.05,
    deepspeed: o.DeepSpeed = None,
    grad_accum: o.GradAccum = None,
    calibration: Calibration = None, calibration_any_gpu: AnyGpu = False,
    json_out: o.Json = False,
):
    """Peak GPU memory (and CPU RAM) of a fine-tuning step under a mixture, with a breakdown."""
    est = api.estimate(model, gpu, method=method, deepspeed=deepspeed, grad_accum=grad_accum,
                       safety_margin=safety_margin, calibration=calibration, calibration_any_gpu=calibration_any_gpu,
                       **mixture_flags(locals()))
    notes = api.calibration_notes(calibration, gpu, calibration_any_gpu)
    time = api.estimate_time(est, model, gpu, calibration, calibration_any_gpu)
    if json_out:
        return print_json(dict(est.to_json(), time=time, calibration=notes))
    estimate_table(est)
    if time is not None:
        console.print(step_time_line(time, est.gpu))
    for note in notes:
        console.print(f"[dim]{note}[/dim]")


@app.command("calibrate-arch")
@guard
def calibrate_arch_cmd(
    model: o.Model = "phi-2",
    out: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Fits file to add this architecture to (estimate reads it with FTMIX_ARCH_FITS=FILE).")] = None,
    save: Annotated[bool, typer.Option("--save", help="Add the fit to the fits file estimate, plan and matrix read ($FTMIX_ARCH_FITS or ~/.cache/ftmix/arch_fits.json).")] = False,
    seq_lens: Annotated[str, typer.Option("--seq-lens", metavar="S1,S2,...", help="The sequence lengths simulated (two or more).")] = "256,512,1024",
    json_out: o.Json = False,
):
    """Fit corrections to the analytic method's activations for one architecture: simulate it at 1
    and 2 layers (the real model code under fake tensors), 8 mixture classes, two lengths; --save
    (or --out FILE) says where the fit goes."""
    lengths = tuple(positive_int(x, "seq-lens") for x in split_list(seq_lens, "seq-lens"))
    if len(set(lengths)) < 2:
        raise FtmixError(f"--seq-lens takes two or more different lengths, got {seq_lens!r}")
    if bool(out) == save:
        raise FtmixError("say where the fit goes: --save (the fits file estimate, plan and matrix read: "
                         f"{user_fits_path()}) or --out FILE" if not out else "--save and --out: choose one")
    path = Path(out).expanduser() if out else user_fits_path()
    if path.is_dir() or not path.parent.is_dir() and out:
        raise FtmixError(f"--out {out}: not a file in an existing folder")
    if path.is_file():
        read_fits(path)  # a malformed file is refused before the simulations, not after
    config, name = simulation_config(model, mixture_from_flags(None, zero=0))
    with engine_output_to(Path(os.devnull)):
        # lazy: the fit simulates under torch, after its arguments and the fits file are checked
        from ftmix.measure.arch_fit import fit_architecture, simulations_per_fit

    terminal = os.fdopen(os.dup(2), "w")  # the progress bar's, while the engines' notes go to /dev/null
    bar = LazyProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       file=terminal)
    task = bar.add_task(f"simulating {name}", total=simulations_per_fit(lengths))
    try:
        with engine_output_to(Path(os.devnull)):
            key, entry = fit_architecture(config, name, lengths,
                                          progress=lambda what: bar.update(task, advance=1, description=what))
    finally:
        bar.stop()
        terminal.close()
    write_fit(path, key, entry)
    before = max(abs(r["simulated"] / r["analytic"] - 1) for r in entry["residuals"])
    if json_out:
        return print_json({"fingerprint": key, "file": str(path), "worst_error_before_fit": before, **entry})
    arch_fit_report(name, entry, before, lengths, str(path), key)


@app.command("calibrate-gpu")
@guard
def calibrate_gpu_cmd(
    out: Annotated[str, typer.Option("--out", metavar="FILE", help="The calibration file to write (estimate, plan, matrix and train read it with --calibration FILE).")],
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="The catalog GPU type this device is (its datasheet peak and bandwidth are the fit's reference); default: the CUDA device's name matched to the catalog.")] = None,
    device: Annotated[str, typer.Option("--device", help="The torch device to sweep: cuda (default where there is one) or cpu (checks the harness; its figures are the CPU's).")] = "auto",
    seconds: Annotated[float, typer.Option("--seconds", metavar="S", help="Time budget of the sweep; shapes left when it is spent are skipped, and said.")] = 60.0,
    hidden: Annotated[int, typer.Option("--hidden", metavar="H", help="Hidden size of the layer whose GEMMs are timed (a 7B's: 4096).")] = 4096,
    json_out: o.Json = False,
):
    """About a minute on the local device: GEMMs of a transformer layer at several token counts,
    SDPA (and FlashAttention-2) at several lengths, memory bandwidth, host-device copies and an
    all-reduce across the local GPUs; fitted to the step time's constants and written as a
    calibration file for this GPU type."""
    if not 0 < seconds <= 3600:
        raise FtmixError(f"--seconds must be in (0, 3600], got {seconds:g}")
    if hidden < 64 or hidden > 65536 or hidden % 64:
        raise FtmixError(f"--hidden must be a multiple of 64 in [64, 65536], got {hidden}")
    path = Path(out).expanduser()
    if path.is_dir() or not path.parent.is_dir():
        raise FtmixError(f"--out {out}: not a file in an existing folder")
    if device not in ("auto", "cuda", "cpu"):
        raise FtmixError(f"--device must be auto, cuda or cpu, got {device!r}")
    spec = load_gpu(gpu) if gpu else None
    if device == "cpu" and spec is None:
        raise FtmixError("--device cpu needs --gpu NAME: the catalog GPU whose datasheet the fit is relative to")
    with engine_output_to(Path(os.devnull)):  # bitsandbytes' and DeepSpeed's import-time notes
        # lazy: the sweep runs torch on the device, after its arguments are checked
        import torch

        from ftmix.measure.gpu_sweep import device_name, sweep

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FtmixError("--device cuda: torch sees no CUDA device here")
    if spec is None:
        if device != "cuda":
            raise FtmixError("no CUDA device here: --device cpu --gpu NAME checks the harness on this CPU")
        spec = match_gpu(device_name(device), torch.cuda.get_device_properties(0).total_memory)
        if spec is None:
            raise FtmixError(f"{device_name(device)} is not in the GPU catalog (ftmix gpus): name the nearest with --gpu")
    terminal = os.fdopen(os.dup(2), "w")  # the progress bar's, while the engines' notes go to /dev/null
    bar = LazyProgress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), file=terminal)
    task = bar.add_task(f"sweeping {device}", total=None)
    try:
        with engine_output_to(Path(os.devnull)):
            measured = sweep(device, hidden=hidden, budget_s=seconds,
                             progress=lambda what: bar.update(task, description=what))
    finally:
        bar.stop()
        terminal.close()
    result = fit(measured, spec)
    path.write_text(json.dumps(result, indent=1) + "\n")
    if json_out:
        return print_json({"file": str(path), **result})
    gpu_calibration_report(result, str(path))


@app.command("eval")
@guard
def eval_cmd(
    run: Annotated[str, typer.Option("--run", metavar="DIR", help="A finished `ftmix train` output dir.")],
    data: Annotated[Optional[str], typer.Option("--data", metavar="SOURCE", help="Held-out rows (file or dataset id; default: the run's data past the rows it trained on).")] = None,
    rows: Annotated[Optional[int], typer.Option("--rows", metavar="N", help="Evaluate the first N held-out rows.")] = None,
    base: Annotated[bool, typer.Option("--base", help="Evaluate the base model without the fine-tuning (the 'before').")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", help="Longest summary generated.")] = 64,
    num_beams: Annotated[int, typer.Option("--num-beams", metavar="N", help="Beam search width (1: greedy).")] = 1,
    temperature: Annotated[float, typer.Option("--temperature", metavar="T", help="0: greedy (default); above 0: sampling.")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", metavar="P", help="1.0: none.")] = 1.0,
    json_out: o.Json = False,
):
    """ROUGE-1/2/L and eval loss of the run's model on held-out rows (any format train reads)."""
    result = api.evaluate(run, data, rows, base, max_new_tokens=max_new_tokens, num_beams=num_beams,
                          temperature=temperature, repetition_penalty=repetition_penalty)
    if json_out:
        return print_json(result)
    table = Table(title=f"{result['model']} on {result['rows']} held-out {result['format']} rows ({result['held_out']})")
    for col in ("ROUGE-1", "ROUGE-2", "ROUGE-L", "eval loss"):
        table.add_column(col, justify="right")
    table.add_row(*("-" if result[k] is None else f"{100 * result[k]:.1f}" for k in ("rouge1", "rouge2", "rougeL")),
                  f"{result['eval_loss']:.3f}")
    console.print(table)
    for s in result["samples"][:1]:
        console.print(f"[dim]{s['id']}[/dim] reference: {s['reference']}\n  generated: {s['generated']}")


@app.command("export")
@guard
def export_cmd(
    run: Annotated[str, typer.Option("--run", metavar="DIR", help="A finished `ftmix train` output dir (holds run.json and final/).")],
    merge: Annotated[bool, typer.Option("--merge", help="Also merge the LoRA adapter into the base and save a standard transformers folder (safetensors).")] = False,
    out: Annotated[Optional[str], typer.Option("--out", metavar="DIR", help="Where to write (default DIR/export); never overwritten.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", metavar="bf16|fp16|fp32", help="Weights of the merged model (the merge itself runs in fp32).")] = "bf16",
    json_out: o.Json = False,
):
    """The run's model as artefacts other tools load: the PEFT adapter, and with --merge a merged
    transformers model."""
    plan = plan_export(run, out, merge, dtype)
    with engine_output_to(Path(os.devnull)):
        result = export(plan)
    if json_out:
        return print_json(result)
    table = Table(title=f"export of {plan.run_dir}")
    table.add_column("artefact")
    table.add_column("path")
    table.add_column("loads with")
    if "adapter" in result:
        table.add_row("LoRA adapter (PEFT)", result["adapter"], "AutoPeftModelForCausalLM.from_pretrained(path)")
        table.add_row("its base", result["base"], "AutoModelForCausalLM.from_pretrained(path)")
    if "merged" in result:
        table.add_row(f"merged model ({dtype}, safetensors)", result["merged"], "AutoModelForCausalLM.from_pretrained(path)")
    if "model" in result:
        table.add_row("fine-tuned model", result["model"], "AutoModelForCausalLM.from_pretrained(path)")
    console.print(table)
    if result.get("note"):
        console.print(f"[dim]{result['note']}[/dim]")


@app.command("plan")
@guard
def plan_cmd(
    model: o.Model = "llama-2-7b",
    gpu: Annotated[str, typer.Option("--gpu", metavar="NAME", help="Catalog GPU (see `ftmix gpus`).")] = o.GPU_DEFAULT,
    zero: o.MIX.zero = None, offload: o.MIX.offload = None, lora: o.MIX.lora = None, lora_alpha: o.MIX.lora_alpha = None,
    lora_targets: o.MIX.lora_targets = None, gc: o.MIX.gc = None, attn: o.MIX.attn = None, precision: o.MIX.precision = None,
    micro_batch: o.MIX.micro_batch = None, seq_len: o.MIX.seq_len = None, gpus: o.MIX.gpus = None, nodes: o.MIX.nodes = None,
    packing: o.MIX.packing = None,
    quantize: o.MIX.quantize = None, optimizer: o.MIX.optimizer = None, modules_to_save: o.MIX.modules_to_save = None,
    dora: o.MIX.dora = None, sharding: o.MIX.sharding = None,
    search_batch: SearchBatch = False, effective_batch: EffectiveBatch = 8, calibration: Calibration = None,
    calibration_any_gpu: AnyGpu = False,
    safety_margin: Margin = 0.05, deepspeed: o.DeepSpeed = None, cpu_ram: CpuRam = "auto",
    compare_quantize: Annotated[Optional[str], typer.Option("--compare-quantize", metavar="SCHEME", help="Also plan with the base weights quantized (bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.int8...) and show both winners side by side; quantization stays your choice.")] = None,
    max_seq_len: Annotated[bool, typer.Option("--max-seq-len", help="Instead: the longest sequence length each candidate mixture fits (the flags you give fixed), the farthest first; exact to --granularity tokens.")] = False,
    granularity: Annotated[int, typer.Option("--granularity", metavar="TOKENS", help="With --max-seq-len: the answer is a multiple of this that fits, the next multiple does not.")] = 64,
    json_out: o.Json = False,
):
    """The fastest mixture that fits: flags given fix that dimension; ZeRO, offload, GC and attention are searched.
    Exit code 3 when nothing fits."""
    if max_seq_len:
        reach = api.max_context(model, gpu, granularity=granularity, effective_batch=effective_batch,
                                deepspeed=deepspeed, cpu_ram=cpu_ram, safety_margin=safety_margin,
                                calibration=calibration, calibration_any_gpu=calibration_any_gpu,
                                **mixture_flags(locals()))
        if json_out:
            print_json({"model": model, "gpu": gpu, "granularity": granularity,
                        "best": reach[0].to_json() if reach[0].max_seq_len else None,
                        "candidates": [r.to_json() for r in reach]})
        else:
            reach_table(reach, model, gpu, granularity)
        return 0 if reach[0].max_seq_len else NOTHING_FITS
    if compare_quantize is not None:
        both = api.compare_quantize(model, gpu, compare_quantize.strip().lower(), search_batch=search_batch,
                                    effective_batch=effective_batch, deepspeed=deepspeed, cpu_ram=cpu_ram,
                                    safety_margin=safety_margin, calibration=calibration,
                                    calibration_any_gpu=calibration_any_gpu, **mixture_flags(locals()))
        if json_out:
            print_json({"scheme": both["scheme"], "without": both["without"].to_json(), "with": both["with"].to_json()})
        else:
            compare_report(both)
        return 0 if (both["without"].best or both["with"].best) else NOTHING_FITS
    result = api.plan(model, gpu, search_batch=search_batch, effective_batch=effective_batch, deepspeed=deepspeed,
                      cpu_ram=cpu_ram, safety_margin=safety_margin, calibration=calibration,
                      calibration_any_gpu=calibration_any_gpu, **mixture_flags(locals()))
    notes = api.calibration_notes(calibration, gpu, calibration_any_gpu)
    if json_out:
        print_json(dict(result.to_json(), calibration=notes))
    else:
        plan_report(result)
        for note in notes:
            console.print(f"[dim]{note}[/dim]")
    return NOTHING_FITS if result.best is None else 0


@app.command("matrix")
@guard
def matrix_cmd(
    gpu: Annotated[str, typer.Option("--gpu", metavar="NAME", help="Catalog GPU (see `ftmix gpus`); the study's own matrix: v100-32gb.")] = o.GPU_DEFAULT,
    models: Annotated[str, typer.Option("--models", metavar="NAMES", help="Comma list of models.")] = "llama-2-7b,llama-2-13b,llama-2-70b",
    seq_lens: Annotated[str, typer.Option("--seq-lens", metavar="TOKENS", help="Comma list of context lengths.")] = "256,512,1024,2048,4096",
    zero: o.MIX.zero = None, offload: o.MIX.offload = None, lora: o.MIX.lora = None, lora_alpha: o.MIX.lora_alpha = None,
    lora_targets: o.MIX.lora_targets = None, gc: o.MIX.gc = None, attn: o.MIX.attn = None, precision: o.MIX.precision = None,
    micro_batch: o.MIX.micro_batch = None, gpus: o.MIX.gpus = None, nodes: o.MIX.nodes = None, packing: o.MIX.packing = None,
    quantize: o.MIX.quantize = None, optimizer: o.MIX.optimizer = None, modules_to_save: o.MIX.modules_to_save = None,
    dora: o.MIX.dora = None, sharding: o.MIX.sharding = None,
    search_batch: SearchBatch = False, effective_batch: EffectiveBatch = 8, calibration: Calibration = None,
    calibration_any_gpu: AnyGpu = False, safety_margin: Margin = 0.05, cpu_ram: CpuRam = "auto",
    png: Annotated[Optional[str], typer.Option("--png", metavar="FILE", help="Also write the matrix as a heatmap (.png added when the name has no extension).")] = None,
    max_seq_len: Annotated[bool, typer.Option("--max-seq-len", help="Instead: per model and GPU (--gpu takes a comma list here), the longest context the farthest-reaching mixture fits; exact to --granularity tokens.")] = False,
    granularity: Annotated[int, typer.Option("--granularity", metavar="TOKENS", help="With --max-seq-len: the answer is a multiple of this that fits, the next multiple does not.")] = 64,
    json_out: o.Json = False,
):
    """The study's model-size x context-length matrix of the fastest fitting mixture, for any GPU."""
    if max_seq_len:
        if png:
            raise FtmixError("--png draws the fastest-mixture matrix; drop it with --max-seq-len")
        cells = api.context_matrix(models, gpu, granularity=granularity, effective_batch=effective_batch,
                                   cpu_ram=cpu_ram, safety_margin=safety_margin, calibration=calibration,
                                   calibration_any_gpu=calibration_any_gpu, **mixture_flags(locals()))
        if json_out:
            return print_json({"granularity": granularity, "cells": [c.to_json() for c in cells]})
        return context_matrix_table(cells, granularity)
    if "," in gpu:
        raise FtmixError(f"--gpu {gpu}: one GPU per matrix (a comma list only with --max-seq-len)")
    png = str(png_path(png)) if png else None  # a bad path fails now, not after the work
    cells = api.matrix(models, gpu, seq_lens, search_batch=search_batch, effective_batch=effective_batch,
                       cpu_ram=cpu_ram, safety_margin=safety_margin, calibration=calibration,
                       calibration_any_gpu=calibration_any_gpu, **mixture_flags(locals()))
    gpu_spec = load_gpu(gpu)
    notes = api.calibration_notes(calibration, gpu, calibration_any_gpu)
    world = (gpus or 1) * (nodes or 1)
    title = f"fastest fitting mixture on {world} x {gpu_spec.name}"
    if not json_out:
        matrix_table(cells, title)  # the table first: a failing write loses nothing
    if png:
        write_png(cells, png, title)
    if json_out:
        return print_json({"gpu": gpu_spec.name, "gpus": world, "cells": [c.to_json() for c in cells], "png": png,
                           "calibration": notes})
    if png:
        console.print(f"heatmap written to {png}")


def _train_keys() -> str:
    return ", ".join(TrainConfig.model_fields)


@app.command("train", context_settings={"allow_extra_args": False},
             epilog="key=value (or YAML) keys: " + _train_keys() + ". See docs/train.md.")
@guard
def train_cmd(
    args: Annotated[Optional[list[str]], typer.Argument(metavar="[CONFIG.yaml] [KEY=VALUE]...", help="An optional YAML config, then key=value overrides (keys below).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", metavar="NAME|PATH", help="Catalog name or hub id, a local folder (weights, or only config.json), or a .gguf file. Default smollm2-135m.")] = None,
    random_init: Annotated[Optional[bool], typer.Option("--random-init/--pretrained", help="Random weights of the model's shape (no download). Default pretrained.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", metavar="SOURCE", help="builtin (ftmix's own dialogues), a .jsonl/.json/.csv/.parquet file or a folder saved with datasets, or a hub dataset id; alpaca, sharegpt, openai messages, text or dialogue rows (detected; format=NAME, columns={...} to say). Default builtin.")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", metavar="DIR", help="Where run.json, checkpoints and the final model go. Default runs/ftmix.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", metavar="N", help="Stop after N optimizer steps. Default: one epoch.")] = None,
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", metavar="N", help="Checkpoint every N steps (0: none; the final model is always saved). Default 0.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue from the last checkpoint in the output dir (same mixture).")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="Clear the output dir's earlier run first (a non-empty output dir is refused otherwise).")] = None,
    lr: Annotated[Optional[float], typer.Option("--learning-rate", "--lr", metavar="LR", help="Peak learning rate. Default 4e-4.")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", metavar="N", help="Passes over the data (max_steps wins when set). Default 1.")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--padding", help="Pack examples into full rows instead of padding each. Default padding.")] = None,
    nproc: Annotated[Optional[int], typer.Option("--gpus", "--nproc", metavar="N", help="Processes on this machine (GPUs, or CPU ranks). Default 1.")] = None,
    launcher: Annotated[Optional[str], typer.Option("--launcher", metavar="torchrun|deepspeed", help="Launcher for several processes. Default torchrun.")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", metavar="NAME", help="Catalog GPU for the predictions (detected on CUDA).")] = None,
    twin: Annotated[Optional[bool], typer.Option("--twin/--no-twin", help="Count the bytes a GPU run holds on the device and the host (docs/twin.md); on by default.")] = None,
    zero: o.MIX.zero = None, offload: o.MIX.offload = None, lora: o.MIX.lora = None, lora_alpha: o.MIX.lora_alpha = None,
    lora_targets: o.MIX.lora_targets = None, gc: o.MIX.gc = None, attn: o.MIX.attn = None, precision: o.MIX.precision = None,
    micro_batch: o.MIX.micro_batch = None, seq_len: o.MIX.seq_len = None,
    quantize: o.MIX.quantize = None, optimizer: o.MIX.optimizer = None, modules_to_save: o.MIX.modules_to_save = None,
    dora: o.MIX.dora = None, sharding: o.MIX.sharding = None,
    calibration: Calibration = None,
    calibration_any_gpu: Annotated[Optional[bool], typer.Option("--calibration-any-gpu", help="Use a calibration fitted on other GPU types too.")] = None,
    mixture: Annotated[Optional[str], typer.Option("--mixture", metavar="manual|auto", help="auto: the planner's fastest mixture that fits the GPU (detected, or --gpu on CPU) under the flags you fix; on out-of-memory the next that needs less. Default manual.")] = None,
    eval_too: Annotated[bool, typer.Option("--eval", help="After training, score the base model and the fine-tuned one on held-out rows (ROUGE, eval loss; needs max_rows below the data's rows): `ftmix eval`.")] = False,
    json_out: o.Json = False,
):
    """Fine-tune for real with a mixture (Transformers + PEFT + DeepSpeed) and record what it costs."""
    items = list(args or [])
    path = items.pop(0) if items and "=" not in items[0] else None
    flags = {k: v for k, v in locals().items() if k in TrainConfig.model_fields and v is not None}
    cfg = api.check_train(path, eval=eval_too, overrides=items, **flags)  # everything checkable fails here

    log = api.train_log(cfg)
    terminal = os.fdopen(os.dup(2), "w")  # the progress bar's, while the engines' output goes to the log
    progress = LazyProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"), file=terminal)
    try:
        if cfg.nproc > 1 or cfg.nnodes > 1:
            progress.add_task(f"{cfg.nproc * cfg.nnodes} ranks via {cfg.launcher}", total=None, info="")
        record = api.run_checked(cfg, eval=eval_too, progress=progress)
    except Exception as exc:  # noqa: BLE001 - CUDA's, the twin's and a rank's out-of-memory, whatever their type
        with engine_output_to(log):  # the training stack's import-time notes (bitsandbytes') go to the log
            # lazy: only a failed run asks whether it ran out of memory (the training stack's errors)
            from ftmix.train.auto import is_oom

        if not is_oom(exc):
            raise
        progress.stop()
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        line = line if "out of memory" in line.lower() else f"out of memory: {line}"
        sys.stderr.write(f"error: {line} (engine output: {log})\n")
        raise typer.Exit(OOM_EXIT) from None
    except KeyboardInterrupt:
        progress.stop()

        last = last_checkpoint(cfg.output_dir)
        where = (f"last checkpoint: {last}; continue with the same command and --resume" if last else
                 "no checkpoint was saved (save_steps=N saves every N steps)")
        sys.stderr.write(f"error: interrupted; {where}\n")
        raise typer.Exit(130) from None
    finally:
        progress.stop()
        terminal.close()
    evals = record.get("eval") if eval_too else None
    if json_out:
        return print_json(dict(_summary(record), **({"eval": evals} if evals else {})))
    train_summary(record)
    if evals:
        eval_table(evals)
    console.print(f"[dim]engine output: {log}[/dim]")


def _summary(record: dict) -> dict:
    meas = record["measured"]
    keys = ("steps", "steps_this_run", "median_step_s", "tokens_per_s", "total_s", "train_loss", "peak_gpu_allocated_gb",
            "peak_gpu_reserved_gb", "peak_cpu_hwm_gb", "ranks")
    return {"label": record["label"], "mixture": record["mixture"], "engine": record["engine"],
            "data": {k: v for k, v in record["data"].items() if k != "problems"},
            "measured": {k: meas.get(k) for k in keys}, "comparison": record["comparison"],
            "artifacts": record.get("artifacts"),
            "run_json": str(Path(record["config"]["output_dir"]) / "run.json")}


app.add_typer(study_app, name="study")
