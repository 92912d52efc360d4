"""Model catalog: any Hugging Face ``config.json`` becomes a :class:`ModelSpec`.

Parameter counts are computed from the module shapes that transformers builds for each
``model_type`` (``modeling_llama.py``, ``modeling_mistral.py``, ``modeling_qwen2.py``,
``modeling_phi.py``, ``modeling_phi3.py``, ``modeling_falcon.py``), never looked up. Unknown model
types with Llama-like keys are read as Llama-style decoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.files import read_json

# Where a linear layer sits decides which activation it saves (see estimate/activations.py).
ROLES = ("attn_in", "attn_out", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class LinearSpec:
    """One nn.Linear of a decoder layer, named as transformers names it (LoRA targets match it)."""

    name: str
    d_in: int
    d_out: int
    bias: bool
    role: str

    @property
    def params(self) -> int:
        return self.d_in * self.d_out + (self.d_out if self.bias else 0)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    max_positions: int
    linears: tuple[LinearSpec, ...]  # one decoder layer
    gated_mlp: bool  # SwiGLU (gate * up) versus a single activation
    norm: str  # "rms" (fp32 upcast inside) or "layer"
    norms_per_layer: int
    lm_head_bias: bool
    peft_default_targets: tuple[str, ...]
    nominal_params: float | None = None  # the marketing size ("7B"), used by paper mode
    nominal_size: str | None = None
    hub_id: str | None = None
    notes: tuple[str, ...] = ()  # what the spec leaves out (a multimodal model's other towers)
    # a pre-quantized checkpoint's (method, bits, group size): GPTQ or AWQ, from its config.json
    quantization: tuple | None = None

    @property
    def norm_params(self) -> int:
        return self.hidden * (1 if self.norm == "rms" else 2)

    @property
    def layer_params(self) -> int:
        return sum(lin.params for lin in self.linears) + self.norms_per_layer * self.norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        if self.tied_embeddings:
            return 0
        return self.vocab * self.hidden + (self.vocab if self.lm_head_bias else 0)

    @property
    def total_params(self) -> int:
        return (self.embedding_params + self.layers * self.layer_params + self.norm_params
                + self.lm_head_params)

    @property
    def largest_module_params(self) -> int:
        """Parameters of the largest single module (ZeRO-3 gathers one module at a time)."""
        return max([self.embedding_params, self.vocab * self.hidden] + [lin.params for lin in self.linears])

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(lin.name for lin in self.linears)


def _get(cfg: dict, *keys: str, default=None):
    """A size from config.json: the first key present, a whole positive number (4096 or 4096.0)."""
    for key in keys:
        if cfg.get(key) is not None:
            return _whole(cfg[key], key)
    if default is not None:
        return default
    raise FtmixError(f"config.json lacks {keys[0]!r}")


def _whole(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value <= 0:
        raise FtmixError(f"config.json: {key} must be a positive whole number, got {value!r}")
    return int(value)


# model_type values the analytic model knows layer by layer (a config without one is read as Llama)
ARCHITECTURES = ("llama", "mistral", "qwen2", "phi", "phi3", "falcon")
# model_type values whose parameters ftmix counts but whose activations come from a fitted table
# (``ftmix calibrate-arch``, ``estimate.arch_fits``): without a fit for the shape, estimate refuses
FITTED_ARCHITECTURES = ("qwen3", "gemma", "gemma2", "gemma3_text", "mixtral")


def spec_from_hf_config(cfg: dict, name: str = "custom", nominal_size: str | None = None,
                        hub_id: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a transformers ``config.json`` dict (a multimodal one's
    ``text_config``: the language model is what is fine-tuned)."""
    if not isinstance(cfg, dict):
        raise FtmixError("config.json must hold a JSON object")
    notes: tuple[str, ...] = ()
    if isinstance(cfg.get("text_config"), dict) and not any(k in cfg for k in ("hidden_size", "n_embd", "d_model")):
        notes = (multimodal_note(cfg),)
        cfg = cfg["text_config"]
    mtype = str(cfg.get("model_type", "llama"))
    if mtype not in ARCHITECTURES + FITTED_ARCHITECTURES:
        raise FtmixError(f"architecture {mtype!r} is not modelled (the analytic method knows "
                         f"{', '.join(ARCHITECTURES)}, and {', '.join(FITTED_ARCHITECTURES)} with a fit from "
                         f"`ftmix calibrate-arch`); ftmix will not guess it as Llama; --method simulate runs it (with --zero 0, or --sharding fsdp2)")
    h = _get(cfg, "hidden_size", "n_embd", "d_model")
    layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(cfg, "num_attention_heads", "n_head")
    kv = _get(cfg, "num_key_value_heads", "num_kv_heads", default=heads)
    vocab = _get(cfg, "vocab_size")
    inter = _get(cfg, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * h)
    max_pos = _get(cfg, "max_position_embeddings", "n_positions", "seq_length", default=2048)
    if heads % kv:
        raise FtmixError(f"config.json: {heads} attention heads are not a multiple of {kv} key/value heads")
    if cfg.get("head_dim") is not None:
        hd = _whole(cfg["head_dim"], "head_dim")
    elif h % heads:
        raise FtmixError(f"config.json: hidden_size {h} is not divisible by {heads} attention heads")
    else:
        hd = h // heads
    q, kvd = heads * hd, kv * hd
    tied = bool(cfg.get("tie_word_embeddings",
                        mtype not in ("llama", "mistral", "qwen2", "phi", "phi3", "qwen3", "mixtral")))

    def lin(n, i, o, b, role):
        return LinearSpec(n, i, o, b, role)

    gated, norm, norms, head_bias = True, "rms", 2, False
    if mtype == "phi3":
        linears = (lin("qkv_proj", h, q + 2 * kvd, False, "attn_in"), lin("o_proj", q, h, False, "attn_out"),
                   lin("gate_up_proj", h, 2 * inter, False, "mlp_in"), lin("down_proj", inter, h, False, "mlp_out"))
        targets = ("qkv_proj",)
    elif mtype == "phi":
        linears = (lin("q_proj", h, q, True, "attn_in"), lin("k_proj", h, kvd, True, "attn_in"),
                   lin("v_proj", h, kvd, True, "attn_in"), lin("dense", q, h, True, "attn_out"),
                   lin("fc1", h, inter, True, "mlp_in"), lin("fc2", inter, h, True, "mlp_out"))
        gated, norm, norms, head_bias = False, "layer", 1, True
        targets = ("q_proj", "v_proj")
    elif mtype == "falcon":
        bias = bool(cfg.get("bias", False))
        new_arch = bool(cfg.get("new_decoder_architecture", False))
        if not new_arch and cfg.get("multi_query", True):
            # FalconAttention: one K/V head shared by all (qkv_out_dim = hidden + 2 * head_dim);
            # transformers' FalconConfig defaults multi_query to True
            kv, kvd = 1, hd
        qkv_out = q + 2 * kvd if (new_arch or kv != heads) else 3 * q
        linears = (lin("query_key_value", h, qkv_out, bias, "attn_in"), lin("dense", q, h, bias, "attn_out"),
                   lin("dense_h_to_4h", h, inter, bias, "mlp_in"), lin("dense_4h_to_h", inter, h, bias, "mlp_out"))
        gated, norm = False, "layer"
        norms = 2 if new_arch or not cfg.get("parallel_attn", True) else 1
        targets = ("query_key_value",)
    else:  # llama, mistral, qwen2 and Llama-like decoders (the fitted ones: see FITTED_ARCHITECTURES)
        qkv_bias = bool(cfg.get("attention_bias", mtype == "qwen2"))
        mlp_bias = bool(cfg.get("mlp_bias", False))
        attention = (lin("q_proj", h, q, qkv_bias, "attn_in"), lin("k_proj", h, kvd, qkv_bias, "attn_in"),
                     lin("v_proj", h, kvd, qkv_bias, "attn_in"), lin("o_proj", q, h, False, "attn_out"))
        if mtype == "mixtral":
            # transformers 5 fuses the experts into 3-D parameters (MixtralExperts: gate_up_proj
            # E x 2I x h, down_proj E x h x I) beside the router (E x h)
            experts = _get(cfg, "num_local_experts")
            linears = attention + (lin("router", h, experts, False, "router"),
                                   lin("experts.gate_up_proj", h, 2 * inter * experts, False, "mlp_in"),
                                   lin("experts.down_proj", inter * experts, h, False, "mlp_out"))
        else:
            linears = attention + (lin("gate_proj", h, inter, mlp_bias, "mlp_in"),
                                   lin("up_proj", h, inter, mlp_bias, "mlp_in"),
                                   lin("down_proj", inter, h, mlp_bias, "mlp_out"))
        if mtype in ("gemma2", "gemma3_text"):
            norms = 4  # input, post-attention, pre- and post-feedforward
        if mtype in ("qwen3", "gemma3_text"):
            # RMSNorm of each head's queries and keys: head_dim weights each (counted as parameters)
            linears += (lin("q_norm", 1, hd, False, "norm"), lin("k_norm", 1, hd, False, "norm"))
        targets = ("q_proj", "v_proj")
    nominal = parse_size(nominal_size) if nominal_size else None
    quantization = prequantized(cfg)
    if quantization:
        notes += (f"{quantization[0].upper()} checkpoint: {quantization[1]}-bit base weights in groups of "
                  f"{quantization[2]} (estimate, plan, matrix and study; `ftmix train` loads bitsandbytes only)",)
    return ModelSpec(name=name, model_type=mtype, layers=layers, hidden=h, heads=heads, kv_heads=kv, head_dim=hd,
                     intermediate=inter, vocab=vocab, tied_embeddings=tied, max_positions=max_pos,
                     linears=linears, gated_mlp=gated, norm=norm, norms_per_layer=norms,
                     lm_head_bias=head_bias, peft_default_targets=targets, nominal_params=nominal,
                     nominal_size=nominal_size, hub_id=hub_id, notes=notes, quantization=quantization)


