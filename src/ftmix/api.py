"""ftmix as a Python library: the functions the CLI itself calls, with the CLI's names and defaults.

``import ftmix`` loads no torch: ``estimate``, ``plan`` and ``matrix`` are torch-free (unless
``method="simulate"``); ``train`` and ``evaluate`` load the training stack when called. Each
returns the object its command's ``--json`` is made from (``to_json()`` gives that JSON). Bad
input raises :class:`ftmix.FtmixError` with the one line the CLI prints. Examples: docs/api.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ftmix.catalog import load_gpu, load_model, spec_from_hf_config
from ftmix.errors import FtmixError
from ftmix.estimate import check_grad_accum
from ftmix.estimate import estimate as analytic_estimate
from ftmix.estimate.overheads import with_overheads
from ftmix.estimate.sim_input import check_sharding, simulation_config
from ftmix.files import engine_output_to
from ftmix.job.config import TrainConfig, load_config
from ftmix.job.preflight import preflight
from ftmix.mixture import DEFAULTS, check_flags, resolve_mixture
from ftmix.mixture.engine import apply_deepspeed, read_deepspeed_config
from ftmix.plan import matrix as grid
from ftmix.plan.matrix import reach_matrix as context_grid
from ftmix.plan import plan as search
from ftmix.plan.constants import calibration_for
from ftmix.plan.runtime import step_time
from ftmix.plan.context import reach_of_candidates
from ftmix.plan.host import local_cpu_ram
from ftmix.train.evaluate import Generation
from ftmix.train.evaluate import evaluate as score
from ftmix.train.launch import launch, start_fresh

if TYPE_CHECKING:
    from ftmix.estimate.result import Estimate
    from ftmix.plan.matrix import Cell
    from ftmix.plan.search import Plan

NO_GPU_RAM = "auto"


def mixture_keys(**given) -> dict:
    """The mixture keys given (None: not given, the default or searched), checked as the CLI's flags."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise FtmixError(f"not a mixture key: {', '.join(unknown)} (keys: {', '.join(DEFAULTS)})")
    flags = {k: given.get(k) for k in DEFAULTS}
    check_flags(flags)
    return flags


def estimate(model: str = "llama-2-7b", gpu: str | None = None, *, method: str = "analytic",
             deepspeed: str | None = None, grad_accum: int | None = None, safety_margin: float = 0.05, calibration: str | None = None, calibration_any_gpu: bool = False,
             **mixture) -> "Estimate":
    """Peak GPU memory and host RAM of one training step: ``ftmix estimate``.

    ``model``: catalog name, hub id of a catalog model, or a config.json; ``gpu``: catalog GPU (a
    fit verdict only when given); ``method``: analytic | paper | simulate; ``mixture``: zero,
    offload, lora, lora_alpha, lora_targets, gc, attn, precision, micro_batch, seq_len, gpus,
    nodes, packing (None or left out: the study's defaults).
    """
    gpu_spec = load_gpu(gpu) if gpu else None
    cal = calibration_for(calibration, gpu_spec.name if gpu_spec else None, calibration_any_gpu)
    ds_config = read_deepspeed_config(deepspeed) if deepspeed else None
    mix = resolve_mixture(mixture_keys(**mixture), gpu_spec, ds_config, deepspeed)
    check_sharding(mix, method)
    check_grad_accum(grad_accum)  # before torch loads for method="simulate"
    if method == "simulate":
        return with_overheads(_simulate(model, mix, gpu_spec, safety_margin, ds_config, grad_accum), cal.memory)
    return analytic_estimate(load_model(model), mix, gpu_spec, method, safety_margin, ds_config, cal.memory,
                             grad_accum)


def _simulate(model: str, mix, gpu_spec, safety_margin: float, ds_config: dict | None = None,
              grad_accum: int | None = None):
    """Everything checked before torch loads: the mixture, the config, that transformers knows it."""
    if not 0 <= safety_margin < 1:
        raise FtmixError(f"safety margin must be in [0, 1), got {safety_margin}")
    config, name = simulation_config(model, mix, gpu_spec)
    if not mix.fsdp2 and (mix.zero or mix.world > 1):
        try:
            spec_from_hf_config(config, name)
        except FtmixError:
            kind = config.get("model_type")
            raise FtmixError(
                f"--method simulate runs {kind!r} on one GPU without DeepSpeed (--zero 0 --gpus 1), and over "
                f"several GPUs with --sharding fsdp2; under --zero {mix.zero} on {mix.world} GPU(s) the sharded "
                f"model states come from the analytic model, which does not know {kind!r}") from None
    with engine_output_to(Path(os.devnull)):  # DeepSpeed's and transformers' import-time notes
        # lazy: the simulation runs the real model code under torch; the other methods never load it
        from ftmix.measure.simulate import simulate

        return simulate(config, mix, name, gpu_spec, safety_margin, ds_config, grad_accum)


