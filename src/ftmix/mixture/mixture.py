"""The Mixture: ZeRO stage, offload, LoRA, gradient checkpointing, attention kernel, precision, shape.

Defaults are the study's recommended setup ("A Study of Optimizations for Fine-Tuning Large
Language Models", Singh et al., Microsoft, 2024: "Experimental setup" and finding 1): ZeRO-2 with optimizer-state offload, LoRA r=64 alpha=32 on q_proj,v_proj, no GC,
FlashAttention-2 where the GPU supports it (else PyTorch SDPA), bf16 where supported (else fp16),
micro batch 1, sequence length 256, one GPU on one node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from ftmix.errors import FtmixError

if TYPE_CHECKING:  # the catalog's types, for annotations only: the mixture imports no other room
    from ftmix.catalog import GpuSpec, ModelSpec

OFFLOADS = ("none", "optimizer", "all")
ATTN_KERNELS = ("eager", "sdpa", "fa2")
# "bf16"/"fp16": mixed precision (16-bit compute, fp32 master weights and Adam states: DeepSpeed,
# HF Trainer autocast). "bf16-true"/"fp16-true": pure 16-bit training as litgpt names it
# (Lightning's ``precision="bf16-true"``; torchtune's ``dtype: bf16``): weights, gradients and AdamW
# states all in 16 bits, no master copy.
PRECISIONS = ("fp16", "bf16", "fp32", "bf16-true", "fp16-true")
ALL_LINEAR = "all-linear"
# base weights quantized at load, as litgpt's ``--quantize`` names them (bitsandbytes: NF4/FP4 in
# 64-element blocks, "-dq" double quantization of their scales; LLM.int8 with row scales)
QUANTIZE = ("none", "bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8")
# optimizers as HF TrainingArguments' ``optim`` names them (8-bit and paged ones: bitsandbytes)
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
# who shards the model states over the GPUs under a stage: DeepSpeed ZeRO, or torch FSDP2
# (``fully_shard``: --zero 3 is its FULL_SHARD, --zero 2 its SHARD_GRAD_OP)
SHARDINGS = ("deepspeed", "fsdp2")

def _declare(default, flag: str, metavar: str | None, help: str, default_text: str | None = None,
             per_gpu: bool = False, check: tuple | None = None):
    """One mixture key: its default, the CLI flag and help that ``ftmix.cli.options`` makes from
    it, the train config key of the same name (``ftmix.job.config``), and its own check
    (``check_mixture``): ``("choices", values)``, ``("whole", least[, what])``, ``("number",
    least)`` (above ``least``), or ``("bool",)``. ``per_gpu``: left unset (None), the key is resolved for
    the GPU by ``mixture_from_flags``."""
    text = default_text or f"Default {str(default).lower() if isinstance(default, bool) else default}."
    return field(default=default, metadata={"flag": flag, "metavar": metavar, "help": f"{help} {text}",
                                            "per_gpu": per_gpu, "check": check})


@dataclass(frozen=True)
class Mixture:
    """What the user may switch on; every key declared here once, with its default, flag and help."""

    zero: int = _declare(2, "--zero", "0-3", "DeepSpeed ZeRO stage 0-3 (0 = no DeepSpeed: one GPU, or torch DDP over "
                         "several).", check=("choices", (0, 1, 2, 3)))
    offload: str = _declare("optimizer", "--offload", "none|optimizer|all",
                            "What DeepSpeed moves to CPU RAM: nothing, the optimizer states, or the optimizer states and "
                            "parameters (stage 3).", "Default optimizer with a ZeRO stage, none without.",
                            check=("choices", OFFLOADS))
    lora: int = _declare(64, "--lora", "RANK", "LoRA rank; 0 = full fine-tuning.", check=("whole", 0, "a rank >= 0 (0 = full fine-tuning)"))
    # PEFT's LoraConfig takes any positive number
    lora_alpha: float = _declare(32, "--lora-alpha", "ALPHA", "LoRA alpha (scaling = alpha / rank).",
                                 check=("number", 0))
    lora_targets: str = _declare("q_proj,v_proj", "--lora-targets", "NAMES",
                                 "Comma list of the model's linear module names, or all-linear.",
                                 "Default q_proj,v_proj (a fused qkv where the model has one).")
    gc: bool = _declare(False, "--gc/--no-gc", None, "Gradient checkpointing (non-reentrant).", "Default off.",
                        check=("bool",))
    attn: str = _declare("sdpa", "--attn", "eager|sdpa|fa2",
                         "Attention kernel: eager (plain PyTorch, stores the s x s scores), sdpa (PyTorch "
                         "scaled_dot_product_attention), fa2 (FlashAttention-2, Ampere or newer).",
                         "Default fa2 where the GPU supports it, else sdpa.", per_gpu=True,
                         check=("choices", ATTN_KERNELS))
    precision: str = _declare("bf16", "--precision", "NAME",
                              "bf16 | fp16 (mixed: fp32 master weights) | bf16-true | fp16-true (pure 16-bit, --zero 0) "
                              "| fp32.", "Default bf16 where the GPU supports it, else fp16; train on CPU: bf16 (fp32 "
                              "with --no-twin).", per_gpu=True, check=("choices", PRECISIONS))
    micro_batch: int = _declare(1, "--micro-batch", "N", "Samples per GPU per micro step.", check=("whole", 1))
    seq_len: int = _declare(256, "--seq-len", "TOKENS", "Sequence length in tokens.", check=("whole", 1))
    gpus: int = _declare(1, "--gpus", "N", "GPUs per node.", check=("whole", 1))
    nodes: int = _declare(1, "--nodes", "N", "Nodes.", check=("whole", 1))
    # packed sequences (every row s tokens, no padding mask) or padded ones (the study's way: each
    # example padded to s; with a mask, SDPA cannot use grouped-query K/V natively)
    packing: bool = _declare(False, "--packing/--padding", None,
                             "Packed rows (no padding mask) or rows padded to --seq-len.", "Default padding.",
                             check=("bool",))
    quantize: str = _declare("none", "--quantize", "SCHEME",
                             "none | bnb.nf4 | bnb.nf4-dq | bnb.fp4 | bnb.fp4-dq | bnb.int8: base weights quantized by "
                             "bitsandbytes at load (QLoRA with --lora): 4-bit NF4/FP4, -dq "
                             "double-quantized scales, or 8-bit; with PEFT's prepare_model_for_kbit_training. A GPTQ/AWQ "
                             "checkpoint is read from its config.json instead.", check=("choices", QUANTIZE))
    optimizer: str = _declare("adamw_torch", "--optimizer", "NAME",
                              "adamw_torch | adamw_8bit | paged_adamw_8bit | paged_adamw_32bit (HF's names; 8-bit and "
                              "paged: bitsandbytes).", check=("choices", OPTIMIZERS))
    modules_to_save: str = _declare("", "--modules-to-save", "NAMES",
                                    "PEFT modules_to_save: comma list of embed_tokens and/or lm_head, trained as full "
                                    "copies beside the LoRA adapters (\"LoRA (emb)\").", "Default none.")
    dora: bool = _declare(False, "--dora/--no-dora", None, "DoRA (PEFT use_dora): LoRA with a trained magnitude "
                          "vector per wrapped layer.", "Default off.", check=("bool",))
    sharding: str = _declare("deepspeed", "--sharding", "deepspeed|fsdp2",
                             "Who shards the model states over the GPUs: DeepSpeed ZeRO, or torch FSDP2 (fully_shard per "
                             "decoder layer: --zero 3 is FULL_SHARD, --zero 2 SHARD_GRAD_OP, --offload all its "
                             "CPUOffloadPolicy; pure 16-bit allowed).",
                             "Default deepspeed; with fsdp2, --zero 3 and no offload unless given.",
                             check=("choices", SHARDINGS))

    @property
    def bits(self) -> int:
        """Bits per base weight the quantization stores: 4, 8, or 16 (none)."""
        return 4 if self.quantize.startswith(("bnb.nf4", "bnb.fp4")) else 8 if self.quantize == "bnb.int8" else 16

    @property
    def double_quant(self) -> bool:
        return self.quantize.endswith("-dq")

    @property
    def saved_modules(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.modules_to_save.split(",") if x.strip())

    @property
    def pure16(self) -> bool:
        """Pure 16-bit training: no fp32 master copy anywhere."""
        return self.precision.endswith("-true")

    @property
    def element_bytes(self) -> int:
        """Bytes per element of weights and activations: 4 in fp32, else 2."""
        return 4 if self.precision == "fp32" else 2

    @property
    def world(self) -> int:
        """Data-parallel ranks N_d = nodes x GPUs per node."""
        return self.gpus * self.nodes

    @property
    def tokens(self) -> int:
        """Tokens per micro step per GPU, s x b."""
        return self.seq_len * self.micro_batch

    @property
    def fsdp2(self) -> bool:
        return self.sharding == "fsdp2"

    @property
    def engine(self) -> str:
        """ZeRO-N; FSDP2 and its strategy; DDP for plain data parallel over several GPUs; "1 GPU"
        for one process."""
        if self.fsdp2:
            return "FSDP2 " + ("FULL_SHARD" if self.zero == 3 else "SHARD_GRAD_OP")
        return f"ZeRO-{self.zero}" if self.zero else ("DDP" if self.world > 1 else "1 GPU")

    @property
    def label(self) -> str:
        parts = [self.engine]
        if self.offload == "optimizer":
            parts.append("offload opt")
        elif self.offload == "all":
            parts.append("offload all")
        adapter = ("QLoRA" if self.bits == 4 else "LoRA") + (" DoRA" if self.dora else "")
        parts.append(f"{adapter} r{self.lora}" if self.lora else "full FT")
        if self.quantize != "none":
            parts.append(self.quantize)
        if self.saved_modules:
            parts.append("+" + ",".join(self.saved_modules))
        if self.optimizer != "adamw_torch":
            parts.append(self.optimizer)
        if self.gc:
            parts.append("GC")
        parts.append({"fa2": "FA2", "sdpa": "SDPA", "eager": "eager"}[self.attn])
        return " + ".join(parts)

    @property
    def short_label(self) -> str:
        """A matrix cell: "ZeRO-3 LoRA GC" (SDPA, the neutral kernel, left out); FSDP2's
        FULL_SHARD "FSDP2", its SHARD_GRAD_OP "FSDP2-SGO"."""
        parts = [("FSDP2" if self.zero == 3 else "FSDP2-SGO") if self.fsdp2 else self.engine]
        parts += {"optimizer": ["off-opt"], "all": ["off-all"]}.get(self.offload, [])
        parts.append(("QLoRA" if self.bits == 4 else "LoRA8" if self.bits == 8 else "LoRA") if self.lora else "full")
        parts += ["GC"] if self.gc else []
        parts += {"fa2": ["FA2"], "eager": ["eager"]}.get(self.attn, [])
        return " ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> Mixture:
        return replace(self, **changes)


KEYS = tuple(f.name for f in fields(Mixture))
# what a key left unset (None) becomes: its declared default, or resolved for the GPU
DEFAULTS = {f.name: None if f.metadata["per_gpu"] else f.default for f in fields(Mixture)}


def mixture_from_flags(gpu: GpuSpec | None = None, **flags) -> Mixture:
    """Fill the flags the user left out (None) with the study's defaults, resolved for the GPU.

    attn: fa2 where the GPU supports FlashAttention-2, else sdpa; precision: bf16 where supported,
    else fp16. With no GPU named, sdpa and bf16. Offload defaults to optimizer with a ZeRO stage and
    to none with --zero 0.
    """
    unknown = set(flags) - set(DEFAULTS)
    if unknown:
        raise FtmixError(f"unknown mixture keys: {', '.join(sorted(unknown))}")
    values = {k: (DEFAULTS[k] if flags.get(k) is None else flags[k]) for k in DEFAULTS}
    for key in ("offload", "attn", "precision", "quantize", "optimizer", "sharding"):  # names are case-insensitive, as GPU and model names are
        if isinstance(values[key], str):
            values[key] = values[key].strip().lower()
    if values["sharding"] == "fsdp2" and flags.get("zero") is None:
        values["zero"] = 3  # FSDP's own default, FULL_SHARD (torchtune, accelerate, axolotl)
    if flags.get("offload") is None and (values["zero"] == 0 or values["sharding"] == "fsdp2"):
        values["offload"] = "none"  # offload is the default with a ZeRO stage; plain DDP and FSDP2 have none
    if values["attn"] is None:
        values["attn"] = "fa2" if (gpu is not None and gpu.flash_attention_2) else "sdpa"
    if values["precision"] is None:
        values["precision"] = "bf16" if (gpu is None or gpu.bf16) else "fp16"
    for key in ("lora_targets", "modules_to_save"):
        if isinstance(values[key], (list, tuple)):
            values[key] = ",".join(values[key])
    return Mixture(**values)


MAX_GPUS_PER_NODE = 16  # the largest single servers (HGX/DGX: 8; some PCIe servers: 10-16)
MIN_SEQ_LEN = 2


def check_mixture(m: Mixture, model: ModelSpec | None = None, gpu: GpuSpec | None = None) -> Mixture:
    """Reject impossible mixtures with one clear FtmixError; return the mixture unchanged."""
    for declared in fields(Mixture):
        _check_key(declared.name, getattr(m, declared.name), declared.metadata["check"])
    if m.gpus > MAX_GPUS_PER_NODE:
        raise FtmixError(f"gpus {m.gpus} per node: a node holds at most {MAX_GPUS_PER_NODE} GPUs; give the rest as "
                         f"--nodes (for example --gpus 8 --nodes {math.ceil(m.gpus / 8)})")
    if m.seq_len < MIN_SEQ_LEN:
        raise FtmixError(f"seq-len {m.seq_len} is too short to train on: a sequence needs at least {MIN_SEQ_LEN} "
                         "tokens (each predicts the next)")
    if m.fsdp2:
        _check_fsdp2(m)
    if m.offload != "none" and m.zero < 1:
        raise FtmixError(f"offload {m.offload} needs a ZeRO stage >= 1 (got --zero 0)")
    if m.pure16 and m.zero >= 1 and not m.fsdp2:
        raise FtmixError(f"--precision {m.precision} (pure 16-bit, no master copy) needs --zero 0: DeepSpeed "
                         "always keeps fp32 master weights; use --precision bf16 for its mixed precision")
    if m.offload == "all" and m.zero != 3:
        raise FtmixError(f"parameter offload (--offload all) needs ZeRO stage 3 (got --zero {m.zero})")
    _check_quantized(m)
    if gpu is not None:
        if m.attn == "fa2" and not gpu.flash_attention_2:
            raise FtmixError(f"FlashAttention-2 needs an Ampere or newer GPU; {gpu.name} is {gpu.architecture}")
        if m.precision.startswith("bf16") and not gpu.bf16:
            raise FtmixError(f"bf16 is not supported on {gpu.name} ({gpu.architecture}); use --precision fp16")
    if model is not None:
        if model.quantization and m.quantize != "none":
            raise FtmixError(f"{model.name} is a {model.quantization[0].upper()}-quantized checkpoint, already at "
                             f"{model.quantization[1]} bits: drop --quantize {m.quantize}")
        if model.quantization and m.lora == 0:
            raise FtmixError(f"{model.name} is a {model.quantization[0].upper()}-quantized checkpoint: its weights "
                             "cannot be trained, only LoRA adapters beside them (--lora RANK)")
        if m.seq_len > model.max_positions:
            raise FtmixError(f"seq-len {m.seq_len} exceeds {model.name}'s {model.max_positions} positions")
        if m.lora:
            resolve_targets(m, model)
            if m.saved_modules:
                resolve_saved_modules(m, model)
            if m.lora > model.hidden:
                raise FtmixError(f"LoRA rank {m.lora} exceeds {model.name}'s hidden size {model.hidden}: the update "
                                 "cannot have that rank, only that many parameters")
    return m


SAVABLE = ("embed_tokens", "lm_head")


def _check_fsdp2(m: Mixture) -> None:
    """What torch's ``fully_shard`` cannot run, said before anything loads."""
    if m.zero not in (2, 3):
        stage = "ZeRO-1 (optimizer states only) is DeepSpeed's" if m.zero == 1 else "--zero 0 shards nothing"
        raise FtmixError(f"--sharding fsdp2 shards as FULL_SHARD (--zero 3) or SHARD_GRAD_OP (--zero 2); {stage}")
    if m.offload == "optimizer":
        raise FtmixError("--sharding fsdp2 with --offload optimizer: FSDP2's CPUOffloadPolicy moves the parameters, "
                         "gradients and optimizer states together (--offload all, with --zero 3) or nothing")
    if m.quantize == "bnb.int8":
        raise FtmixError("--sharding fsdp2 with --quantize bnb.int8: FSDP2 shards floating tensors only, and LLM.int8's "
                         "weights (Int8Params) are int8; use a 4-bit scheme (its codes in 16-bit storage shard)")
    if m.optimizer != "adamw_torch":
        raise FtmixError(f"--sharding fsdp2 with --optimizer {m.optimizer}: FSDP2 steps torch's AdamW over its "
                         "DTensor shards (bitsandbytes' optimizers take plain tensors); use adamw_torch")


