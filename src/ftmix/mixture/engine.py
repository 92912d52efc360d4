"""The DeepSpeed configuration a Mixture stands for: one pure function that train writes to JSON
and estimate reads its bucket sizes from, so the two never disagree.

Bucket defaults follow DeepSpeed 0.19 ``runtime/zero/config.py`` (reduce 5e8, prefetch 5e7,
persistence 1e5 elements, max live 1e9); ftmix caps the reduce bucket at the trainable parameter
count because ``stage_1_and_2.setup_buckets`` allocates the full bucket up front whatever the model
holds (a 5e8-element bf16 bucket is 1 GB on every GPU, for 33.6M LoRA parameters).
"""

from __future__ import annotations

from ftmix.errors import FtmixError
from ftmix.files import read_json
from ftmix.mixture.mixture import Mixture

DS_REDUCE_BUCKET = 500_000_000
DS_PREFETCH_BUCKET = 50_000_000
DS_PARAM_PERSISTENCE = 100_000
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
DS_MAX_REUSE_DISTANCE = 1_000_000_000


def reduce_bucket_elements(trainable_params: int) -> int:
    return int(min(DS_REDUCE_BUCKET, max(trainable_params, 1_000_000)))


def overlap_comm(m: Mixture) -> bool:
    """DeepSpeed's default: overlap (two reduce buffers) only for stage 3."""
    return m.zero == 3


def read_deepspeed_config(path: str) -> dict:
    """A user's DeepSpeed JSON, with one clear error for a file that is missing or malformed."""
    config = read_json(path, "DeepSpeed config")
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization", {}), dict):
        raise FtmixError(f"DeepSpeed config {path}: expected a JSON object with a zero_optimization object")
    return config


def flags_from_deepspeed(config: dict) -> dict:
    """The mixture keys a DeepSpeed config fixes: ZeRO stage, offload, precision."""
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise FtmixError(f"DeepSpeed config: zero_optimization.stage must be 0-3, got {stage!r}")

    def device(key):
        return ((zero.get(key) or {}).get("device") or "none") not in ("none",)

    offload = "all" if device("offload_param") else "optimizer" if device("offload_optimizer") else "none"
    flags = {"zero": stage, "offload": offload}
    if (config.get("bf16") or {}).get("enabled") is True:
        flags["precision"] = "bf16"
    elif (config.get("fp16") or {}).get("enabled") is True:
        flags["precision"] = "fp16"
    return flags


def apply_deepspeed(flags: dict, config: dict, path: str) -> dict:
    """The mixture flags with what a DeepSpeed config fixes; a flag given that contradicts the
    file is an error (one line naming both)."""
    if str(flags.get("sharding") or "").strip().lower() == "fsdp2":
        raise FtmixError(f"--sharding fsdp2 takes no DeepSpeed config ({path} is DeepSpeed's)")
    fixed = dict(flags_from_deepspeed(config), sharding="deepspeed")
    for key, value in fixed.items():
        if flags.get(key) is not None and flags[key] != value:
            raise FtmixError(f"--{key.replace('_', '-')} {flags[key]} contradicts {path}, which sets {key} {value}")
    return dict(flags, **fixed)


def _elements(value, default: int, hidden: int, auto_factor: float) -> int:
    """A bucket size in elements; HF's "auto" is ``factor x hidden^2`` (transformers'
    ``HfTrainerDeepSpeedConfig.trainer_config_finalize``)."""
    if value is None:
        return default
    if value == "auto":
        return int(auto_factor * hidden * hidden)
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise FtmixError(f"DeepSpeed config: bucket size {value!r} is not a number") from None


def bucket_settings(config: dict, m: Mixture, hidden: int) -> tuple[int, bool]:
    """(reduce_bucket_size in elements, overlap_comm) as the engine will run them."""
    zero = config.get("zero_optimization") or {}
    overlap = zero.get("overlap_comm")
    overlap = overlap_comm(m) if overlap in (None, "auto") else bool(overlap)
    return _elements(zero.get("reduce_bucket_size"), DS_REDUCE_BUCKET, hidden, 1.0), overlap


def stage3_settings(config: dict, hidden: int) -> tuple[int, int, int]:
    """(param persistence threshold, prefetch bucket, max reuse distance) in elements, as the
    engine will run them; HF's "auto": 10 x hidden and 0.9 x hidden^2."""
    zero = config.get("zero_optimization") or {}
    persistence = zero.get("stage3_param_persistence_threshold")
    persistence = 10 * hidden if persistence == "auto" else _elements(persistence, DS_PARAM_PERSISTENCE, hidden, 1.0)
    return (persistence, _elements(zero.get("stage3_prefetch_bucket_size"), DS_PREFETCH_BUCKET, hidden, 0.9),
            _elements(zero.get("stage3_max_reuse_distance"), DS_MAX_REUSE_DISTANCE, hidden, 1.0))


def deepspeed_config(m: Mixture, trainable_params: int) -> dict:
    """A DeepSpeed JSON config for the mixture. Batch fields are "auto" for HF Trainer to fill."""
    zero: dict = {"stage": m.zero}
    if m.zero >= 1:
        zero.update(reduce_bucket_size=reduce_bucket_elements(trainable_params), allgather_bucket_size=DS_REDUCE_BUCKET,
                    overlap_comm=overlap_comm(m), contiguous_gradients=True, reduce_scatter=True)
    if m.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if m.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if m.zero == 3:
        zero.update(stage3_prefetch_bucket_size=DS_PREFETCH_BUCKET,
                    stage3_param_persistence_threshold=DS_PARAM_PERSISTENCE,
                    stage3_max_live_parameters=DS_MAX_LIVE_PARAMETERS,
                    stage3_gather_16bit_weights_on_model_save=True)
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": m.precision.startswith("bf16")},
        "fp16": {"enabled": m.precision.startswith("fp16"), "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if m.offload != "none":
        # ZeRO-Offload steps on the CPU: DeepSpeed builds DeepSpeedCPUAdam from this section
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    return config