PREQUANTIZED = ("gptq", "awq")


def prequantized(cfg: dict) -> tuple | None:
    """(method, bits, group size) of a config.json's ``quantization_config`` for GPTQ and AWQ
    (transformers' ``GPTQConfig``: ``bits``, ``group_size``; ``AwqConfig``: ``bits``, ``group_size``,
    AutoAWQ's own ``w_bit``, ``q_group_size``)."""
    qc = cfg.get("quantization_config")
    if not qc:
        return None
    if not isinstance(qc, dict):
        raise FtmixError("config.json: quantization_config must be an object")
    method = str(qc.get("quant_method", "")).lower()
    if method not in PREQUANTIZED:
        raise FtmixError(f"config.json: quantization_config quant_method {method or '(none)'!r} is not modelled "
                         f"(ftmix reads {' and '.join(PREQUANTIZED)} checkpoints; bitsandbytes is --quantize)")
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size", 128))
    if isinstance(bits, bool) or bits not in (2, 3, 4, 8):
        raise FtmixError(f"config.json: quantization_config bits must be 2, 3, 4 or 8, got {bits!r}")
    if isinstance(group, bool) or not isinstance(group, int) or group == 0 or group < -1:
        raise FtmixError(f"config.json: quantization_config group_size must be a positive integer or -1, got {group!r}")
    return (method, bits, group)