def plan(model: str = "llama-2-7b", gpu: str = "a100-80gb", *, search_batch: bool = False, effective_batch: int = 8,
         deepspeed: str | None = None, cpu_ram: str | float | None = NO_GPU_RAM, safety_margin: float = 0.05,
         calibration: str | None = None, calibration_any_gpu: bool = False, **mixture) -> "Plan":
    """The fastest mixture that fits: ``ftmix plan``. Mixture keys given are fixed; ZeRO stage,
    offload, GC and attention left out are searched (LoRA or full fine-tuning stays yours).
    ``cpu_ram``: host RAM per node in GB, ``"none"``/None (no limit) or ``"auto"``."""
    spec, gpu_spec = load_model(model), load_gpu(gpu)
    cal = calibration_for(calibration, gpu_spec.name, calibration_any_gpu)
    flags, ds_config = with_deepspeed(mixture_keys(**mixture), deepspeed)
    return search(spec, gpu_spec, flags, search_batch, effective_batch, cal.runtime, safety_margin,
                  deepspeed=ds_config, cpu_ram=cpu_ram_bytes(cpu_ram), overheads=cal.memory)


def max_context(model: str = "llama-2-7b", gpu: str = "a100-80gb", *, granularity: int = 64, effective_batch: int = 8,
                deepspeed: str | None = None, cpu_ram: str | float | None = NO_GPU_RAM, safety_margin: float = 0.05,
                calibration: str | None = None, calibration_any_gpu: bool = False, **mixture) -> list:
    """``ftmix plan --max-seq-len``: the longest context each candidate mixture fits (the mixture
    given when every searched key is fixed), the farthest first; exact to ``granularity`` tokens."""
    if mixture.get("seq_len") is not None:
        raise FtmixError("--max-seq-len searches the sequence length; drop --seq-len")
    if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
        raise FtmixError(f"--granularity must be a positive whole number of tokens, got {granularity!r}")
    spec, gpu_spec = load_model(model), load_gpu(gpu)
    cal = calibration_for(calibration, gpu_spec.name, calibration_any_gpu)
    flags, ds_config = with_deepspeed(mixture_keys(**mixture), deepspeed)
    return reach_of_candidates(spec, gpu_spec, flags, granularity, effective_batch=effective_batch,
                               safety_margin=safety_margin, cpu_ram=cpu_ram_bytes(cpu_ram), deepspeed=ds_config,
                               overheads=cal.memory)


def compare_quantize(model: str = "llama-2-7b", gpu: str = "a100-80gb", scheme: str = "bnb.nf4", **plan_args) -> dict:
    """``ftmix plan --compare-quantize SCHEME``: the plan as the flags give it (base weights as they
    are) and the same plan with ``quantize=SCHEME``, side by side. Quantization stays the user's
    choice: plan never turns it on by itself."""
    given = plan_args.get("quantize")
    if given not in (None, "none"):
        raise FtmixError(f"--compare-quantize compares against unquantized weights; drop --quantize {given}")
    if plan_args.get("lora") == 0:
        raise FtmixError("--compare-quantize needs LoRA: quantized base weights train only adapters (drop --lora 0)")
    without = plan(model, gpu, **dict(plan_args, quantize="none"))
    return {"without": without, "with": plan(model, gpu, **dict(plan_args, quantize=scheme)), "scheme": scheme}


