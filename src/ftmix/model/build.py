"""Load or random-init a causal LM and apply a Mixture's model-side choices for real: attention
kernel, gradient checkpointing (non-reentrant), PEFT LoRA. The ground-truth benchmark uses the same
function, so what it measures is what ``ftmix train`` runs."""

from __future__ import annotations

import importlib.util
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULT_TARGETS
from safetensors.torch import save_file
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from ftmix.catalog import spec_from_hf_config
from ftmix.catalog.models import ARCHITECTURES
from ftmix.errors import FtmixError
from ftmix.job.data import train_tokenizer
from ftmix.job.source import ModelSource
from ftmix.mixture import DEFAULTS, Mixture, resolve_targets


@dataclass
class BuiltModel:
    model: object
    config: dict  # the HF config as a dict (for ModelSpec)
    attn_implementation: str
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self):
        """The analytic model's view of the built model; None for an architecture it does not know."""
        if self.config.get("model_type", "llama") not in ARCHITECTURES:
            return None
        return spec_from_hf_config(self.config, name=self.config.get("_name_or_path") or "model")


def attention_implementation(m: Mixture, device: str) -> tuple[str, list[str]]:
    if m.attn != "fa2":
        return m.attn, []
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", []
    if device == "cuda":
        # leave SDPA only its flash backend: FlashAttention-2's algorithm inside PyTorch
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(False)
        return "sdpa", ["fa2: flash-attn is not installed; using PyTorch SDPA's flash backend (same algorithm)"]
    return "sdpa", ["fa2: no CUDA device; using PyTorch SDPA (its CPU kernel is flash-style, memory linear in s)"]


def weight_dtype(m: Mixture):
    """16-bit weights under DeepSpeed (it keeps fp32 masters), for a frozen LoRA base and in pure
    16-bit training; fp32 for mixed-precision full fine-tuning without DeepSpeed (HF Trainer
    autocast keeps fp32 masters in the model)."""
    if m.precision == "fp32" or (m.zero == 0 and m.lora == 0 and not m.pure16):
        return torch.float32
    return torch.bfloat16 if m.precision.startswith("bf16") else torch.float16


def language_model_config(config: dict) -> tuple[dict, str | None]:
    """A config AutoModelForCausalLM builds: the config itself, or a multimodal one's
    ``text_config`` (its language model alone, as the estimate counts it), said in a note."""
    mtype = config.get("model_type")
    text = config.get("text_config")
    if mtype in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not isinstance(text, dict):
        return config, None
    if text.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise FtmixError(f"model type {mtype!r} has no causal language model transformers builds, nor has its "
                         f"text_config ({text.get('model_type')!r})")
    return dict(text), (f"{mtype} is multimodal: its language model ({text['model_type']}, text_config) is built and "
                        "trained alone; the other towers are not")


def quantization_config(m: Mixture, sharded_base: bool = False):
    """transformers' ``BitsAndBytesConfig`` for the mixture's ``quantize``: NF4/FP4 in bnb's
    64-element blocks (``bnb_4bit_use_double_quant`` for "-dq"), the compute dtype set to the
    mixture's 16 bits (transformers' default would be fp32); LLM.int8 with its default threshold.
    ``sharded_base``: FSDP2 shards the base (as ZeRO-3 does)."""
    if m.quantize == "none":
        return None
    if m.bits == 8:
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if m.precision.startswith("bf16") else torch.float16
    storage = quant_storage(m, sharded_base)
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.quantize[4:7],
                                           bnb_4bit_use_double_quant=m.double_quant, bnb_4bit_compute_dtype=compute,
                                           bnb_4bit_quant_storage=storage)


def quant_storage(m: Mixture, sharded_base: bool = False):
    """The dtype 4-bit codes are packed into: ZeRO-3 and FSDP shard only floating parameters, so
    there the codes are stored in 16-bit elements, as PEFT's DeepSpeed + QLoRA and bitsandbytes'
    FSDP-QLoRA guides set ``bnb_4bit_quant_storage``; else uint8."""
    if m.zero == 3 or sharded_base:
        return torch.bfloat16 if m.precision.startswith("bf16") else torch.float16
    return torch.uint8


