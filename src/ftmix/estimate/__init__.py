"""Memory: what a fine-tuning step holds per GPU, before anything runs. Imports no torch.

``paper`` is the study's section 4 exactly; ``analytic`` models the real architecture term by term.
"""

from __future__ import annotations

from ftmix.catalog import GpuSpec, ModelSpec
from ftmix.errors import FtmixError
from ftmix.estimate import arch_fits
from ftmix.estimate.analytic import analytic_estimate
from ftmix.estimate.constants import SAFETY_MARGIN
from ftmix.estimate.overheads import MemoryOverheads, with_overheads
from ftmix.estimate.paper import paper_estimate
from ftmix.estimate.result import Estimate
from ftmix.mixture import Mixture, check_mixture

METHODS = ("analytic", "paper")


def estimate(model: ModelSpec, m: Mixture, gpu: GpuSpec | None = None, method: str = "analytic",
             safety_margin: float = SAFETY_MARGIN, deepspeed: dict | None = None,
             overheads: MemoryOverheads | None = None, grad_accum: int | None = None) -> Estimate:
    """``deepspeed``: the user's own DeepSpeed config, whose bucket settings the analytic method
    uses (its stage, offload and precision must already be in ``m``: ``mixture.engine
    .flags_from_deepspeed``). ``overheads``: calibrated allocator slack and CUDA context.
    ``grad_accum``: micro steps per optimizer step (None: unknown, the gradients counted as kept
    between micro steps)."""
    check_mixture(m, model, gpu)
    if not 0 <= safety_margin < 1:
        raise FtmixError(f"safety margin must be in [0, 1), got {safety_margin}")
    check_grad_accum(grad_accum)
    memory = None if gpu is None else float(gpu.memory_bytes)
    name = None if gpu is None else gpu.name
    if method == "paper":
        return with_overheads(paper_estimate(model, m, memory, name, safety_margin), overheads)
    if method == "analytic":
        est = arch_fits.apply(analytic_estimate(model, m, memory, name, safety_margin, deepspeed, grad_accum), model)
        return with_overheads(est, overheads)
    raise FtmixError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def check_grad_accum(grad_accum) -> None:
    """None (not said) or a whole number of micro steps, 1 or more."""
    if grad_accum is not None and (isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1):
        raise FtmixError(f"--grad-accum must be a whole number of micro steps, 1 or more; got {grad_accum!r}")


__all__ = ["Estimate", "METHODS", "MemoryOverheads", "check_grad_accum", "estimate"]
