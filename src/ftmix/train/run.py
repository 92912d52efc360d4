"""One rank of a fine-tuning run: data, model, mixture, HF Trainer (+ DeepSpeed), measurement.

HF Trainer drives the loop under the mixture's engine (``ftmix.engines``): with a ZeRO stage
DeepSpeed, with the config generated from the Mixture or the user's own JSON; ``--zero 0`` plain
HF Trainer (torch DDP with several processes). Each rank writes ranks/rank{N}.json; the launcher
merges them into run.json.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import transformers
from accelerate.state import AcceleratorState
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.trainer_callback import PrinterCallback

from ftmix.catalog import GpuSpec, load_gpu, match_gpu
from ftmix.engines import Engine, engine_for
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.job.checkpoints import CHECKPOINT_MIXTURE, checkpoint_record, checkpoint_step, last_checkpoint
from ftmix.job.config import TrainConfig
from ftmix.job.data import data_format, load_records, tokenize
from ftmix.job.source import resolve_source
from ftmix.measure.twin import DeviceTwin
from ftmix.mixture import Mixture, check_mixture, grad_accum
from ftmix.mixture.engine import read_deepspeed_config
from ftmix.model.build import build_model, load_tokenizer
from ftmix.plan import step_time
from ftmix.plan.constants import Calibration, calibration_for
from ftmix.train.export import base_checksum
from ftmix.train.measure import Meter, cpu_rss_bytes

# HF TrainingArguments' ``optim`` for each mixture optimizer: torch's fused AdamW (a GPU run's, on
# CPU too, so the twin sees a GPU's temporaries), bitsandbytes' 8-bit and paged AdamW
HF_OPTIMIZERS = {"adamw_torch": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit",
                 "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit"}


def detect_gpu(device: str) -> GpuSpec | None:
    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return match_gpu(props.name, props.total_memory)


def pick_device(cfg: TrainConfig) -> str:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise FtmixError("device cuda requested but no CUDA device is visible")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def resolve_mixture(cfg: TrainConfig, device: str, gpu: GpuSpec | None) -> Mixture:
    """The same Mixture as estimate/plan; fa2 falls back on CPU. On CPU precision defaults to bf16
    while the device-memory twin measures (the bytes a GPU run holds), else to fp32. The user's
    DeepSpeed JSON fixes stage, offload and precision, as it does for ``estimate --deepspeed``."""
    return cfg.to_mixture(gpu, cpu=device == "cpu")


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class Prepared:
    """Everything a rank needs before the loop: the resolved mixture, data and model."""

    cfg: TrainConfig
    mixture: Mixture
    device: str
    gpu: GpuSpec | None
    rank: int
    world: int
    built: object  # ftmix.model.build.BuiltModel
    sequences: list
    report: object  # ftmix.job.data.DataReport
    engine: Engine
    engine_config: dict | None  # the engine's own (DeepSpeed's JSON), None for plain torch
    rss_before_model: int | None
    tokenizer: object = None  # saved beside the final model, so an export is a standard folder
    base_checksum: float | None = None  # random init: export rebuilds the base and checks it is the same


def prepare(cfg: TrainConfig, twin=None) -> Prepared:
    """Check, load data and tokenizer, build the model; ``twin`` starts counting right before the
    model is built (bad input fails before it, with one clean error line)."""
    if cfg.resume and last_checkpoint(cfg.output_dir) is None:
        raise FtmixError(f"--resume: no checkpoint in {cfg.output_dir}")
    rank, world, local_rank = _dist_env()
    device = pick_device(cfg)
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(cfg.threads_per_process())
    gpu = load_gpu(cfg.gpu) if cfg.gpu else detect_gpu(device)
    user_ds = read_deepspeed_config(cfg.deepspeed_config) if cfg.deepspeed_config else None
    m = resolve_mixture(cfg, device, gpu)
    if m.world != world:
        m = m.with_(gpus=world // m.nodes or 1)
    transformers.set_seed(cfg.seed)
    rows = load_records(cfg.data, cfg.split, cfg.max_rows)
    source = resolve_source(cfg.model, cfg.random_init, cfg.gguf_file, cfg.model_overrides)
    vocab_limit = int((source.config or {}).get("vocab_size", 1 << 30))
    tokenizer = load_tokenizer(source, rows, cfg.tokenizer, vocab_limit)
    fmt = data_format(rows, cfg.format, cfg.columns, cfg.tags)
    sequences, report = tokenize(rows, tokenizer, m.seq_len, cfg.template, cfg.too_long, cfg.packing, fmt,
                                 cfg.chat_template, cfg.train_on_prompt)
    rss_before_model = cpu_rss_bytes()
    if twin is not None:
        twin.start()
    engine = engine_for(m, user_ds)
    built = build_model(source, engine.build_mixture(m), device, cfg.lora_dropout,
                        twin.paused if twin is not None else nullcontext, **engine.build_options(m))
    vocab = built.config.get("vocab_size") or (built.config.get("text_config") or {}).get("vocab_size")
    if vocab and len(tokenizer) > vocab:
        raise FtmixError(f"tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
    if built.spec is not None:
        check_mixture(m, built.spec, None)
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    engine_config = engine.config(m, trainable, user_ds)
    checksum = None
    if cfg.random_init:
        if twin is not None:
            with twin.paused():
                checksum = base_checksum(built.model)
        else:
            checksum = base_checksum(built.model)
    return Prepared(cfg, m, device, gpu, rank, world, built, sequences, report, engine, engine_config,
                    rss_before_model, tokenizer, checksum)


@contextmanager
def isolated_run(deepspeed: bool):
    """Leave the process as the run found it: HF Trainer writes ACCELERATE_* variables into
    os.environ, DeepSpeed wants a rendezvous even for one process (given here when no launcher set
    one), accelerate keeps process-wide state. Another run in this process, or a child process,
    must start clean."""
    saved = dict(os.environ)
    created = deepspeed and "RANK" not in os.environ
    if created:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        yield
    finally:
        # the one-process group stays up: DeepSpeed's comm layer caches it and the next run reuses it
        os.environ.clear()
        os.environ.update(saved)
        AcceleratorState._reset_state(reset_partial_state=True)


def train(cfg: TrainConfig, progress=None) -> dict:
    """Run this rank; write ranks/rank{N}.json; return it. With ``twin`` on (the default) the
    device-memory twin counts every tensor from the model's build to the end."""
    twin = None
    if cfg.twin:
        limit = cfg.memory_limit_gb * 1e9 if cfg.memory_limit_gb else None
        twin = DeviceTwin(virtual=pick_device(cfg) == "cpu", limit=limit)
    try:
        prep = prepare(cfg, twin)
        if twin is not None:
            twin.offload = prep.engine.offloads(prep.engine_config)
        with isolated_run(prep.engine_config is not None):
            return fit(prep, progress, twin)
    finally:
        if twin is not None:
            twin.stop()


