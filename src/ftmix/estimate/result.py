"""The Estimate every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftmix.estimate.constants import EXPANDABLE_SLACK_FRACTION, GB
from ftmix.mixture import Mixture


@dataclass(frozen=True)
class Estimate:
    method: str
    model: str
    gpu: str | None
    mixture: Mixture
    total_params: int
    trainable_params: int
    breakdown: dict[str, float]  # bytes per GPU; sums to the allocated peak
    overheads: dict[str, float] = field(default_factory=dict)  # bytes outside tensors (context, slack)
    cpu_bytes: float = 0.0  # CPU RAM per node the offload needs
    gpu_memory: float | None = None  # bytes the GPU has
    safety_margin: float = 0.0
    notes: tuple[str, ...] = ()
    grad_accum: int | None = None  # micro steps per optimizer step; None: unknown, gradients kept between them

    @property
    def label(self) -> str:
        return self.mixture.label

    @property
    def sharding(self) -> str:
        """Who shards the states over the GPUs: DeepSpeed ZeRO, or torch FSDP2."""
        return self.mixture.sharding

    @property
    def peak(self) -> float:
        """Peak bytes allocated by tensors per GPU: the study's figure, torch's max_memory_allocated."""
        return sum(self.breakdown.values())

    @property
    def reserved(self) -> float:
        """Peak bytes the caching allocator holds (``torch.cuda.max_memory_reserved``): the allocated
        peak plus its rounding and fragmentation slack."""
        return self.peak + self.overheads.get("allocator_slack", 0.0)

    @property
    def reserved_expandable(self) -> float:
        """``max_memory_reserved`` with ``expandable_segments:True``: less fragmentation slack."""
        return self.peak + EXPANDABLE_SLACK_FRACTION * self.overheads.get("allocator_slack", 0.0)

    @property
    def device_total(self) -> float:
        """What the GPU must hold: the allocated peak plus allocator slack, CUDA context, workspaces."""
        return self.peak + sum(self.overheads.values())

    @property
    def fits(self) -> bool | None:
        if self.gpu_memory is None:
            return None
        return self.device_total <= self.gpu_memory * (1 - self.safety_margin)

    def to_json(self) -> dict:
        return {
            "method": self.method, "model": self.model, "gpu": self.gpu, "sharding": self.sharding,
            "grad_accum": self.grad_accum,
            "peak_gb": round(self.peak / GB, 3),
            "reserved_gb": round(self.reserved / GB, 3),
            "reserved_expandable_segments_gb": round(self.reserved_expandable / GB, 3),
            "device_total_gb": round(self.device_total / GB, 3),
            "breakdown_gb": {k: round(v / GB, 3) for k, v in self.breakdown.items()},
            "overheads_gb": {k: round(v / GB, 3) for k, v in self.overheads.items()},
            "cpu_gb": round(self.cpu_bytes / GB, 3),
            "gpu_memory_gb": None if self.gpu_memory is None else round(self.gpu_memory / GB, 3),
            "safety_margin": self.safety_margin,
            "fits": self.fits,
            "total_params": self.total_params, "trainable_params": self.trainable_params,
            "mixture": self.mixture.to_dict(), "label": self.label,
            "notes": list(self.notes),
        }


LABELS = {"loss_head": "loss head (logits)", "autocast_copies": "autocast's 16-bit weight copies",
          "gathered_params": "gathered parameters (ZeRO-3)", "gc_recompute": "GC recompute",
          "backward_working": "backward working", "optimizer_step": "optimizer step"}


def component_label(name: str, m) -> str:
    """A breakdown key as a user reads it, for the engine that holds it."""
    if name == "zero_buffers":
        if m.zero == 0:
            return "DDP gradient buckets" if m.world > 1 else "gradient buckets"
        return f"ZeRO-{m.zero} buffers (buckets)"
    return LABELS.get(name, name.replace("_", " "))