def build_model(source: ModelSource, m: Mixture, device: str = "cpu", lora_dropout: float = 0.0,
                aside=nullcontext, quantize_in_memory: bool = False, sharded_base: bool = False) -> BuiltModel:
    """``aside``: a context whose allocations are not the run's (the twin's ``paused``): the 16-bit
    staging of a model quantized at load, which a real job reads from disk instead.
    ``quantize_in_memory``: quantize the built model's linears where they are (``quantize_in_place``)
    instead of a save and a quantized load: the simulation's way, under fake tensors (no files).
    ``sharded_base``: FSDP2 will shard the model (the engine's ``build_options``): quantized codes
    in 16-bit storage, and no k-bit preparation, as TRL skips it for sharded QLoRA (its fp32
    upcasts would only double the sharded base: the policy gathers in 16 bits)."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    attn, notes = attention_implementation(m, device)
    dtype = weight_dtype(m)
    quant = quantization_config(m, sharded_base)
    try:
        if quant is not None and quantize_in_memory:
            model = quantize_in_place(_load_16bit(source, dtype, attn, device), m, device, sharded_base)
        elif quant is not None and source.kind != "catalog-config" and not source.gguf_file:
            model = _from_pretrained(source.ref, dtype, attn, device, quant)
        elif quant is not None:
            folder = tempfile.TemporaryDirectory(prefix="ftmix-quantize-")
            with aside():
                staged = _load_16bit(source, dtype, attn, device)
                _stage(staged, folder.name)
                del staged
            with folder:
                model = _from_pretrained(folder.name, dtype, attn, device, quant)
            # the model is the source's, not the temporary folder's (PEFT writes it as the adapter's base)
            model.config._name_or_path = model.name_or_path = source.ref
        else:
            model = _load_16bit(source, dtype, attn, device)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200]
        if "Unrecognized configuration class" in first:
            raise FtmixError(f"model {source.ref!r} is not a causal language model transformers can load "
                             "(AutoModelForCausalLM), as a multimodal model often is not: ftmix fine-tunes its language "
                             "model from a config (random_init) or a text-only checkpoint") from None
        raise FtmixError(f"cannot load model {source.ref!r}: {first}") from None
    if source.kind == "catalog-config":
        note = language_model_config(dict(source.config))[1]
        notes = notes + ([note] if note else [])
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    model.config.use_cache = False
    if quant is not None and m.bits == 8 and device == "cpu":
        gpu_int8_path()
        notes.append("bnb.int8 on CPU: bitsandbytes' GPU path (MatMul8bitLt), so the twin counts a GPU's tensors")
    if quant is not None and not m.pure16 and not sharded_base:
        # PEFT's QLoRA preparation: every 16-bit parameter to fp32 (embeddings, head, norms), the
        # base frozen; GC (inputs made to require grad) only when the mixture has it. Pure 16-bit
        # QLoRA (litgpt's bf16-true) keeps them 16-bit
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=m.gc,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        notes.append(f"{m.quantize}: the base linears quantized by bitsandbytes at load, the other parameters "
                     "upcast to fp32 (PEFT prepare_model_for_kbit_training)")
    if m.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.lora:
        targets = lora_targets(config, m)
        if m.gc:
            model.enable_input_require_grads()
        linear = linear_names(model)
        if isinstance(targets, (list, tuple, set)) and not set(targets) & linear:
            raise FtmixError(f"--lora-targets {','.join(targets)}: no such layer in {config.get('model_type')}; its "
                             f"linear layers are {', '.join(sorted(linear))} (or all-linear)")
        model = get_peft_model(model, LoraConfig(r=m.lora, lora_alpha=m.lora_alpha, target_modules=targets,
                                                 lora_dropout=lora_dropout, task_type="CAUSAL_LM", use_dora=m.dora,
                                                 modules_to_save=list(m.saved_modules) or None),
                               autocast_adapter_dtype=not m.pure16)
    return BuiltModel(model, config, attn, notes)


def _stage(model, folder: str) -> None:
    """Write the 16-bit model for a quantized load, on every rank: transformers' ``save_pretrained``
    writes on rank 0 alone once a process group is up (``should_save_on_this_rank``), and each rank
    stages its own copy."""
    model.config.save_pretrained(folder)
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        # a tied head is written once, under its first name, as save_pretrained writes it (which name
        # stays decides which weight the load initialises, and so the random draws after it)
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            tensors[name] = t.contiguous()
    save_file(tensors, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def _load_16bit(source: ModelSource, dtype, attn: str, device: str):
    if source.kind == "catalog-config":
        cfg, _ = language_model_config(dict(source.config))
        hf_cfg = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, attn_implementation=attn)
        model.config._name_or_path = source.ref
        return model
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(source.ref, dtype=dtype, attn_implementation=attn,
                                                              **kwargs)
    model.to(device)
    if source.gguf_file:
        _forget_gguf_quantizer(model)
    return model


def quantize_in_place(model, m: Mixture, device: str, sharded_base: bool = False):
    """The linears bitsandbytes quantizes, quantized where they are: transformers' own
    ``replace_with_bnb_linear`` (every ``nn.Linear`` but the output head), then each weight through
    bitsandbytes' ``quantize_4bit`` / ``int8_vectorwise_quant``, the calls ``Params4bit._quantize``
    and ``Int8Params._quantize`` make when its loader moves a weight to the device. bitsandbytes'
    ops have fake kernels, so this runs at full size under fake tensors, where a weight is a fake
    parameter carrying the same attributes (``quant_state``; ``CB``/``SCB``): torch cannot make a
    tensor subclass of a fake tensor."""
    import bitsandbytes as bnb  # lazy: only a quantized model built in memory needs it
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    old = {name: mod for name, mod in model.named_modules()
           if type(mod) is torch.nn.Linear and name.rsplit(".", 1)[-1] != "lm_head"}
    with unset_fake_temporarily():  # bitsandbytes' own code on first use (its 8-bit code book)
        bnb.functional.name2qmap.setdefault("dynamic", bnb.functional.create_dynamic_map())
        model = replace_with_bnb_linear(model, ["lm_head"], quantization_config(m, sharded_base))
    storage = quant_storage(m, sharded_base)
    for name, linear in old.items():
        new = model.get_submodule(name)
        w = linear.weight.data.contiguous().to(device)
        if m.bits == 4:
            packed, state = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=m.double_quant,
                                                         quant_type=m.quantize[4:7], quant_storage=storage)
            attrs = dict(quant_state=state, blocksize=64, compress_statistics=m.double_quant,
                         quant_type=m.quantize[4:7], quant_storage=storage, bnb_quantized=True, module=new)
            kind = bnb.nn.Params4bit
            new.quant_state = state  # as ``Params4bit._quantize`` leaves it on its module
        else:
            packed, scales, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
            attrs, kind = dict(CB=packed, SCB=scales, has_fp16_weights=False), bnb.nn.Int8Params
        if isinstance(packed, FakeTensor):
            weight = torch.nn.Parameter(packed, requires_grad=False)
            for key, value in attrs.items():
                setattr(weight, key, value)
            if m.bits == 8:
                # LLM.int8's outlier columns (threshold 6.0) are data: none under fake tensors, as the
                # analytic method leaves them out
                new.state.threshold = 0.0
        else:
            weight = kind(packed, requires_grad=False, **{k: v for k, v in attrs.items() if k not in ("CB", "SCB")})
            if m.bits == 8:
                weight.CB, weight.SCB = packed, scales
        new.weight = weight
        if linear.bias is not None:
            new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    setattr(model, "is_loaded_in_4bit" if m.bits == 4 else "is_loaded_in_8bit", True)
    return model


def optimizer_for_mixture(params, m: Mixture, lr: float = 1e-4):
    """The optimizer ``ftmix train`` gets from HF's ``optim`` name (``train.run.HF_OPTIMIZERS``):
    torch's fused AdamW, or bitsandbytes' 8-bit / paged AdamW."""
    if m.optimizer == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    import bitsandbytes as bnb  # lazy: only a bitsandbytes optimizer needs it
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    kind = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
            "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[m.optimizer]
    with unset_fake_temporarily():  # its code books are computed from Python numbers (fill_qmap)
        return kind(params, lr=lr)


def gpu_int8_path() -> None:
    """On CPU, bitsandbytes trains LLM.int8 layers with ``MatMul8bitFp`` (dequantize, then an
    autocast matmul: 16-bit outputs); a GPU runs ``MatMul8bitLt`` (int8 matmul, outputs in the
    input's dtype, the input saved for backward). Both run on CPU: ftmix takes the GPU's, so that
    the twin measures what a GPU run holds."""
    from bitsandbytes.autograd import _functions  # lazy: only an int8 run on CPU needs it

    _functions.MatMul8bitFp = _functions.MatMul8bitLt


def _from_pretrained(ref: str, dtype, attn: str, device: str, quant):
    """Load with bitsandbytes quantizing each linear as it arrives (transformers'
    ``Bnb4BitHfQuantizer``/``Bnb8BitHfQuantizer``; the output head and embeddings stay 16-bit)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FtmixError("--quantize needs bitsandbytes (pip install bitsandbytes==0.50.2, in ftmix's train extra)")
    return transformers.AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, attn_implementation=attn,
                                                              quantization_config=quant, device_map={"": device})


