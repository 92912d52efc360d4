"""Checks ``ftmix train`` runs in the launching process before anything heavy loads: every one that
would otherwise fail after the model is built (or, worse, after training) fails here with one line.

Reads files and the catalog only; imports neither torch nor DeepSpeed (transformers' config classes
only, to know which keys a model's config takes).
"""

from __future__ import annotations

from pathlib import Path

from ftmix.catalog import ModelSpec, load_gpu, model_config, model_names, spec_from_hf_config
from ftmix.catalog.models import ARCHITECTURES
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.files import read_json, writable_path
from ftmix.job.checkpoints import CHECKPOINT_MIXTURE, checkpoint_record, is_run_file, last_checkpoint
from ftmix.job.config import TrainConfig
from ftmix.job.data import data_format, load_records
from ftmix.job.hub import check_model
from ftmix.job.source import resolve_source
from ftmix.mixture import Mixture, check_mixture, grad_accum
from ftmix.plan.constants import calibration_for
from ftmix.plan.host import available_ram_bytes, has_nvidia_gpu

# what ftmix keeps out of a run's host memory budget: the interpreter, torch, transformers and
# DeepSpeed loaded (measured: ~1.2 GB resident per rank on CPU before the model is built)
RUNTIME_BYTES_PER_RANK = 1.5e9


def on_cpu(cfg: TrainConfig) -> bool:
    return cfg.device == "cpu" or (cfg.device == "auto" and not has_nvidia_gpu())


def preflight(cfg: TrainConfig, eval_rows: bool = False) -> Mixture:
    """The run's mixture, once everything checkable without loading is checked."""
    cpu = on_cpu(cfg)
    gpu = load_gpu(cfg.gpu) if cfg.gpu else None
    if cfg.calibration or gpu is not None:
        calibration_for(cfg.calibration, gpu.name if gpu else None, cfg.calibration_any_gpu)  # a bad file fails now
    m = cfg.to_mixture(gpu, cpu)
    if cpu and m.precision.startswith("fp16"):
        raise FtmixError(f"--precision {m.precision} needs a CUDA GPU (fp16 training on CPU is not supported by "
                         "torch's autocast and loss scaling); use bf16 on CPU")
    grad_accum(cfg.effective_batch, m.micro_batch, m.world)
    check_data(cfg, eval_rows)
    spec = model_spec(cfg)
    check_source(cfg)
    if spec is not None:
        check_mixture(m, spec, gpu)
        if cpu:
            check_host_memory(spec, m, cfg)
    if cfg.memory_limit_gb and not cfg.twin:
        raise FtmixError("memory_limit_gb is enforced by the device-memory twin: drop --no-twin")
    _check_output_dir(cfg, m)
    return m


def check_source(cfg: TrainConfig) -> None:
    """A model to download: in the local cache when offline, else a reachable hub (seconds, not
    the libraries' retries)."""
    if cfg.random_init or cfg.gguf_file:
        return
    source = resolve_source(cfg.model, False, cfg.gguf_file)
    if source.kind == "pretrained" and not Path(source.ref).expanduser().exists():
        check_model(source.ref)


def model_spec(cfg: TrainConfig) -> ModelSpec | None:
    """The shape to be built, when it is known without downloading: a catalog model (with
    ``model_overrides``) or a local config.json. Unknown override keys are refused."""
    found = model_config(cfg.model)
    if found is None:
        local = Path(cfg.model).expanduser()
        if not local.exists():
            if cfg.model.startswith(("/", ".", "~")) or local.suffix in (".json", ".gguf", ".safetensors"):
                raise FtmixError(f"model {cfg.model}: no such file or folder")
            if "/" not in cfg.model or cfg.model.count("/") > 1:
                raise FtmixError(f"unknown model {cfg.model!r}; known: {', '.join(model_names())}, a local "
                                 "folder, a .gguf file or a hub id (org/name)")
        if cfg.model_overrides:
            raise FtmixError("model_overrides need a catalog model or a local config.json to apply to")
        return None
    base = found[0]
    if cfg.model_overrides:
        _check_override_keys(base, cfg.model_overrides)
    config = dict(base, **cfg.model_overrides)
    if config.get("model_type", "llama") not in ARCHITECTURES:
        return None  # transformers builds it; the analytic model does not know it (simulate does)
    spec = spec_from_hf_config(config, name=cfg.model)
    if spec.quantization:
        raise FtmixError(f"{cfg.model} is a {spec.quantization[0].upper()}-quantized checkpoint: `ftmix train` loads "
                         "bitsandbytes quantization only (--quantize bnb.*; GPTQ/AWQ are for estimate, plan, matrix and "
                         "study)")
    return spec


