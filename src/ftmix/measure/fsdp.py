"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the per-rank peak of N ranks, simulated in one
process on this machine with a fake process group, and measured on real ranks with gloo.

Both run the same code (the engine's ``shard``, then ``steps.measure_steps``); only the process group and the tensors
differ. Under ``torch.testing._internal.distributed.fake_pg`` every collective returns at once
with the right shapes, so rank 0 of an N-rank job runs alone under fake tensors: its sharded
parameters, gradients and AdamW states, the all-gathered layers and the reduce-scatter inputs are
the real FSDP2 code's (shared field notes, "Fake-tensor simulation", obstacle 4; the device mesh is
built before fake mode starts: building it under fake mode reads a fake tensor's values).

The wrapping is the FSDP2 engine's (``ftmix.engines.fsdp2``), the one a training run uses.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from ftmix.engines.fsdp2 import one_process_mixture, optimizer_for, shard
from ftmix.job.source import ModelSource
from ftmix.measure.steps import measure_steps
from ftmix.measure.twin import DeviceTwin
from ftmix.mixture import Mixture
from ftmix.model.build import build_model


def measure_real(config: dict, m: Mixture) -> dict:
    """One real rank of a gloo job started by torchrun: the device-memory twin's report of the same
    steps the simulation runs (the check of the simulation; tiny models only)."""
    dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        torch.manual_seed(0)
        twin = DeviceTwin(virtual=True)
        with warnings.catch_warnings(), twin:
            warnings.simplefilter("ignore")
            model = build_model(ModelSource("catalog-config", "fsdp2-check", config=dict(config)),
                                one_process_mixture(m), "cpu", sharded_base=True).model
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
