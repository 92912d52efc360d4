"""FSDP2 (``torch.distributed.fsdp.fully_shard``), as torchtune, accelerate's FSDP2 plugin and
litgpt wrap a model: ``fully_shard`` on each decoder layer (the model's ``_no_split_modules``) and
on the root. ``reshard_after_forward=True`` is FSDP's FULL_SHARD (ZeRO-3's sharding), ``False`` its
SHARD_GRAD_OP (ZeRO-2's); mixed precision is ``MixedPrecisionPolicy(param_dtype=16-bit,
reduce_dtype=fp32)`` over fp32 sharded parameters (torch's FSDP2 tutorial), pure 16-bit training
shards 16-bit parameters with no policy, and mixed precision runs without autocast (the policy
casts). Simulated today (``ftmix estimate --method simulate --sharding fsdp2``, and its check on
real gloo ranks, ``ftmix.measure.fsdp``); training under it lands with the FSDP2 issue.
"""

from __future__ import annotations

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ftmix.engines.base import TwinRules
from ftmix.mixture import Mixture

TWIN = TwinRules(
    site_roles=(("torch/distributed/fsdp/_fsdp_collectives.py:foreach_reduce", "bucket"),),
    # the all-gathered (unsharded) parameters keep their role (autograd also saves them)
    strong_site_roles=(("torch/distributed/fsdp/_fsdp_param.py", "parameter"),
                       ("torch/distributed/fsdp/_fsdp_collectives.py:foreach_all_gather", "parameter")),
    # FSDP2's own buffers are named by the collective that asks for them, inside torch's frames
    named_frames="/torch/distributed/fsdp/_fully_shard/",
)


def reshard_after_forward(m: Mixture) -> bool:
    """ZeRO-3 sharding (FULL_SHARD) frees each layer's gathered parameters after its forward;
    ZeRO-2 sharding (SHARD_GRAD_OP) keeps them until the backward."""
    return m.zero == 3


def one_process_mixture(m: Mixture) -> Mixture:
    """The mixture ``build_model`` gets, as at --zero 0 without DeepSpeed: for mixed-precision full
    fine-tuning fp32 weights (FSDP2 shards the fp32 masters and casts on all-gather); for LoRA a
    16-bit frozen base with PEFT's fp32 adapters."""
    return m.with_(zero=0, offload="none", gpus=1, nodes=1)


def _layer_classes(model) -> set[str]:
    names = set(getattr(model, "_no_split_modules", None) or ())
    inner = getattr(model, "base_model", None)
    while not names and inner is not None and inner is not model:
        names = set(getattr(inner, "_no_split_modules", None) or ())
        model, inner = inner, getattr(inner, "model", None)
    return names


def shard(model, m: Mixture, mesh) -> int:
    """``fully_shard`` each decoder layer and the root; returns how many layers were wrapped.

    The model here is built whole and then sharded; callers reset the twin's peak afterwards, as
    real recipes build on the meta device and load each rank's shards (torchtune), so that set-up
    never holds the whole model on one GPU."""
    policy = MixedPrecisionPolicy()
    if m.precision in ("bf16", "fp16"):
        low = torch.bfloat16 if m.precision == "bf16" else torch.float16
        policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    classes = _layer_classes(model)
    layers = [mod for mod in model.modules() if type(mod).__name__ in classes]
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward(m), mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward(m), mp_policy=policy)
    return len(layers)


def optimizer_for(params):
    """AdamW over the sharded parameters (foreach: what torch picks on a GPU for DTensors)."""
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)



class FSDP2:
    name = "fsdp2"
    twin = TWIN

    @staticmethod
    def shard(model, m: Mixture, mesh) -> int:
        return shard(model, m, mesh)
