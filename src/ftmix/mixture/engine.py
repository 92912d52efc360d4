"""The DeepSpeed configuration a Mixture stands for: one pure function that train writes to JSON
and estimate reads its bucket sizes from, so the two never disagree.

Bucket defaults follow DeepSpeed 0.19 ``runtime/zero/config.py`` (reduce 5e8, prefetch 5e7,
persistence 1e5 elements, max live 1e9); ftmix caps the reduce bucket at the trainable parameter
count because ``stage_1_and_2.setup_buckets`` allocates the full bucket up front whatever the model
holds (a 5e8-element bf16 bucket is 1 GB on every GPU, for 33.6M LoRA parameters).
"""

from __future__ import annotations

from ftmix.mixture.mixture import Mixture

DS_REDUCE_BUCKET = 500_000_000
DS_PREFETCH_BUCKET = 50_000_000
DS_PARAM_PERSISTENCE = 100_000
DS_MAX_LIVE_PARAMETERS = 1_000_000_000


def reduce_bucket_elements(trainable_params: int) -> int:
    return int(min(DS_REDUCE_BUCKET, max(trainable_params, 1_000_000)))


def overlap_comm(m: Mixture) -> bool:
    """DeepSpeed's default: overlap (two reduce buffers) only for stage 3."""
    return m.zero == 3


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