def _check_override_keys(base: dict, overrides: dict) -> None:
    import transformers  # lazy: its config classes only (no torch), and only when overrides are given

    mtype = base.get("model_type", "llama")
    try:
        known = set(transformers.AutoConfig.for_model(mtype).to_dict()) | set(base)
    except ValueError:
        known = set(base)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise FtmixError(f"model_overrides: {', '.join(unknown)} not a {mtype} config key")


def check_host_memory(spec: ModelSpec, m: Mixture, cfg: TrainConfig) -> None:
    """On CPU the device is the host: the estimate's device peak plus its host bytes, per rank,
    against what the machine has available now."""
    available = available_ram_bytes()
    if available is None:
        return
    est = estimate(spec, m, grad_accum=grad_accum(cfg.effective_batch, m.micro_batch, m.world))
    # mixed-precision full fine-tuning without DeepSpeed keeps fp32 weights in the model
    need = m.world * (est.peak + RUNTIME_BYTES_PER_RANK) + est.cpu_bytes
    if need > available:
        raise FtmixError(f"this run needs about {need / 1e9:.1f} GB of memory on this CPU machine ({m.world} rank(s) x "
                         f"{est.peak / 1e9:.1f} GB of tensors + runtime, {est.cpu_bytes / 1e9:.1f} GB offloaded) but "
                         f"{available / 1e9:.1f} GB are available; use a smaller model (model_overrides) or --random-init "
                         "with a tiny shape")


def check_data(cfg: TrainConfig, eval_rows: bool = False):
    """The data read and its format resolved (a bad file, format or column mapping fails here);
    with ``eval_rows``, rows must be left past ``max_rows`` for ``--eval``. Returns the format."""
    rows = load_records(cfg.data, cfg.split)
    fmt = data_format(rows[:cfg.max_rows] if cfg.max_rows else rows, cfg.format, cfg.columns, cfg.tags)
    if eval_rows and len(rows) <= (cfg.max_rows or len(rows)):
        raise FtmixError(f"--eval scores rows the run did not train on, but max_rows={cfg.max_rows or 'all'} takes "
                         f"all {len(rows)} rows of {cfg.data}: set max_rows below {len(rows)}")
    return fmt


def _check_output_dir(cfg: TrainConfig, m: Mixture) -> None:
    """The run folder: a fresh one, an earlier run's with ``--resume`` (the same mixture) or
    ``--overwrite`` (cleared by the launch, not here). A file or an unwritable place fails now."""
    out = Path(cfg.output_dir).expanduser()
    writable_path(out, "--output-dir")
    if cfg.resume and cfg.overwrite:
        raise FtmixError("--resume continues the run in --output-dir and --overwrite clears it: choose one")
    if cfg.overwrite and out.is_dir():
        foreign = [p.name for p in out.iterdir() if not is_run_file(p.name)]
        if foreign:
            raise FtmixError(f"--overwrite clears a run folder, but {cfg.output_dir} also holds "
                             f"{', '.join(sorted(foreign)[:4])}, which ftmix did not write: not clearing it")
    if not out.is_dir() or cfg.overwrite:
        if cfg.resume:
            raise FtmixError(f"--resume: no checkpoint in {cfg.output_dir}")
        return
    last = last_checkpoint(str(out))
    if cfg.resume:
        if last is None:
            raise FtmixError(f"--resume: no checkpoint in {cfg.output_dir}")
        _check_resume_matches(Path(last), cfg, m)
        return
    held = sorted(p.name for p in out.iterdir())
    if held:
        what = f"checkpoints (last: {Path(last).name})" if last else "an earlier run (" + ", ".join(held[:4]) + (
            ", ..." if len(held) > 4 else "") + ")"
        raise FtmixError(f"{cfg.output_dir} holds {what}: add --resume to continue from its last checkpoint, "
                         "--overwrite to clear it, or choose another --output-dir")


def _check_resume_matches(checkpoint: Path, cfg: TrainConfig, m: Mixture) -> None:
    """A checkpoint holds one engine's partitioned states for one set of trainable parameters:
    resuming it under another stage, world size or LoRA shape fails inside the engine's loader."""
    saved_path = checkpoint / CHECKPOINT_MIXTURE
    if not saved_path.is_file():
        return  # written by ftmix before this file existed: nothing to compare
    saved = read_json(saved_path, "checkpoint record")
    asked = checkpoint_record(cfg, m)
    differ = [k for k in asked if k != "mixture" and k in saved and saved[k] != asked[k]]
    if differ:
        was = ", ".join(f"{k}={saved[k]}" for k in differ)
        now = ", ".join(f"{k}={asked[k]}" for k in differ)
        raise FtmixError(f"--resume: {checkpoint.name} was saved with {was}; this run asks {now}. Resume with the "
                         "checkpoint's settings, or start anew with --overwrite or another --output-dir")