def linear_names(model) -> set[str]:
    """The last name of every linear layer (transformers' GPT-2-style Conv1D too), head excluded."""
    kinds = (torch.nn.Linear, Conv1D)
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
            if isinstance(mod, kinds) and not name.endswith("lm_head")}


def lora_targets(config: dict, m: Mixture):
    """PEFT's ``target_modules``: ftmix's resolution where the analytic model knows the
    architecture; for any other, the names as given, or PEFT's own default for the model type."""
    if m.lora_targets.strip().lower() == "all-linear":
        return "all-linear"
    try:
        return list(resolve_targets(m, spec_from_hf_config(config)))
    except FtmixError:
        if config.get("model_type") in ARCHITECTURES:
            raise
    if m.lora_targets == DEFAULTS["lora_targets"] and config.get("model_type") in PEFT_DEFAULT_TARGETS:
        return list(PEFT_DEFAULT_TARGETS[config["model_type"]])  # PEFT's own default for the model type
    return [t.strip() for t in m.lora_targets.split(",") if t.strip()]


def _forget_gguf_quantizer(model) -> None:
    """transformers dequantizes GGUF tensors into ordinary ones at load time but still marks the
    model as GGUF-quantized, which Trainer refuses to train; the weights are plain, so drop the mark."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_tokenizer(source: ModelSource, rows: list[dict], name: str | None, vocab_limit: int):
    """The model's own tokenizer, or (random init, or name == "train") BPE trained on the data."""
    if name == "train" or (name is None and source.kind == "catalog-config"):
        return train_tokenizer(rows, vocab_size=min(vocab_limit, 1024))
    ref = name or source.ref
    kwargs = {"gguf_file": source.gguf_file} if (source.gguf_file and not name) else {}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as exc:
        raise FtmixError(f"cannot load tokenizer {ref!r}: {str(exc).splitlines()[0][:200]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