def _check_quantized(m: Mixture) -> None:
    """What bitsandbytes, PEFT and the engines refuse, said before anything loads."""
    if m.quantize != "none" and m.lora == 0:
        raise FtmixError(f"--quantize {m.quantize} needs LoRA (--lora RANK): quantized base weights cannot be trained, "
                         "only adapters beside them (QLoRA)")
    if m.quantize != "none" and m.precision == "fp32":
        raise FtmixError(f"--quantize {m.quantize} computes in 16 bits: use --precision bf16 (PEFT's QLoRA: fp32 "
                         "adapters and norms under autocast) or bf16-true (litgpt's: everything else in bf16)")
    if m.quantize != "none" and m.offload == "all" and not m.fsdp2:
        raise FtmixError(f"--quantize {m.quantize} with --offload all: ZeRO-3's parameter offload moves whole 16-bit "
                         "parameters to the host and cannot hold bitsandbytes' quantized ones; use --offload optimizer "
                         "(the adapters' states) or none")
    if m.quantize == "bnb.int8" and m.zero == 3:
        raise FtmixError("--quantize bnb.int8 with --zero 3: int8 weights (Int8Params) cannot be partitioned; use a "
                         "4-bit scheme with a 16-bit quant storage, or --zero 2")
    if m.optimizer != "adamw_torch" and m.offload != "none":
        raise FtmixError(f"--optimizer {m.optimizer} with --offload {m.offload}: DeepSpeed's offload steps with its own "
                         "CPU Adam; use --optimizer adamw_torch or --offload none")
    if m.dora and m.lora == 0:
        raise FtmixError("--dora needs LoRA (--lora RANK)")
    if m.saved_modules and m.lora == 0:
        raise FtmixError("--modules-to-save needs LoRA (--lora RANK): full fine-tuning trains every module already")
    unknown = [x for x in m.saved_modules if x not in SAVABLE]
    if unknown:
        raise FtmixError(f"modules-to-save {', '.join(unknown)}: ftmix models {' and '.join(SAVABLE)} (the input "
                         "embedding and the output head)")