def fit(prep: Prepared, progress=None, twin=None) -> dict:
    cfg, m, device, world = prep.cfg, prep.mixture, prep.device, prep.world
    accum = grad_accum(cfg.effective_batch, m.micro_batch, world)
    precision = prep.engine.trainer_precision(m)
    args = TrainingArguments(
        output_dir=cfg.output_dir, per_device_train_batch_size=m.micro_batch, gradient_accumulation_steps=accum,
        learning_rate=cfg.lr, adam_beta1=cfg.beta1, adam_beta2=cfg.beta2, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_steps, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, logging_steps=1, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, save_total_limit=cfg.keep_last, seed=cfg.seed, data_seed=cfg.seed, report_to=[], disable_tqdm=True,
        use_cpu=device == "cpu", remove_unused_columns=False, dataloader_num_workers=0,
        optim=HF_OPTIMIZERS[m.optimizer],
        save_only_model=False, **prep.engine.trainer_args(prep.engine_config, device, world), **precision)
    meter = Meter(device, progress if prep.rank == 0 else None, twin)
    model = prep.engine.prepare(prep.built.model, m, device)
    if prep.engine.shards_after_build and twin is not None:
        twin.reset_peak()  # built whole, then sharded: see ftmix.engines.fsdp2.shard
    hyper = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(prep.sequences),
                      data_collator=default_data_collator, callbacks=[meter],
                      optimizer_cls_and_kwargs=prep.engine.optimizer_cls_and_kwargs(hyper))
    prep.engine.adopt(trainer)
    meter.trainer = trainer
    if prep.rank == 0:
        trainer.add_callback(checkpoint_callback(cfg, m))
    trainer.remove_callback(PrinterCallback)  # ftmix reports through its own progress bar and run.json
    resume = last_checkpoint(cfg.output_dir) if cfg.resume else None
    notes = list(prep.built.notes) + length_note(prep.report, m)
    if device == "cpu" and m.optimizer.startswith("paged"):
        notes.append(f"{m.optimizer} on CPU: no unified memory, so bitsandbytes keeps the states unpaged (the same "
                     "bytes; the twin counts them on the device, as a GPU holds them before any eviction)")
    output = trainer.train(resume_from_checkpoint=resume)
    if cfg.save_steps:
        trainer.save_state()
    twin_report = None
    if twin is not None:
        meter.mark_roles()
        with twin.paused():
            twin_report = twin.report()
    final = Path(cfg.output_dir) / "final"
    if twin is not None:
        with twin.paused():  # the save gathers ZeRO-3's 16-bit weights: not a training step's memory
            prep.engine.save_final(trainer, str(final))
    else:
        prep.engine.save_final(trainer, str(final))
    if prep.rank == 0 and prep.tokenizer is not None:
        prep.tokenizer.save_pretrained(str(final))
    resumed_at = checkpoint_step(resume)

    median = meter.median_step(cfg.warmup_measure_steps)
    tokens_per_step = accum * m.micro_batch * world * m.seq_len
    record = {
        "rank": prep.rank, "mixture": m.to_dict(), "label": m.label, "model": cfg.model, "device": device,
        "gpu": prep.gpu.name if prep.gpu else None, "attn_implementation": prep.built.attn_implementation,
        "notes": notes, "config": cfg.model_dump(), "engine": prep.engine.report(trainer, prep.engine_config),
        "artifacts": {"model": str(final), "kind": "LoRA adapter (PEFT)" if m.lora else "model (transformers)",
                      "tokenizer": str(final), "base_checksum": prep.base_checksum},
        "data": prep.report.to_json(), "peaks": meter.peaks(), "twin": twin_report,
        "measured": {
            "steps": output.global_step, "steps_this_run": output.global_step - resumed_at, "resumed_from": resume,
            "grad_accum": accum, "world_size": world,
            "median_step_s": None if median is None else round(median, 5),
            "tokens_per_s": None if not median else round(tokens_per_step / median, 2),
            "total_s": round((meter.end or 0) - (meter.start or 0), 3),
            "train_loss": output.training_loss, "loss_curve": meter.losses,
            "step_times_s": [round(t, 5) for t in meter.step_times],
            "cpu_rss_before_model_gb": round((prep.rss_before_model or 0) / 1e9, 4),
            "memory_after_setup": meter.memory_after_setup,
        },
        "predicted": _predict(replace(prep.built.spec, name=cfg.model), m, prep.gpu, cfg.effective_batch,
                              prep.engine_config if cfg.deepspeed_config else None,
                              (cfg.calibration, cfg.calibration_any_gpu)) if prep.built.spec else
        {"note": f"the analytic method does not model {prep.built.config.get('model_type')!r}: "
                 "ftmix estimate --method simulate predicts it"},
        "versions": _versions(),
    }
    out = Path(cfg.output_dir) / "ranks"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{prep.rank}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


