"""Published measurements (``benchmarks/data/published-rows.jsonl``, one JSON object per row) as ftmix
inputs: each row becomes a model spec, a Mixture, a GPU and the figure its source measured, or a
reason why ftmix cannot represent it yet (that list is the roadmap). Pure: no torch.

Row fields are free text written by people; every rule here reads them conservatively: a row whose
setup is not clearly one ftmix models is listed as not represented, never guessed into a fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ftmix.catalog import GpuSpec, ModelSpec, load_gpu, spec_from_hf_config
from ftmix.errors import FtmixError
from ftmix.estimate.fsdp2 import fsdp2_states
from ftmix.estimate.states import model_states
from ftmix.files import json_lines
from ftmix.mixture import Mixture, check_mixture

GIB = 2**30

# litgpt names LoRA targets after its own modules; ftmix's after transformers' (Llama layout).
LITGPT_TARGETS = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "attn out-proj": "o_proj",
                  "projection": "o_proj", "output_proj": "o_proj", "q": "q_proj", "v": "v_proj"}
MLP = ("gate_proj", "up_proj", "down_proj")

# Architectures ftmix's analytic model covers, by a word in the model's name.
ARCHITECTURES = (("falcon", "falcon"), ("phi-3", "phi3"), ("phi-2", "phi"), ("phi-1_5", "phi"),
                 ("tinyllama", "llama"), ("codellama", "llama"), ("llama", "llama"), ("mistral", "mistral"),
                 ("ministral", "mistral"), ("qwen2", "qwen2"), ("gemma-2-", "gemma2"), ("gemma", "gemma"))

GPUS = (("a100-sxm4-40gb", "a100-40gb"), ("a100 40gb", "a100-40gb"), ("a100 80gb", "a100-80gb"),
        ("a100-sxm4-80gb", "a100-80gb"), ("a10g", "a10g-24gb"), ("rtx 4090", "rtx4090-24gb"), ("t4", "t4-16gb"),
        ("h100", "h100-80gb"), ("l40s", "l40s-48gb"), ("l4 ", "l4-24gb"))


@dataclass
class PublishedRow:
    """A row ftmix can represent: what to predict and what was measured."""

    id: str
    source: str
    trust: str
    row_type: str
    spec: ModelSpec
    mixture: Mixture
    gpu: GpuSpec | None
    memory_what: str | None = None  # "allocated" | "reserved" | "device_total"
    memory_bytes: float | None = None
    speed: tuple[str, float] | None = None  # ("tokens_per_s" | "s_per_micro_step", value)
    budget_bytes: float | None = None  # a longest-context row: the memory budget per GPU
    max_seq_len: int | None = None  # ... and the longest context the source fitted in it
    effective_batch: int = 1
    grad_accum: int | None = None  # micro steps per optimizer step, where the row states it
    notes: list[str] = field(default_factory=list)
    hf_config: dict = field(default_factory=dict)  # the config.json the spec was built from


class NotRepresented(Exception):
    """The row uses something ftmix does not model; the message names it."""


def load_rows(path: str | Path) -> list[dict]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FtmixError(f"cannot read {path}: {exc}") from None
    rows = json_lines(text, path)
    for n, row in enumerate(rows, 1):
        if "id" not in row:
            raise FtmixError(f"{path}: row {n} has no id")
    return rows


def _text(value) -> str:
    return "" if value is None else str(value).lower()


def represent(row: dict) -> PublishedRow:
    """The row as ftmix inputs, or NotRepresented naming the missing feature."""
    rtype = row.get("row_type")
    method = _text(row.get("method"))
    quantize = _quantize(row)
    if method == "qlora":
        method = "lora"
    if method not in ("lora", "full"):
        raise NotRepresented(f"method {row.get('method')!r}")
    if method == "lora":
        _plain_lora(row)
    engine = _text(row.get("engine"))
    if "thunder" in engine or "thunder" in _text(row.get("special_kernels")):
        raise NotRepresented("lightning-thunder")
    kernels = _text(row.get("special_kernels"))
    if any(k in kernels for k in ("liger", "unsloth", "cut cross", "chunked cross")) or "unsloth" in _text(row.get("attention")):
        raise NotRepresented("fused kernels (Liger, Unsloth, cut/chunked cross-entropy)")
    optimizer = _text(row.get("optimizer"))
    if "optimizer_in_bwd" in optimizer:
        raise NotRepresented("optimizer step fused into the backward")
    if "offload" in _text(row.get("gradient_checkpointing")):
        raise NotRepresented("activation offload to CPU")
    spec, hf_config = _spec(row)
    mixture, notes = _mixture(row, spec, engine, method)
    mixture = mixture.with_(quantize=quantize, optimizer=_optimizer(optimizer))
    if quantize.startswith("bnb.nf4") and "nf4" not in _text(row.get("quantization")):
        notes.append("bitsandbytes 4-bit, type not stated: NF4 and FP4 hold the same bytes")
    gpu = _gpu(row)
    check_mixture(mixture, spec, None)
    out = PublishedRow(id=row["id"], source=row.get("source_group", "?"), trust=row.get("trust", "low"),
                       row_type=rtype, spec=spec, mixture=mixture, gpu=gpu, notes=notes,
                       effective_batch=int(row.get("global_batch") or mixture.micro_batch * mixture.world),
                       grad_accum=accumulation(row.get("grad_accum")), hf_config=hf_config)
    if rtype == "max_context_at_budget":
        _budget(row, out)
        return out
    _memory(row, out)
    _speed(row, out)
    if out.memory_bytes is None and out.speed is None and rtype != "oom":
        raise NotRepresented("no memory or per-step speed figure")
    return out


def _quantize(row: dict) -> str:
    """The row's bitsandbytes scheme; torchao's NF4 (torchtune) and an unstated scheme stay out."""
    text = _text(row.get("quantization"))
    if not text or text == "none":
        return "none"
    if "torchao" in text:
        raise NotRepresented("torchao NF4 (torchtune's own quantized linear; ftmix models bitsandbytes')")
    if "int8" in text or "8-bit" in text or "load_in_8bit" in text:
        return "bnb.int8"
    if "bitsandbytes" not in text and "bnb" not in text:
        raise NotRepresented(f"quantization {row.get('quantization')!r}")
    if "4-bit" not in text and "4bit" not in text and "nf4" not in text and "fp4" not in text:
        raise NotRepresented("quantization scheme not stated")
    kind = "fp4" if "fp4" in text else "nf4"  # bitsandbytes 4-bit without a type: the bytes are the same
    double = "double quant" in text or "nested" in text or "axolotl" in text  # axolotl's qlora default
    return f"bnb.{kind}{'-dq' if double else ''}"


def _optimizer(text: str) -> str:
    """HF's optimizer name for the row's (litgpt's ``PagedAdamW`` is the 32-bit one)."""
    if "torchao" in text or "adamw_torch_8bit" in text:
        raise NotRepresented("torchao 8-bit AdamW")
    paged = "paged" in text
    eight = "8bit" in text or "8-bit" in text
    if paged:
        return "paged_adamw_8bit" if eight else "paged_adamw_32bit"
    return "adamw_8bit" if eight else "adamw_torch"


def model_states_floor(row: PublishedRow) -> float:
    """Bytes of parameters, gradients and optimizer states that the row's setup holds at once at its
    optimizer step: a measured figure below them measured another setup than the row states."""
    states = fsdp2_states(row.spec, row.mixture) if row.mixture.fsdp2 else model_states(row.spec, row.mixture)
    return states.parameters + states.gradients + states.optimizer


def accumulation(value) -> int | None:
    """Micro steps per optimizer step as a record states them; None where it does not say (or says
    nonsense): the estimate then counts the gradients as kept between micro steps."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


# LoRA variants that train other tensors than PEFT's plain LoRA (and so hold other bytes): DoRA adds a
# magnitude vector per layer and a weight norm in every forward, LoRA-FA freezes A and trains B
# only, BD-LoRA makes the factors block-diagonal. rsLoRA (a scale) and initialisations (PiSSA,
# MiCA) train the same tensors and stay represented.
LORA_VARIANTS = (("dora", "DoRA (weight-decomposed LoRA)"), ("lora-fa", "LoRA-FA (A frozen, B trained)"),
                 ("bd-lora", "BD-LoRA (block-diagonal factors)"))


def _plain_lora(row: dict) -> None:
    said = f"{_text(row.get('method_detail'))} {_text(row.get('optimizer'))}"
    for key, name in LORA_VARIANTS:
        if key == "dora":
            continue  # DoRA is a mixture switch (``dora``), read in _mixture
        if key in said:
            raise NotRepresented(f"LoRA variant {name}")


def _spec(row: dict) -> tuple[ModelSpec, dict]:
    shape = row.get("model_shape") or {}
    name = _text(row.get("model"))
    mtype = next((t for key, t in ARCHITECTURES if key in name), None)
    if mtype is None:
        raise NotRepresented(f"architecture of {row.get('model')} is not modelled")
    keys = ("layers", "hidden", "heads", "vocab")
    if any(shape.get(k) is None for k in keys):
        raise NotRepresented("no model shape")
    cfg = {"model_type": mtype, "num_hidden_layers": shape["layers"], "hidden_size": shape["hidden"],
           "num_attention_heads": shape["heads"], "vocab_size": shape["vocab"],
           "max_position_embeddings": 1 << 20}
    if shape.get("kv_heads"):
        cfg["num_key_value_heads" if mtype != "falcon" else "num_kv_heads"] = shape["kv_heads"]
    if shape.get("intermediate"):
        cfg["intermediate_size"] = shape["intermediate"]
    if mtype == "falcon":
        big = shape.get("kv_heads") not in (None, 1)
        cfg.update(new_decoder_architecture=big, multi_query=not big, parallel_attn=True, bias=False)
    if mtype == "phi":
        cfg["partial_rotary_factor"] = 0.5
    if "llama-3.2" in name or "gemma" in name:
        cfg["tie_word_embeddings"] = True
    if shape.get("head_dim"):
        cfg["head_dim"] = shape["head_dim"]
    try:
        return spec_from_hf_config(cfg, name=row.get("model", "?")), cfg
    except FtmixError as exc:
        raise NotRepresented(f"model shape: {exc}") from None


def _precision(row: dict, method: str) -> str:
    p = _text(row.get("precision"))
    if method == "lora" and ("fp32 weights" in p or "bf16-mixed" in p):
        # litgpt's bf16-mixed keeps the frozen base in fp32 too; ftmix's LoRA base is 16-bit
        raise NotRepresented("LoRA over an fp32 base (litgpt bf16-mixed)")
    if p.startswith("fp16") and "t4" not in _text(row.get("gpu")):
        return "fp16"
    if "bf16-true" in p or "pure bf16" in p or "no fp32 master" in p:
        return "bf16-true"
    if "mixed" in p or "autocast" in p and "use_amp=false" not in p:
        return "bf16"
    if method == "full" and ("use_amp=false" in p or "model loaded in bf16" in p or "model dtype bfloat16" in p):
        return "bf16-true"  # a bf16-loaded model trained without autocast: AdamW states in bf16
    if method == "full" and p in ("", "none", "not stated", "bf16", "bf16 auto"):
        raise NotRepresented("full fine-tuning precision not stated (mixed or pure bf16)")
    return "bf16"


def _targets(row: dict, spec: ModelSpec) -> str:
    raw = row.get("lora_targets")
    if not raw:
        return "q_proj,v_proj"  # PEFT's and litgpt's default
    names: list[str] = []
    for t in raw:
        t = _text(t)
        if t.startswith("lm_head") or "embed" in t or "norm" in t or t.startswith("head"):
            raise NotRepresented("LoRA on the output head, embeddings or norms")
        if "all" in t and "linear" in t:
            return "all-linear"
        if t.startswith("mlp"):
            names += [n for n in MLP if n in spec.linear_names]
        elif t in LITGPT_TARGETS:
            names.append(LITGPT_TARGETS[t])
        else:
            names.append(t)
    if spec.model_type == "falcon":
        return "query_key_value"  # litgpt's query/value live in Falcon's fused layer
    return ",".join(dict.fromkeys(names))


def _mixture(row: dict, spec: ModelSpec, engine: str, method: str) -> tuple[Mixture, list[str]]:
    notes = []
    zero, offload, sharding = 0, "none", "deepspeed"
    m = re.search(r"(?:zero|stage)\D{0,10}([0-3])", engine)
    if "fsdp" in engine:
        sharding, zero = "fsdp2", 2 if "shard_grad_op" in engine else 3
        if "offload" in engine and not any(x in engine for x in ("no offload", "cpu_offload=false",
                                                                 "cpu_offload false")):
            offload = "all"
        if "fsdp2" not in engine:
            notes.append("FSDP1 (flat parameters per wrapped block) modelled as FSDP2: the same sharded states "
                         "and one gathered block at a time, other buffers")
    elif "deepspeed" in engine:
        if not m:
            raise NotRepresented("DeepSpeed stage not stated")
        zero = int(m.group(1))
        if "offload" in engine and "no offload" not in engine:
            offload = "all" if "param" in engine and zero == 3 else "optimizer"
    gpus = int(row.get("n_gpus") or 1)
    nodes = int(row.get("n_nodes") or 1)
    if gpus > 1 and zero == 0 and "ddp" not in engine:
        raise NotRepresented(f"{gpus} GPUs without a named data-parallel engine")
    attn = _text(row.get("attention"))
    kernel = "fa2" if ("fa2" in attn or "flash" in attn) else "eager" if attn.startswith("eager") else "sdpa"
    if "fa3" in attn:
        notes.append("FA3 modelled as FA2")
    gc_text = _text(row.get("gradient_checkpointing"))
    gc = gc_text.startswith("yes")
    if gc_text.startswith("unknown"):
        raise NotRepresented("gradient checkpointing unknown")
    seq = row.get("seq_len")
    if not seq:
        raise NotRepresented("no sequence length")
    precision = _precision(row, method)
    if precision == "bf16-true" and zero and sharding != "fsdp2":
        precision = "bf16"  # DeepSpeed keeps fp32 masters; FSDP2 runs pure 16-bit as asked
    lora = int(row.get("lora_r") or 0) if method == "lora" else 0
    if method == "lora" and not lora:
        raise NotRepresented("LoRA rank not stated")
    targets = _targets(row, spec) if lora else "q_proj,v_proj"
    dora = "dora" in _text(row.get("method_detail"))
    alpha = row.get("lora_alpha") or 16
    mixture = Mixture(zero=zero, offload=offload, lora=lora, lora_alpha=max(1, int(alpha)), lora_targets=targets, gc=gc,
                      attn=kernel, precision=precision, micro_batch=int(row.get("micro_batch") or 1), seq_len=int(seq),
                      gpus=gpus, nodes=nodes, dora=dora, sharding=sharding)
    if "pad" in _text(row.get("seq_len_note")) or "longest" in _text(row.get("seq_len_note")):
        notes.append("padded to the longest sample: predicted for a full-length batch")
    return mixture, notes


def _budget(row: dict, out: PublishedRow) -> None:
    """A longest-context row: the memory budget per GPU (a card size: GiB) and the context fitted."""
    measured = row.get("measured") or {}
    peak = measured.get("peak_memory") or {}
    if peak.get("value") is None or "gb" not in _text(peak.get("unit")) or not measured.get("max_seq_len_fitting"):
        raise NotRepresented("longest-context row without a budget in GB or a context")
    out.budget_bytes = float(peak["value"]) * GIB
    out.max_seq_len = int(measured["max_seq_len_fitting"])


def _gpu(row: dict) -> GpuSpec | None:
    text = _text(row.get("gpu")) + " "
    for key, name in GPUS:
        if key in text:
            return load_gpu(name)
    return None


def _memory(row: dict, out: PublishedRow) -> None:
    peak = (row.get("measured") or {}).get("peak_memory") or {}
    value, unit = peak.get("value"), _text(peak.get("unit"))
    if value is None or "budget" in unit or not _text(peak.get("scope") or "per_gpu").startswith("per_gpu"):
        return
    what = _text(peak.get("what"))
    if "active" in what:
        return  # torchtune's "peak active" has no ftmix counterpart yet
    scale = {"gb": 1e9, "gib": GIB, "mb": 2**20, "mb (mib)": 2**20, "mb (mib: bytes/2^20)": 2**20,
             "bytes": 1}.get(unit)
    if scale is None:
        return
    if unit == "gb" and "/1e9" not in what and "litgpt" not in out.source and "torchtune" not in out.source:
        scale = GIB  # "GB" is 1e9 in litgpt and early torchtune, GiB elsewhere (data README)
    if "allocated" in what or "tracemalloc" in what:
        out.memory_what = "allocated"
    elif "reserved" in what:
        out.memory_what = "reserved"
    else:
        out.memory_what = "device_total"
    if "minus" in what and "~0" not in what:
        return  # a difference of counters, not a peak (MetaMathQA subtracts ~0: its figure is the peak)
    try:
        out.memory_bytes = float(value) * scale
    except (TypeError, ValueError):
        raise NotRepresented(f"memory figure {value!r} is not one number") from None


def _speed(row: dict, out: PublishedRow) -> None:
    speed = (row.get("measured") or {}).get("speed") or {}
    value, unit = speed.get("value"), _text(speed.get("unit"))
    if not value:
        return
    note = _text(row.get("seq_len_note"))
    if unit in ("min per 1000 iterations",) or unit.startswith("ms/iter"):
        if "padded per batch" in note or "longest" in note:
            # the time of the average variable-length micro batch, whose length no row states: not the
            # full-length batch ftmix predicts (a rate, tokens/s, stays comparable and is kept)
            out.notes.append("speed not compared: time per iteration over variable-length batches")
            return
    if unit == "min per 1000 iterations":
        out.speed = ("s_per_micro_step", float(value) * 60 / 1000)
    elif unit.startswith("ms/iter"):
        out.speed = ("s_per_micro_step", float(value) / 1000)
    elif unit in ("tokens/s", "tokens/gpu/s (tgs)") and (
            "num_input_tokens_seen" in _text(speed.get("what"))
            or _text(row.get("source_group")).startswith("liger-kernel/examples")):
        # HF Trainer sums num_input_tokens_seen over the ranks (``accelerator.gather(...).sum()``,
        # transformers >= 4.36): a callback's tokens/s from it is the job's, not one GPU's. Liger's
        # HF examples (their charts too) all report its EfficiencyCallback's tokens/s, made so
        gpus = int(row.get("n_gpus") or 1) * int(row.get("n_nodes") or 1)
        out.speed = ("tokens_per_s_per_gpu", float(value) / gpus)
        if gpus > 1:
            out.notes.append(f"speed: HF Trainer's num_input_tokens_seen counts every rank's tokens; / {gpus} GPUs")
    elif unit in ("tokens/s", "tokens/gpu/s (tgs)"):
        out.speed = ("tokens_per_s_per_gpu", float(value))
