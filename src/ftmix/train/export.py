"""``ftmix export --run DIR``: what a run produced, as artefacts other tools load.

A LoRA run's ``final/`` is already PEFT's format (``adapter_config.json`` +
``adapter_model.safetensors``, saved by ``Trainer.save_model``; under ZeRO-3 with
``stage3_gather_16bit_weights_on_model_save`` the gathered 16-bit weights); export copies it with the
tokenizer into ``OUT/adapter``, which ``PeftModel.from_pretrained(base, OUT/adapter)`` loads. With
``--merge`` it rebuilds the base the run trained on (the same ``resolve_source`` and
``build_model``; a random-init base from the run's seed, checked against the checksum the run
recorded; a GGUF base dequantized by transformers), loads the adapter with PEFT, merges it in fp32
(``merge_and_unload``) and saves a standard transformers folder (safetensors) in the chosen dtype,
with the tokenizer: ``AutoModelForCausalLM.from_pretrained(OUT/merged)``. A full fine-tuning run's
``final/`` is a transformers folder already: export copies it to ``OUT/model`` (``--merge`` has
nothing to merge and says so).

The adapter names a base that loads: ``adapter_config.json``'s ``base_model_name_or_path`` is the
hub id or local folder the run loaded; a base no loader can read from that name (a GGUF file,
which transformers de-quantizes, or a random init) is written as a transformers folder to
``OUT/base`` and named there, so ``AutoPeftModelForCausalLM.from_pretrained(OUT/adapter)`` works.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.files import read_json, writable_path
from ftmix.job.config import TrainConfig
from ftmix.job.record import RunRecord, read_record
from ftmix.job.source import resolve_source
from ftmix.mixture import Mixture

DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class ExportPlan:
    """What ``export`` will do, checked before torch loads."""

    run_dir: Path
    final: Path
    out: Path
    lora: bool
    merge: bool
    dtype: str
    record: RunRecord


def plan_export(run_dir: str, out: str | None, merge: bool, dtype: str) -> ExportPlan:
    run = Path(run_dir).expanduser()
    record = read_record(run_dir)
    final = final_folder(run, record)
    if not final.is_dir():
        raise FtmixError(f"the run's final model is missing: {final}")
    lora = bool(record.mixture.get("lora"))
    marker = "adapter_config.json" if lora else "config.json"
    if not (final / marker).is_file():
        raise FtmixError(f"{final} has no {marker}: not the final model of this run")
    if dtype not in DTYPES:
        raise FtmixError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    target = Path(out).expanduser() if out else run / "export"
    writable_path(target, "--out")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FtmixError(f"--out {target} exists and is not empty; export never overwrites")
    return ExportPlan(run, final, target, lora, merge, dtype, record)


def final_folder(run: Path, record: RunRecord) -> Path:
    """The run's final model: where run.json says, or the run's own final/ if the folder moved."""
    final = Path((record.artifacts or {}).get("model") or run / "final")
    return final if final.is_dir() else run / "final"


def base_checksum(model) -> float:
    """Sum of the base model's weights in fp64 (LoRA matrices left out): enough to tell a rebuilt
    random-init base from another draw."""
    # lazy: `ftmix export` and `ftmix eval` check their input before the torch world loads
    import torch

    def values(p):
        # a 4-bit weight's packed codes as bytes: stored in 16-bit elements (ZeRO-3, FSDP2) their bit
        # patterns are no numbers (NaN, inf), and a rebuild stores the same bytes as uint8
        return p.detach().view(torch.uint8) if getattr(p, "quant_state", None) is not None else p.detach()

    with torch.no_grad():
        return float(sum(values(p).double().sum() for n, p in model.named_parameters()
                         if "lora_" not in n and "modules_to_save" not in n))


def export(plan: ExportPlan) -> dict:
    plan.out.mkdir(parents=True, exist_ok=True)
    if not plan.lora:
        shutil.copytree(plan.final, plan.out / "model")
        result = {"model": str(plan.out / "model"), "kind": "transformers model (full fine-tuning)"}
        if plan.merge:
            result["note"] = "full fine-tuning trained the whole model: nothing to merge; copied as it is"
        return result
    adapter = plan.out / "adapter"
    shutil.copytree(plan.final, adapter)
    result = {"adapter": str(adapter), "kind": "LoRA adapter (PEFT)"}
    base_ref, base, note = _loadable_base(plan)
    _name_base(adapter, base_ref)
    result["base"] = base_ref
    if note:
        result["note"] = note
    if plan.merge:
        result.update(merged=str(_merge(plan, base)))
        quantize = plan.record.mixture.get("quantize", "none")
        if quantize != "none":
            result["note"] = ((result.get("note") + "; ") if result.get("note") else "") + (
                f"merged into the de-quantized base: the run trained against {quantize} weights, expanded to 16 "
                "bits by bitsandbytes (not the original 16-bit checkpoint)")
    return result


def _loadable_base(plan: ExportPlan) -> tuple[str, object, str | None]:
    """(what the adapter names as its base, the rebuilt base if one was built, a note)."""
    cfg = TrainConfig(**plan.record.config)
    source = resolve_source(cfg.model, cfg.random_init, cfg.gguf_file, cfg.model_overrides)
    if source.kind == "pretrained":
        local = Path(source.ref).expanduser()
        return (str(local.resolve()) if local.is_dir() else source.ref), None, None
    base = rebuild_base(plan.record)
    target = plan.out / "base"
    base.save_pretrained(str(target), safe_serialization=True)
    _copy_tokenizer(plan.final, target)
    if source.kind == "gguf":
        note = (f"the base is {source.gguf_file}, de-quantized by transformers and written to {target} "
                "(its weights are the GGUF's, rounded as that file's quantization rounded them)")
    else:
        note = f"the base is a random init (seed {cfg.seed}), written to {target}"
    return str(target.resolve()), base, note


def _name_base(adapter: Path, base_ref: str) -> None:
    path = adapter / "adapter_config.json"
    config = read_json(path, "adapter config")
    config["base_model_name_or_path"] = base_ref
    path.write_text(json.dumps(config, indent=2) + "\n")


def _copy_tokenizer(source: Path, target: Path) -> None:
    for p in source.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(p, target / p.name)


def rebuild_base(record: RunRecord):
    """The base model the run trained on, in the run's weight dtype."""
    # lazy: the torch world loads only when a base is rebuilt (``ftmix export`` plans without it)
    import transformers

    from ftmix.model.build import build_model

    cfg = TrainConfig(**record.config)
    m = Mixture(**record.mixture)
    source = resolve_source(cfg.model, cfg.random_init, cfg.gguf_file, cfg.model_overrides)
    transformers.set_seed(cfg.seed)  # the run seeds before building: a random init draws the same weights
    # the base in the dtype the run built it in (a random init draws in that dtype): LoRA's frozen
    # base is 16-bit in mixed precision, which for full fine-tuning would mean fp32 masters
    precision = m.precision if m.precision == "fp32" or m.pure16 else f"{m.precision}-true"
    base_mix = m.with_(lora=0, gc=False, zero=0, offload="none", gpus=1, nodes=1, precision=precision)
    base = build_model(source, base_mix, "cpu").model
    expected = (record.artifacts or {}).get("base_checksum")
    if expected is not None:
        got = base_checksum(base)
        if abs(got - expected) > 1e-6 * max(1.0, abs(expected)):
            raise FtmixError(f"the rebuilt random-init base differs from the run's (checksum {got:.6g} vs "
                             f"{expected:.6g}); export the adapter without --merge")
    if m.quantize != "none":
        # the base the adapter was trained against is the quantized one: expanded to 16 bits by
        # bitsandbytes (transformers' ``dequantize``), the weights each quantized matmul computed with
        base = base.dequantize()
    return base


def _merge(plan: ExportPlan, base=None) -> Path:
    # lazy: `ftmix export` and `ftmix eval` check their input before the torch world loads
    import torch
    from peft import PeftModel

    base = (base if base is not None else rebuild_base(plan.record)).float()  # merge in fp32: no 16-bit rounding
    merged = PeftModel.from_pretrained(base, str(plan.final)).merge_and_unload()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[plan.dtype]
    target = plan.out / "merged"
    merged.to(dtype).save_pretrained(str(target), safe_serialization=True)
    _copy_tokenizer(plan.final, target)
    return target