def matrix(models: str | list[str] = "llama-2-7b,llama-2-13b,llama-2-70b", gpu: str = "a100-80gb",
           seq_lens: str | list[int] = "256,512,1024,2048,4096", *, search_batch: bool = False,
           effective_batch: int = 8, cpu_ram: str | float | None = NO_GPU_RAM, safety_margin: float = 0.05,
           calibration: str | None = None, calibration_any_gpu: bool = False, **mixture) -> list["Cell"]:
    """The study's model x context matrix of the fastest fitting mixture: ``ftmix matrix``."""
    names = split_list(models, "models") if isinstance(models, str) else list(models)
    lengths = ([positive_int(x, "seq-lens") for x in split_list(seq_lens, "seq-lens")] if isinstance(seq_lens, str)
               else [positive_int(str(x), "seq-lens") for x in seq_lens])
    if not names or not lengths:
        raise FtmixError("matrix needs at least one model and one sequence length")
    specs = [load_model(name) for name in names]
    gpu_spec = load_gpu(gpu)
    cal = calibration_for(calibration, gpu_spec.name, calibration_any_gpu)
    return grid(specs, gpu_spec, lengths, mixture_keys(**mixture), search_batch=search_batch,
                effective_batch=effective_batch, constants=cal.runtime, safety_margin=safety_margin,
                cpu_ram=cpu_ram_bytes(cpu_ram), overheads=cal.memory)


def context_matrix(models: str | list[str] = "llama-2-7b,llama-2-13b,llama-2-70b",
                   gpu: str | list[str] = "a100-80gb", *, granularity: int = 64, effective_batch: int = 8,
                   cpu_ram: str | float | None = NO_GPU_RAM, safety_margin: float = 0.05, calibration: str | None = None,
                   calibration_any_gpu: bool = False, **mixture) -> list:
    """``ftmix matrix --max-seq-len``: per model (rows) and GPU (columns), the longest context the
    farthest-reaching candidate mixture fits, exact to ``granularity`` tokens."""
    names = split_list(models, "models") if isinstance(models, str) else list(models)
    gpu_names = split_list(gpu, "gpu") if isinstance(gpu, str) else list(gpu)
    if not names or not gpu_names:
        raise FtmixError("matrix needs at least one model and one GPU")
    if mixture.get("seq_len") is not None:
        raise FtmixError("--max-seq-len searches the sequence length; drop --seq-len")
    if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
        raise FtmixError(f"--granularity must be a positive whole number of tokens, got {granularity!r}")
    specs, gpu_specs = [load_model(n) for n in names], [load_gpu(g) for g in gpu_names]
    cal = calibration_for(calibration, gpu_specs[0].name if len(gpu_specs) == 1 else None,
                          calibration_any_gpu or len(gpu_specs) > 1)
    return context_grid(specs, gpu_specs, mixture_keys(**mixture), granularity, effective_batch=effective_batch,
                        safety_margin=safety_margin, cpu_ram=cpu_ram_bytes(cpu_ram), overheads=cal.memory)


def estimate_time(est: "Estimate", model: str, gpu: str | None, calibration: str | None = None,
                  any_gpu: bool = False) -> dict | None:
    """Where an estimated mixture's step time goes on its GPU (``plan``'s runtime model): one
    optimizer step of ``est.grad_accum`` micro steps (one when not given), split by part, with the
    useful FLOPs and MFU. None without a GPU or for a model the analytic method does not know."""
    if gpu is None:
        return None
    gpu_spec = load_gpu(gpu)
    cal = calibration_for(calibration, gpu_spec.name, any_gpu)
    m = est.mixture
    try:
        spec = load_model(model)
    except FtmixError:
        return None
    effective = m.micro_batch * m.world * (est.grad_accum or 1)
    return dict(step_time(spec, gpu_spec, m, effective, cal.runtime).to_json(), effective_batch=effective)


def calibration_notes(calibration: str | None, gpu: str | None, any_gpu: bool = False) -> list[str]:
    """What the calibration in force says of itself (the CLI prints these under its tables)."""
    return list(calibration_for(calibration, load_gpu(gpu).name if gpu else None, any_gpu).notes)


def train_config(config: "str | dict | TrainConfig | None" = None, overrides: list[str] | None = None,
                 **keys) -> "TrainConfig":
    """A checked TrainConfig from a YAML path, a dict or a TrainConfig, then ``key=value``
    overrides, then keyword keys (the ``ftmix train`` keys: docs/train.md)."""
    if isinstance(config, TrainConfig):
        return load_config(None, overrides, {**config.model_dump(), **keys})
    if isinstance(config, dict):
        return load_config(None, overrides, {**config, **keys})
    return load_config(config, overrides, keys)