def resolve_saved_modules(m: Mixture, model: ModelSpec) -> tuple[str, ...]:
    """The modules PEFT trains whole; a tied head is the embedding (one copy, PEFT ties them)."""
    saved = set(m.saved_modules)
    if model.tied_embeddings and saved:
        return ("embed_tokens",)
    return tuple(x for x in SAVABLE if x in saved)


def _check_key(key: str, value, check: tuple | None) -> None:
    """One key's own check, as declared (``_declare``): one clear line naming the key."""
    name = key.replace("_", "-")
    kind = check[0] if check else None
    if kind == "choices" and (isinstance(value, bool) or value not in check[1]):
        raise FtmixError(f"{name} must be one of {', '.join(map(str, check[1]))}, got {value!r}")
    if kind == "whole" and (isinstance(value, bool) or not isinstance(value, int) or value < check[1]):
        what = check[2] if len(check) > 2 else "a positive integer" if check[1] == 1 else f"a whole number >= {check[1]}"
        raise FtmixError(f"{name} must be {what}, got {value!r}")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))
                             or not math.isfinite(value) or value <= check[1]):
        raise FtmixError(f"{name} must be a positive number, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise FtmixError(f"{name} must be true or false, got {value!r}")


def check_flags(flags: dict) -> None:
    """What the user gave that a mixture would silently drop: LoRA settings with full fine-tuning."""
    if flags.get("lora") == 0:
        for key in ("lora_targets", "lora_alpha"):
            if flags.get(key) is not None:
                raise FtmixError(f"--{key.replace('_', '-')} has no effect with --lora 0 (full fine-tuning); drop one")


def resolve_targets(m: Mixture, model: ModelSpec) -> tuple[str, ...]:
    """The decoder-layer linear modules LoRA wraps, as PEFT would match them.

    "all-linear" is PEFT's shorthand for every linear layer but the output head. The default
    q_proj,v_proj falls back to PEFT's default targets for models that fuse q/k/v (phi3:
    qkv_proj, falcon: query_key_value), as PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    does.
    """
    if m.lora_targets.strip().lower() == ALL_LINEAR:
        return model.linear_names
    wanted = tuple(t.strip() for t in m.lora_targets.split(",") if t.strip())
    if not wanted:
        raise FtmixError("lora-targets is empty; give module names or all-linear")
    found = tuple(n for n in model.linear_names if n in wanted)
    if not found and m.lora_targets == DEFAULTS["lora_targets"]:
        return model.peft_default_targets
    missing = [t for t in wanted if t not in model.linear_names]
    if missing:
        raise FtmixError(f"lora-targets {', '.join(missing)} name no linear layer of {model.name} "
                         f"(it has {', '.join(model.linear_names)})")
    return found


def grad_accum(effective_batch: int, micro_batch: int, world: int) -> int:
    """Micro steps per optimizer step so that every step sees exactly ``effective_batch`` samples:
    one that cannot be met (more samples per micro step than the batch, or not a multiple) is an
    error, never a silently larger batch."""
    per_micro = micro_batch * world
    if per_micro > effective_batch:
        raise FtmixError(f"micro batch {micro_batch} x {world} GPU(s) = {per_micro} samples per micro step exceeds "
                         f"the effective batch {effective_batch}; lower --micro-batch or raise the effective batch")
    if effective_batch % per_micro:
        raise FtmixError(f"effective batch {effective_batch} is not a multiple of micro batch {micro_batch} x "
                         f"{world} GPU(s) = {per_micro}")
    return effective_batch // per_micro
