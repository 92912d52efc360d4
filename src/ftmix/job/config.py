"""Train configuration: YAML file, then ``key=value`` overrides, then CLI flags; validated by
pydantic. Mixture keys are top-level (``zero: 3``, ``gc: true``) and mean the same as the flags of
``ftmix estimate``. Defaults are the study's setup (AdamW 0.9/0.99, linear schedule, lr 4e-4,
effective batch 8, one epoch, LoRA r=64 alpha=32, s = 256, optimizer offload with a ZeRO stage).
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import TYPE_CHECKING, Literal, Optional

import yaml
from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ftmix.errors import FtmixError, first_problem
from ftmix.files import read_text
from ftmix.mixture import KEYS, Mixture, resolve_mixture
from ftmix.mixture.engine import read_deepspeed_config

if TYPE_CHECKING:  # for annotations only
    from ftmix.catalog import GpuSpec

PROMPT = "Summarize the dialogue.\n{dialogue}\nSummary: "
BUILTIN_TRAIN_ROWS = 48  # of the 60 built-in dialogues; the other 12 are held out for eval


# The mixture's keys, made from their one declaration (``ftmix.mixture.Mixture``): each optional,
# None meaning its default. GPUs and nodes are the launch's ``nproc`` and ``nnodes`` here.
TRAIN_MIXTURE_KEYS = tuple(k for k in KEYS if k not in ("gpus", "nodes"))
MixtureKeys = create_model(
    "MixtureKeys", __config__=ConfigDict(extra="forbid", protected_namespaces=()),
    **{f.name: (Optional[{"int": int, "str": str, "bool": bool, "float": float}[f.type]],
                Field(default=None, description=f.metadata["help"]))
       for f in fields(Mixture) if f.name in TRAIN_MIXTURE_KEYS})


class TrainConfig(MixtureKeys):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # what to train
    model: str = "smollm2-135m"  # catalog name, hub id, local directory, or a .gguf file
    gguf_file: Optional[str] = None
    random_init: bool = False  # random weights of the real shape (no download)
    model_overrides: dict = Field(default_factory=dict)  # config.json keys, e.g. tiny test shapes
    tokenizer: Optional[str] = None  # default: the model's; "train" = BPE trained on the data
    # data: alpaca, sharegpt, openai messages, text or dialogue rows (ftmix.job.formats)
    data: str = "builtin"  # "builtin", a .jsonl/.json/.csv/.parquet file, a datasets folder, or a hub dataset id
    format: Literal["auto", "alpaca", "sharegpt", "openai", "text", "dialogue"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)  # LLaMA-Factory's dataset_info "columns"
    tags: dict[str, str] = Field(default_factory=dict)  # and "tags" (conversations' keys and role names)
    chat_template: Optional[bool] = None  # None: the tokenizer's chat template when it has one
    train_on_prompt: bool = False  # False: the loss on the responses only (completion-only)
    split: str = "train"
    max_rows: Optional[int] = Field(default=None, gt=0)
    template: str = PROMPT
    too_long: Literal["truncate", "skip"] = "truncate"
    # optimisation
    lr: float = Field(default=4e-4, gt=0)  # also spelled learning_rate (HF's name)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                       "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"] = "linear"  # HF SchedulerType
    warmup_steps: int = Field(default=0, ge=0)
    effective_batch: int = Field(default=8, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = -1  # -1: the epochs decide
    seed: int = 42
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    # the mixture's keys come from MixtureKeys (None = the default, as for `ftmix estimate`)
    deepspeed_config: Optional[str] = None  # the user's own DeepSpeed JSON instead of the generated one
    # where and how
    gpu: Optional[str] = None  # catalog GPU for the predictions (detected on CUDA when left out)
    calibration: Optional[str] = None  # `ftmix study calibrate`'s file for the predictions; default $FTMIX_CALIBRATION
    calibration_any_gpu: bool = False  # use a calibration fitted on other GPU types too
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "runs/ftmix"
    save_steps: int = Field(default=0, ge=0)  # 0 = no intermediate checkpoints (the final model is always saved)
    keep_last: Optional[int] = Field(default=None, gt=0)  # checkpoints kept (HF save_total_limit); None = all
    resume: bool = False  # continue from the last checkpoint in output_dir (same mixture)
    overwrite: bool = False  # clear output_dir's earlier run first (else a non-empty output_dir is refused)
    warmup_measure_steps: int = Field(default=1, ge=0)  # steps left out of the median step time
    memory_limit_gb: Optional[float] = Field(default=None, gt=0)  # the twin fails an allocation past it (CPU)
    mixture: Literal["manual", "auto"] = "manual"  # auto: the planner's fastest fitting mixture, OOM fallback
    twin: bool = True  # the device-memory twin: count every tensor a GPU run would hold (docs/twin.md)
    nproc: int = Field(default=1, gt=0)  # processes on this machine; also spelled gpus
    threads: Optional[int] = Field(default=None, gt=0)  # CPU threads per process; None: the cores / nproc
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"
    hostfile: Optional[str] = None  # multi-node with the deepspeed launcher
    nnodes: int = Field(default=1, gt=0)
    node_rank: int = Field(default=0, ge=0)
    master_addr: str = "127.0.0.1"
    # None: a free port on a single node (two runs side by side never collide), 29512 across nodes
    master_port: Optional[int] = Field(default=None, gt=0, lt=65536)

    @field_validator("template")
    @classmethod
    def _template_reads_the_dialogue(cls, value: str) -> str:
        if "{dialogue}" not in value:
            raise ValueError("the prompt template must contain {dialogue}, where each example's dialogue goes")
        return value

    @model_validator(mode="after")
    def _keep_builtin_rows_back(self) -> "TrainConfig":
        """The built-in dialogues keep their last 12 rows back, so that ``ftmix eval --run`` has
        rows the run never saw (``max_rows=60`` trains on all)."""
        if self.data == "builtin" and self.max_rows is None:
            self.max_rows = BUILTIN_TRAIN_ROWS
        return self

    @field_validator("max_steps")
    @classmethod
    def _steps_to_run(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"{value} is not a number of optimizer steps: give 1 or more (or -1: the epochs decide)")
        return value

    def threads_per_process(self) -> int:
        """Each rank's share of the cores (2 ranks on 2 cores with 2 threads each run ~10x slower
        than with 1: they preempt each other inside every matmul)."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.nproc)

    def to_mixture(self, gpu: GpuSpec | None = None, cpu: bool = False) -> Mixture:
        """The run's mixture: its keys (YAML, ``key=value`` and flags all spell them alike), its
        DeepSpeed JSON's stage, offload and precision, the defaults for the rest; on CPU precision
        is bf16 while the device-memory twin measures (the bytes a GPU run holds), else fp32."""
        ds = read_deepspeed_config(self.deepspeed_config) if self.deepspeed_config else None
        unset = {"precision": "bf16" if self.twin else "fp32"} if cpu else None
        return resolve_mixture(self.mixture_flags(), gpu, ds, self.deepspeed_config or "--deepspeed", unset)

    def mixture_flags(self) -> dict:
        flags = {k: getattr(self, k) for k in TRAIN_MIXTURE_KEYS}
        flags["gpus"], flags["nodes"] = self.nproc, self.nnodes
        return flags


ALIASES = {"learning_rate": "lr", "gpus": "nproc"}  # the names HF and the other commands use


def _canonical(data: dict) -> dict:
    """Keys as TrainConfig names them; of two spellings of one key, the later given wins."""
    out = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        out.pop(name, None)
        out[name] = value
    return out


def _parse_value(text: str):
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~", "") else value


def load_config(path: str | None = None, overrides: list[str] | None = None, flags: dict | None = None) -> TrainConfig:
    data: dict = {}
    if path:
        text = read_text(path, "config")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FtmixError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise FtmixError(f"config {path} must be a mapping of keys to values")
        data.update(_canonical(loaded or {}))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FtmixError(f"override {item!r} is not key=value")
        key = ALIASES.get(key.strip().replace("-", "_"), key.strip().replace("-", "_"))
        field = TrainConfig.model_fields.get(key)
        # text keys take the text as written ("template=Dialogue: {dialogue}" is not YAML's mapping)
        value = value if field is not None and field.annotation is str else _parse_value(value.strip())
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            value = {**data[key], **value}  # model_overrides=... adds to the YAML's, key by key
        data[key] = value
    data.update(_canonical({k: v for k, v in (flags or {}).items() if v is not None}))
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise FtmixError(first_problem(exc)) from None
