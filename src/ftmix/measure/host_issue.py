"""The operations a real training step dispatches and the time it takes, at tiny width where the
device's kernels take next to nothing: the host's time to issue the step (``ftmix calibrate-gpu``
and benchmarks/host_overhead.py measure with it; ``plan.runtime.host_issue`` prices it)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ftmix.job.source import ModelSource
from ftmix.mixture import Mixture
from ftmix.model.build import build_model


class OpCount(TorchDispatchMode):
    """Counts every aten operation dispatched under it."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def step_ops_and_seconds(config: dict, m: Mixture, device: str, timed) -> tuple[int, float]:
    """(operations, seconds) of one real step of ``m`` on the model of ``config``: forward, backward,
    foreach AdamW; ``timed(fn, device)`` times it (after warm-up steps)."""
    model = build_model(ModelSource("catalog-config", "host-issue", config=dict(config)), m, device).model
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    ids = torch.zeros(m.micro_batch, m.seq_len, dtype=torch.long, device=device)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    count = OpCount()
    with count:
        step()
    return count.ops, timed(step, device)
