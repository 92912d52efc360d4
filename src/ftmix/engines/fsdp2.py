"""FSDP2 (``torch.distributed.fsdp.fully_shard``), as torchtune, accelerate's FSDP2 plugin and
litgpt wrap a model: ``fully_shard`` on each decoder layer (the model's ``_no_split_modules``) and
on the root. ``reshard_after_forward=True`` is FSDP's FULL_SHARD (ZeRO-3's sharding), ``False`` its
SHARD_GRAD_OP (ZeRO-2's); mixed precision is ``MixedPrecisionPolicy(param_dtype=16-bit,
reduce_dtype=fp32)`` over fp32 sharded parameters (torch's FSDP2 tutorial), pure 16-bit training
shards 16-bit parameters with no policy, and mixed precision runs without autocast (the policy
casts). The same wrapping runs in a training run (``ftmix train --sharding fsdp2``: HF Trainer
over the sharded model, accelerate's FSDP2 path for clipping and torch distributed checkpoints) and
in the simulation (``ftmix estimate --method simulate --sharding fsdp2``, checked on real gloo ranks
by ``ftmix.measure.fsdp``).

accelerate runs FSDP only on accelerators; on CPU (gloo ranks here, the twin counting a GPU's
bytes) ``adopt`` gives the Trainer's accelerator the FSDP2 state it would have on GPUs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.fsdp._fully_shard import _fsdp_param_group as param_group

from ftmix.engines.base import EngineDefaults, TwinRules
from ftmix.engines.ddp import TorchDDP
from ftmix.mixture import Mixture

@contextmanager
def host_gradients(to_host):
    """Under CPUOffloadPolicy each reduce-scattered gradient shard is copied to the host inside
    ``foreach_reduce`` (``new_sharded_grad.to(torch.device("cpu"))``), which runs in autograd's
    post-backward callback, out of the twin's placement mode: hand the shards it leaves to
    ``to_host`` (the device copy it reduced into is counted until then, as a GPU holds it)."""
    original = param_group.foreach_reduce

    def reduce(fsdp_params, *args, **kwargs):
        out = original(fsdp_params, *args, **kwargs)
        to_host([p.sharded_param.grad._local_tensor for p in fsdp_params
                 if p.offload_to_cpu and p.sharded_param.grad is not None])
        return out

    param_group.foreach_reduce = reduce
    try:
        yield
    finally:
        param_group.foreach_reduce = original


TWIN = TwinRules(
    site_roles=(("torch/distributed/fsdp/_fsdp_collectives.py:foreach_reduce", "bucket"),),
    # the all-gathered (unsharded) parameters keep their role (autograd also saves them)
    strong_site_roles=(("torch/distributed/fsdp/_fsdp_param.py", "parameter"),
                       ("torch/distributed/fsdp/_fsdp_collectives.py:foreach_all_gather", "parameter")),
    # FSDP2's own buffers are named by the collective that asks for them, inside torch's frames
    named_frames="/torch/distributed/fsdp/_fully_shard/",
    host_moves=host_gradients,
)


def reshard_after_forward(m: Mixture) -> bool:
    """ZeRO-3 sharding (FULL_SHARD) frees each layer's gathered parameters after its forward;
    ZeRO-2 sharding (SHARD_GRAD_OP) keeps them until the backward."""
    return m.zero == 3


def one_process_mixture(m: Mixture) -> Mixture:
    """The mixture ``build_model`` gets, as at --zero 0 without DeepSpeed: for mixed-precision full
    fine-tuning fp32 weights (FSDP2 shards the fp32 masters and casts on all-gather); for LoRA a
    16-bit frozen base with PEFT's fp32 adapters."""
    return m.with_(sharding="deepspeed", zero=0, offload="none", gpus=1, nodes=1)


def _layer_classes(model) -> set[str]:
    names = set(getattr(model, "_no_split_modules", None) or ())
    inner = getattr(model, "base_model", None)
    while not names and inner is not None and inner is not model:
        names = set(getattr(inner, "_no_split_modules", None) or ())
        model, inner = inner, getattr(inner, "model", None)
    return names


