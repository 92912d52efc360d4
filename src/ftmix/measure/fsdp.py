"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the per-rank peak of N ranks, simulated in one
process on this machine with a fake process group, and measured on real ranks with gloo.

Both run the same code (``shard``, then ``simulate.measure_steps``); only the process group and the tensors
differ. Under ``torch.testing._internal.distributed.fake_pg`` every collective returns at once
with the right shapes, so rank 0 of an N-rank job runs alone under fake tensors: its sharded
parameters, gradients and AdamW states, the all-gathered layers and the reduce-scatter inputs are
the real FSDP2 code's (shared field notes, "Fake-tensor simulation", obstacle 4; the device mesh is
built before fake mode starts: building it under fake mode reads a fake tensor's values).

The wrapping is what torchtune, accelerate's FSDP2 plugin and litgpt do: ``fully_shard`` on each
decoder layer (the model's ``_no_split_modules``) and on the root. ``reshard_after_forward=True``
is FSDP's FULL_SHARD (ZeRO-3's sharding), ``False`` its SHARD_GRAD_OP (ZeRO-2's); mixed precision
is ``MixedPrecisionPolicy(param_dtype=16-bit, reduce_dtype=fp32)`` over fp32 sharded parameters
(torch's FSDP2 tutorial), pure 16-bit training shards 16-bit parameters with no policy. Mixed
precision runs without autocast, as torchtune and the FSDP2 tutorial run it (the policy casts).
"""

from __future__ import annotations

import torch

from ftmix.mixture import Mixture


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
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

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


def measure_real(config: dict, m: Mixture) -> dict:
    """One real rank of a gloo job started by torchrun: the device-memory twin's report of the same
    steps the simulation runs (the check of the simulation; tiny models only)."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from ftmix.measure.simulate import measure_steps
    from ftmix.measure.twin import DeviceTwin
    from ftmix.train.model import ModelSource, build_model

    dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        torch.manual_seed(0)
        twin = DeviceTwin(virtual=True)
        with warnings.catch_warnings(), twin:
            warnings.simplefilter("ignore")
            model = build_model(ModelSource("catalog-config", "fsdp2-check", config=dict(config)),
                                one_process_mixture(m), "cpu").model
            shard(model, m, mesh)
            twin.reset_peak()
            optimizer = optimizer_for([p for p in model.parameters() if p.requires_grad])
            ids = torch.randint(0, config["vocab_size"], (m.micro_batch, m.seq_len))
            report = measure_steps(model, optimizer, m, twin, "the FSDP2 check failed", autocast=False, ids=ids)[0]
        result = dict(report, rank=dist.get_rank(), world=dist.get_world_size())
        dist.barrier()  # no rank tears gloo down while its peer is still in a collective
        return result
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # torchrun --nproc-per-node N -m ftmix.measure.fsdp CONFIG.json MIXTURE.json OUT_DIR
    import json
    import os
    import sys
    from pathlib import Path

    config_path, mixture_path, out = sys.argv[1:4]
    mixture = Mixture(**json.loads(Path(mixture_path).read_text()))
    result = measure_real(json.loads(Path(config_path).read_text()), mixture)
    Path(out, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
    # The report is written: skip interpreter finalization. FSDP2's state and the device mesh still
    # hold the gloo group, and tearing its worker threads down while the interpreter dies can abort
    # the process (pytorch/pytorch#179291). One CI run aborted so ("terminate called without an
    # active exception"); 70 runs here did not.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
