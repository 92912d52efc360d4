"""DeepSpeed ZeRO-1/2/3 with CPU offload, as HF Trainer runs it: the JSON a Mixture stands for
(``ftmix.mixture.engine``, shared with the estimate's bucket sizes) or the user's own, the engine's
report, and where its buffers live for the device-memory twin (DeepSpeed 0.19.8's code sites)."""

from __future__ import annotations

from contextlib import contextmanager

from ftmix.engines.base import EngineDefaults, TwinRules
from ftmix.engines.ddp import TorchDDP
from ftmix.mixture import Mixture
from ftmix.mixture.engine import deepspeed_config


def attribute_role(name: str) -> str | None:
    """A ZeRO optimizer's flat buffer's role from its attribute name (fp32 partitions, gradient
    partitions, reduce buckets, 16-bit partitions)."""
    n = name.lower()
    if "fp32" in n:
        return "fp32 master"
    if "ipg" in n or "bucket" in n:
        return "bucket"
    if "grad" in n:
        return "gradient"
    if any(k in n for k in ("bit16", "fp16", "bf16", "partitioned_params")):
        return "parameter"
    return None


@contextmanager
def virtual_device(name: str):
    """DeepSpeed's CPU accelerator names ``name`` (the twin's virtual device) while it runs."""
    try:  # lazy: DeepSpeed is optional where the twin runs (a simulation, a plain run)
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
    except Exception:
        yield
        return
    saved = CPU_Accelerator.current_device_name, CPU_Accelerator.device_name
    CPU_Accelerator.current_device_name = lambda self: name
    CPU_Accelerator.device_name = lambda self, device_index=None: name
    try:
        yield
    finally:
        CPU_Accelerator.current_device_name, CPU_Accelerator.device_name = saved


TWIN = TwinRules(
    site_roles=(("deepspeed/ops/adam", "optimizer state"), ("deepspeed/", "deepspeed buffer")),
    # ZeRO-3's gathered parameters (autograd also saves them for the backward, but they are the
    # engine's parameters)
    strong_site_roles=(("deepspeed/runtime/zero/partition_parameters", "parameter"),
                       ("deepspeed/runtime/zero/partitioned_param_coordinator", "parameter")),
    # stage_1_and_2 ``setup_buckets``, stage3 ``_setup_for_real_optimizer``'s ipg buffers
    bucket_functions=(":setup_buckets", ":_setup_for_real_optimizer"),
    host_sites=("deepspeed/ops/adam/cpu_adam",),
    # offload buffers that live on the host: ZeRO-1/2's (stage_1_and_2.py), and stage 3's flat
    # 16-bit parameter partitions under parameter offload, which it makes with a bare
    # ``torch.empty`` (host memory on a GPU too; stage3 ``_create_param_groups_fp16_flat_cpu_memory``)
    host_attributes=frozenset({"param_buffer_of_bit16_for_cpu_offload_groups", "single_partition_of_fp32_groups",
                               "temp_grad_buffer_for_cpu_offload", "accumulated_grads_in_cpu", "offload_gradient_dict",
                               "param_groups_fp16_flat_cpu_memory"}),
    # stage3's parameter partitions are flattened through host memory and sent back with
    # ``.to(t.device)`` when parameters are not offloaded (``zero/utils.py:defragment``)
    back_to_device_sites=frozenset({"deepspeed/runtime/zero/utils.py:defragment"}),
    skip_sites=("deepspeed/utils/nvtx.py",),
    optimizer_module="deepspeed",
    attribute_role=attribute_role,
    offload_code=("deepspeed/",),
    virtual_device=virtual_device,
)


def offloads(config: dict | None) -> bool:
    """Whether a DeepSpeed config offloads optimizer states or parameters to the host."""
    zero = (config or {}).get("zero_optimization") or {}
    return any((zero.get(key) or {}).get("device", "none") not in ("none", None)
               for key in ("offload_optimizer", "offload_param"))


class DeepSpeed(EngineDefaults):
    name = "deepspeed"
    twin = TWIN

    def config(self, m: Mixture, trainable_params: int, user_config: dict | None = None) -> dict | None:
        return user_config if user_config is not None else deepspeed_config(m, trainable_params)

    def trainer_args(self, config: dict | None, device: str, world: int) -> dict:
        return {"deepspeed": config, "ddp_backend": "gloo" if (device == "cpu" and world > 1) else None}

    def offloads(self, config: dict | None) -> bool:
        return offloads(config)

    def report(self, trainer, config: dict | None) -> dict:
        engine = trainer.model_wrapped
        if not hasattr(engine, "zero_optimization_stage"):  # HF Trainer ran without the engine
            return TorchDDP().report(trainer, config)
        params = [p for p in engine.module.parameters() if p.requires_grad]
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        offload_optimizer, offload_param = engine.zero_offload_optimizer(), engine.zero_offload_param()
        return {"name": "deepspeed", "zero_stage": engine.zero_optimization_stage(),
                "offload_optimizer": bool(offload_optimizer and offload_optimizer.device != "none"),
                "offload_param": bool(offload_param and offload_param.device != "none"),
                "optimizer": type(inner).__name__, "zero_optimizer": type(engine.optimizer).__name__,
                "trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in params),
                "dtype": str(engine.get_data_types()[0]) if hasattr(engine, "get_data_types") else None,
                "bf16": engine.bfloat16_enabled(), "fp16": engine.fp16_enabled(),
                "reduce_bucket_size": ((config or {}).get("zero_optimization") or {}).get("reduce_bucket_size")}