def multimodal_note(cfg: dict) -> str:
    """What a multimodal config's estimate leaves out: the towers beside the language model, with
    their size where the config says it (a ViT layer: 4 h^2 of attention + 2 h i of MLP)."""
    others = [k for k, v in cfg.items() if k.endswith("_config") and k != "text_config" and isinstance(v, dict)]
    sizes = []
    for key in others:
        sub = cfg[key]
        h, n = sub.get("hidden_size"), sub.get("num_hidden_layers") or sub.get("depth")
        i = sub.get("intermediate_size") or (4 * h if h else None)
        if h and n and i:
            sizes.append(f"{key.removesuffix('_config')} ~{n * (4 * h * h + 2 * h * i) / 1e6:,.0f}M parameters")
        else:
            sizes.append(key.removesuffix("_config"))
    return ("multimodal config: the estimate is the language model's (text_config) fine-tuned on text; "
            f"not counted: {', '.join(sizes) or 'the other towers'} (frozen, their 16-bit weights add 2 bytes "
            "per parameter)")


def parse_size(text: str) -> float:
    """'7B' -> 7e9, '135M' -> 1.35e8."""
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    text = text.strip().upper()
    if not text or text[-1] not in units:
        raise FtmixError(f"bad model size {text!r}; write it like 7B or 135M")
    return float(text[:-1]) * units[text[-1]]


