"""How long a context fits: the longest sequence length, to a stated granularity, at which a
mixture's analytic estimate fits the GPU (and the host RAM it may use), for the mixture given or
for every candidate the planner would try. No torch; milliseconds per mixture.

The search is a bisection over multiples of the granularity up to the model's positions: the
analytic peak never falls as s grows (every term is a non-negative function of s; held by
tests/plan/test_context.py over the catalog), so one boundary exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmix.catalog import GpuSpec, ModelSpec
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.estimate.constants import SAFETY_MARGIN
from ftmix.mixture import Mixture, grad_accum, mixture_from_flags
from ftmix.plan.runtime import STUDY_EFFECTIVE_BATCH
from ftmix.plan.search import _options

GRANULARITY = 64  # tokens: the answer is exact to this (a multiple of it fits, the next does not)


@dataclass(frozen=True)
class Reach:
    """A mixture and the longest context it fits (None: not even one granule)."""

    mixture: Mixture
    max_seq_len: int | None
    peak_gb: float | None  # at that length
    capped: bool  # the model's positions stopped the search, not the memory

    def to_json(self) -> dict:
        return {"mixture": self.mixture.to_dict(), "label": self.mixture.label, "max_seq_len": self.max_seq_len,
                "peak_gb": self.peak_gb, "capped_by_positions": self.capped}


def fits(model: ModelSpec, gpu: GpuSpec, m: Mixture, effective_batch: int = STUDY_EFFECTIVE_BATCH,
         safety_margin: float = SAFETY_MARGIN, cpu_ram: float | None = None, deepspeed: dict | None = None,
         overheads=None):
    """The estimate when it fits the GPU (and ``cpu_ram`` bytes of host RAM), else None."""
    est = estimate(model, m, gpu, "analytic", safety_margin, deepspeed, overheads,
                   grad_accum(effective_batch, m.micro_batch, m.world))
    return est if est.fits and (cpu_ram is None or est.cpu_bytes <= cpu_ram) else None


def longest_context(model: ModelSpec, gpu: GpuSpec, m: Mixture, granularity: int = GRANULARITY, **fit_args) -> Reach:
    """The largest multiple of ``granularity`` (at most the model's positions) at which ``m`` fits."""
    top = model.max_positions // granularity
    lo, hi, best = 0, top, None  # invariant: lo granules fit (0 trivially), hi + 1 do not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        est = fits(model, gpu, m.with_(seq_len=mid * granularity), **fit_args)
        if est is not None:
            lo, best = mid, est
        else:
            hi = mid - 1
    if lo == 0:
        return Reach(m, None, None, False)
    longest = m.with_(seq_len=lo * granularity)
    if best is None or best.mixture.seq_len != longest.seq_len:
        best = fits(model, gpu, longest, **fit_args)
    return Reach(longest, longest.seq_len, round(best.peak / 1e9, 3), lo == top)


def reach_of_candidates(model: ModelSpec, gpu: GpuSpec, flags: dict, granularity: int = GRANULARITY,
                        **fit_args) -> list[Reach]:
    """Every candidate mixture the open dimensions allow (as ``plan`` enumerates them), with its
    longest context, the farthest first (ties: the planner's order)."""
    found = []
    for option in _options(gpu, flags, False, fit_args.get("effective_batch", STUDY_EFFECTIVE_BATCH)):
        try:
            m = mixture_from_flags(gpu, **dict(option, seq_len=granularity))
            found.append(longest_context(model, gpu, m, granularity, **fit_args))
        except FtmixError:  # an impossible combination of open dimensions (as plan skips it)
            continue
    if not found:
        raise FtmixError("no candidate mixture")
    return sorted(found, key=lambda r: -(r.max_seq_len or 0))