def shard(model, m: Mixture, mesh) -> int:
    """``fully_shard`` each decoder layer and the root; returns how many layers were wrapped.
    ``--offload all``: ``CPUOffloadPolicy`` (sharded states and the step in host memory).

    The model here is built whole and then sharded; callers reset the twin's peak afterwards, as
    real recipes build on the meta device and load each rank's shards (torchtune), so that set-up
    never holds the whole model on one GPU."""
    policy = MixedPrecisionPolicy()
    if m.precision in ("bf16", "fp16"):
        low = torch.bfloat16 if m.precision == "bf16" else torch.float16
        policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if m.offload == "all" else OffloadPolicy()
    classes = _layer_classes(model)
    layers = [mod for mod in model.modules() if type(mod).__name__ in classes]
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward(m), mp_policy=policy,
                    offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward(m), mp_policy=policy,
                offload_policy=offload)
    return len(layers)


def optimizer_for(params, **hyper):
    """AdamW over the sharded parameters (foreach: what torch picks on a GPU for DTensors)."""
    return torch.optim.AdamW(params, **dict(dict(lr=1e-4), **hyper, foreach=True))


def adopt(trainer) -> None:
    """Give the Trainer's accelerator the FSDP2 state it has on GPUs (accelerate refuses FSDP on
    CPU): FSDP2 clips, saves and loads the sharded model and optimizer, never wraps it in DDP."""
    # lazy: accelerate is the training stack's; the simulation never asks for it
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.FSDP:
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        trainer.is_fsdp_enabled = True


def full_state_dict(model) -> dict:
    """The whole model's weights gathered from the shards (on every rank, collectively), on the host."""
    # lazy: only a run's final save gathers a full state dict
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class FSDP2(EngineDefaults):
    name = "fsdp2"
    twin = TWIN
    shards_after_build = True

    @staticmethod
    def shard(model, m: Mixture, mesh) -> int:
        return shard(model, m, mesh)

    def config(self, m: Mixture, trainable_params: int, user_config: dict | None = None) -> dict:
        return {"strategy": "FULL_SHARD" if reshard_after_forward(m) else "SHARD_GRAD_OP",
                "reshard_after_forward": reshard_after_forward(m), "offload": m.offload == "all",
                "precision": m.precision}

    def trainer_args(self, config: dict | None, device: str, world: int) -> dict:
        # the model comes sharded (``prepare``): accelerate's own wrapping is off (NO_WRAP; it returns
        # an FSDPModule as it is); checkpoints are torch distributed checkpoints of the shards
        return {"deepspeed": None, "ddp_backend": "gloo" if device == "cpu" else None, "fsdp": True,
                "fsdp_config": {"fsdp_version": 2, "auto_wrap_policy": "NO_WRAP",
                                "reshard_after_forward": config["reshard_after_forward"],
                                "state_dict_type": "SHARDED_STATE_DICT", "cpu_ram_efficient_loading": False}}

    def offloads(self, config: dict | None) -> bool:
        return bool(config and config["offload"])

    def build_mixture(self, m: Mixture) -> Mixture:
        return one_process_mixture(m)

    def build_options(self, m: Mixture) -> dict:
        return {"sharded_base": True}

    def trainer_precision(self, m: Mixture) -> dict:
        # no autocast: the MixedPrecisionPolicy casts the gathered parameters (torchtune's way; an
        # autocast over them would only cache 16-bit copies of 16-bit weights)
        return {}

    def prepare(self, model, m: Mixture, device: str):
        """Shard the model over every rank (the process group is up once TrainingArguments exist;
        one process starts its own)."""
        if not dist.is_initialized():
            dist.init_process_group("gloo" if device == "cpu" else "nccl")
        mesh = init_device_mesh(device, (dist.get_world_size(),))
        shard(model, m, mesh)
        return model

    def optimizer_cls_and_kwargs(self, hyper: dict) -> tuple:
        return torch.optim.AdamW, dict(hyper, foreach=True)  # optimizer_for's, with the run's hyperparameters

    def adopt(self, trainer) -> None:
        adopt(trainer)

    def save_final(self, trainer, path: str) -> None:
        """Gather the shards (every rank takes part) and save on the main process: the adapter, or
        the whole model, as a standard folder."""
        state = full_state_dict(trainer.model)
        if trainer.args.should_save:
            trainer.model.save_pretrained(path, state_dict=state)

    def report(self, trainer, config: dict | None) -> dict:
        out = TorchDDP().report(trainer, config)
        model = trainer.model_wrapped
        shards = [p for p in model.parameters() if p.requires_grad]
        out.update(name="fsdp2", zero_stage=None, strategy=config["strategy"], offload_param=config["offload"],
                   offload_optimizer=config["offload"], fsdp_module=isinstance(model, FSDPModule),
                   trainable_params=sum(p.numel() for p in shards),
                   local_trainable_params=sum(getattr(p, "_local_tensor", p).numel() for p in shards))
        return out