_DATA = "data/models"


@cache
def _builtin(name: str) -> ModelSpec:
    entry = catalog_entry(name)
    return spec_from_hf_config(entry["config"], name=name, nominal_size=entry["nominal_size"],
                               hub_id=entry["hub_id"])


def model_names() -> list[str]:
    folder = resources.files("ftmix.catalog").joinpath(_DATA)
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def catalog_name(ref: str) -> str | None:
    """The catalog entry a name or a hub id stands for (case-insensitive), else None."""
    key = ref.strip().lower()
    if key in model_names():
        return key
    return next((n for n in model_names() if (_builtin(n).hub_id or "").lower() == key), None)


def config_file(ref: str) -> Path | None:
    """A local config.json a reference names: the file itself or the one in a folder."""
    path = Path(ref.strip()).expanduser()
    if path.is_dir():
        path = path / "config.json"
    return path if path.is_file() and path.suffix == ".json" else None


def catalog_entry(name: str) -> dict:
    return read_json(resources.files("ftmix.catalog").joinpath(f"{_DATA}/{name}.json"), "catalog entry")


def model_config(ref: str, overrides: dict | None = None) -> tuple[dict, str] | None:
    """(config.json dict, name) of "a model name or a path to its config": a catalog name or the
    hub id of one (the catalog's copy), a local config.json or a folder holding one, with
    ``overrides`` merged; None for anything else (another hub id, a .gguf file, a folder without
    config.json). The one reader of a model reference: estimate, simulate, train's pre-flight and
    study's predictions all go through it."""
    known = catalog_name(ref)
    if known:
        return dict(catalog_entry(known)["config"], **(overrides or {})), known
    path = config_file(ref)
    if path is None:
        return None
    config = read_json(path, "model config")
    if not isinstance(config, dict):
        raise FtmixError(f"model config {path} must hold a JSON object")
    return dict(config, **(overrides or {})), ref


def load_model(ref: str) -> ModelSpec:
    """A catalog name or the hub id of one, a path to a config.json (or its folder), or another
    hub id (through transformers)."""
    key = ref.strip()
    known = catalog_name(key)
    if known:
        return _builtin(known)
    path = Path(key).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise FtmixError(f"folder {path} has no config.json")
    found = model_config(key)
    if found is not None:
        return spec_from_hf_config(found[0], name=str(ref))
    if "/" in key and not path.exists():
        return _from_hub(key)
    raise FtmixError(f"unknown model {ref!r}; known: {', '.join(model_names())}, a config.json path or a hub id")


def _from_hub(repo_id: str) -> ModelSpec:
    try:  # transformers is heavy and optional on the planning side: import it only here
        # lazy: transformers only where its classes are needed
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(repo_id).to_dict()
    except Exception as exc:  # offline, missing, gated: all are "unknown model" to the user
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise FtmixError(f"unknown model {repo_id!r}: cannot load its config from the hub ({reason})") from None
    return spec_from_hf_config(cfg, name=repo_id, hub_id=repo_id)
