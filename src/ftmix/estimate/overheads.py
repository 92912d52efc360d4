"""The memory model's constants outside tensors that a calibration may fit to measurements: the
caching allocator's slack on the step's transient bytes and the CUDA context. Defaults and their
sources are in ``estimate.constants``; ``ftmix study calibrate`` writes fitted values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ftmix.estimate.constants import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES
from ftmix.estimate.result import Estimate


@dataclass(frozen=True)
class MemoryOverheads:
    allocator_slack: float = ALLOCATOR_SLACK  # fraction of the transient (non model-state) bytes
    cuda_context_bytes: float = CUDA_CONTEXT_BYTES

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_OVERHEADS = MemoryOverheads()
# physical ranges: slack is a fraction of the transient bytes; a context is under 8 GiB on any GPU
RANGES = {"allocator_slack": (0.0, 1.0), "cuda_context_bytes": (0.0, 8 * 2**30)}


def with_overheads(est: Estimate, mem: MemoryOverheads | None) -> Estimate:
    """The estimate with these overheads in place of the defaults (the tensor peak is unchanged)."""
    if mem is None or mem == DEFAULT_OVERHEADS:
        return est
    overheads = dict(est.overheads)
    if "allocator_slack" in overheads:
        overheads["allocator_slack"] *= mem.allocator_slack / ALLOCATOR_SLACK
    if "cuda_context" in overheads:
        overheads["cuda_context"] = mem.cuda_context_bytes
    return replace(est, overheads=overheads)