def train(config: "str | dict | TrainConfig | None" = None, *, eval: bool = False, progress=None,
          log: str | None = None, **keys) -> dict:
    """Fine-tune for real: ``ftmix train``. Checks everything before anything heavy loads, runs
    (``mixture="auto"``: the planner's choice with its OOM fallback), and returns the run record
    that ``OUTPUT_DIR/run.json`` holds (with ``eval``: before/after scores under ``"eval"``).
    The engines' output goes to ``OUTPUT_DIR/train.log`` (or ``log``)."""
    return run_checked(check_train(config, eval=eval, **keys), eval=eval, progress=progress, log=log)


def check_train(config: "str | dict | TrainConfig | None" = None, *, eval: bool = False,
                overrides: list[str] | None = None, **keys) -> "TrainConfig":
    """``train``'s first half: the config built and every pre-flight check passed; nothing runs."""
    cfg = train_config(config, overrides, **keys)
    preflight(cfg, eval_rows=eval)
    return cfg


def run_checked(cfg: "TrainConfig", *, eval: bool = False, progress=None, log: str | None = None) -> dict:
    """``train``'s second half, for a config ``check_train`` passed."""
    start_fresh(cfg)
    with engine_output_to(Path(log) if log else train_log(cfg)):
        if cfg.mixture == "auto":
            # lazy: --mixture auto plans and falls back inside the training stack (torch)
            from ftmix.train.auto import run_auto

            record = run_auto(cfg, launch, progress)
        else:
            record = launch(cfg, progress)
        if eval:
            if progress is not None:
                progress.stop()

            run_dir = Path(cfg.output_dir).expanduser()
            record["eval"] = {"before": score(run_dir, base=True), "after": score(run_dir)}
    return record


def train_log(cfg: "TrainConfig") -> Path:
    return Path(cfg.output_dir).expanduser() / "train.log"


def evaluate(run: str, data: str | None = None, rows: int | None = None, base: bool = False, *,
             max_new_tokens: int = 64, num_beams: int = 1, temperature: float = 0.0,
             repetition_penalty: float = 1.0) -> dict:
    """ROUGE-1/2/L and eval loss on held-out rows: ``ftmix eval``."""
    for name, value, low in (("max-new-tokens", max_new_tokens, 1), ("num-beams", num_beams, 1),
                             ("rows", 1 if rows is None else rows, 1)):
        if value < low:
            raise FtmixError(f"--{name} must be at least {low}, got {value}")
    if not 0 <= temperature < float("inf") or not 0 < repetition_penalty < float("inf"):
        raise FtmixError("--temperature must be >= 0 and --repetition-penalty > 0")
    run_dir = Path(run).expanduser()
    if not (run_dir / "run.json").is_file():
        raise FtmixError(f"--run {run}: no run.json there (a finished `ftmix train` output dir)")

    with engine_output_to(run_dir / "eval.log"):
        return score(run_dir, data, rows, base, Generation(max_new_tokens, num_beams, temperature, repetition_penalty))


# --- the small parsers the CLI shares ---------------------------------------------------------

def with_deepspeed(flags: dict, path: str | None) -> tuple[dict, dict | None]:
    """The mixture flags with what a DeepSpeed config fixes (stage, offload, precision), and the
    config; a flag that contradicts the file is an error."""
    if not path:
        return flags, None

    config = read_deepspeed_config(path)
    return apply_deepspeed(flags, config, path), config


def cpu_ram_bytes(value: str | float | None) -> float | None:
    """``cpu_ram``: GB per node, ``none`` (or None), or ``auto``."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "none":
        return None
    if text == "auto":
        return local_cpu_ram()
    try:
        gb = float(text)
    except ValueError:
        raise FtmixError(f"--cpu-ram: {value!r} is not a number of GB, none or auto") from None
    if not gb > 0 or gb == float("inf"):
        raise FtmixError(f"--cpu-ram must be a positive number of GB, got {value}")
    return gb * 1e9


def split_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise FtmixError(f"--{what} is empty")
    return items


def positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FtmixError(f"--{what}: {text!r} is not an integer") from None
    if value <= 0:
        raise FtmixError(f"--{what}: {value} must be positive")
    return value