def length_note(report, m: Mixture) -> list[str]:
    """Padded rows far shorter than the sequence length: the estimate (and the run) is for
    ``seq_len``; the data needs less."""
    longest = report.tokens_max
    if m.packing or longest is None or longest >= m.seq_len:
        return []
    return [f"the rows are at most {longest} tokens (p95 {report.tokens_p95}), padded to seq-len {m.seq_len}, the "
            f"length the estimate is for: --seq-len {longest} would hold them all and need less memory"]


def checkpoint_callback(cfg: TrainConfig, m: Mixture):
    """A callback that writes into each checkpoint the settings a resume must share with it
    (``--resume`` compares them before anything loads: ``ftmix.job.preflight``)."""
    record = json.dumps(checkpoint_record(cfg, m), indent=1) + "\n"

    class CheckpointRecord(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / CHECKPOINT_MIXTURE).write_text(record)

    return CheckpointRecord()


def _predict(spec, m: Mixture, gpu: GpuSpec | None, effective_batch: int, user_ds: dict | None = None,
             calibration: tuple = (None, False)) -> dict:
    try:  # checked before training where the GPU was named; a detected GPU may not match the file
        cal = calibration_for(calibration[0], gpu.name if gpu else None, calibration[1])
    except FtmixError as exc:
        cal = Calibration(notes=(f"not calibrated: {exc}",))
    est = estimate(spec, m, gpu, deepspeed=user_ds, overheads=cal.memory,
                   grad_accum=grad_accum(effective_batch, m.micro_batch, m.world))
    out = {"estimate": est.to_json(), "peak_gb": round(est.peak / 1e9, 4), "peak_bytes": round(est.peak),
           "cpu_bytes": round(est.cpu_bytes), "breakdown_bytes": {k: round(v) for k, v in est.breakdown.items()}}
    if gpu is not None:
        step = step_time(spec, gpu, m, effective_batch, cal.runtime)
        out["step_time_s"] = round(step.total, 5)
        out["time"] = step.to_json()  # where the predicted step time goes, and its MFU
    else:
        out["step_time_s"] = None
        out["note"] = "no GPU: the memory estimate is for GPU tensors; no CPU runtime model"
    if cal.notes:
        out["calibration"] = list(cal.notes)
    return out


def _versions() -> dict:
    md = importlib.metadata
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "deepspeed", "accelerate", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
