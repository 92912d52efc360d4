"""Choose the fastest mixture that fits: enumerate what the user left open, estimate memory and
time for each candidate, keep those that fit, sort by step time. No torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftmix.catalog import GpuSpec, ModelSpec
from ftmix.errors import FtmixError
from ftmix.estimate import Estimate, estimate
from ftmix.estimate.constants import GB, SAFETY_MARGIN
from ftmix.mixture import Mixture, grad_accum, mixture_from_flags
from ftmix.plan.constants import DEFAULT, RuntimeConstants
from ftmix.plan.runtime import STUDY_EFFECTIVE_BATCH, StepTime, step_time
from ftmix.units import human_bytes

SEARCHED = ("sharding", "zero", "offload", "gc", "attn")


@dataclass(frozen=True)
class Candidate:
    mixture: Mixture
    memory: Estimate
    time: StepTime
    cpu_ram: float | None = None  # bytes of host RAM per node the job may use; None: no limit

    @property
    def fits_gpu(self) -> bool:
        return bool(self.memory.fits)

    @property
    def fits_cpu(self) -> bool:
        return self.cpu_ram is None or self.memory.cpu_bytes <= self.cpu_ram

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_cpu

    @property
    def over_gb(self) -> float:
        """How far the device total exceeds the usable memory (negative: headroom)."""
        return (self.memory.device_total - self.memory.gpu_memory * (1 - self.memory.safety_margin)) / GB

    def to_json(self) -> dict:
        return {"mixture": self.mixture.to_dict(), "label": self.mixture.label,
                "peak_gb": round(self.memory.peak / GB, 3), "device_total_gb": round(self.memory.device_total / GB, 3),
                "cpu_gb": round(self.memory.cpu_bytes / GB, 3), "step_time_s": round(self.time.total, 4),
                "fits": self.fits, "fits_gpu": self.fits_gpu, "fits_cpu": self.fits_cpu, "over_gb": round(self.over_gb, 3),
                "time": self.time.to_json()}


@dataclass(frozen=True)
class Plan:
    model: str
    gpu: str
    best: Candidate | None
    candidates: tuple[Candidate, ...]  # fitting first, each group by step time
    suggestion: str | None
    notes: tuple[str, ...] = ()  # why the winner won where it was a tie; host RAM beyond any server

    @property
    def faster_misfits(self) -> list[Candidate]:
        if self.best is None:
            return []
        return [c for c in self.candidates if not c.fits and c.time.total < self.best.time.total]

    @property
    def faster_fits(self) -> list[Candidate]:
        """Fitting candidates predicted faster than the winner, within the tie."""
        if self.best is None:
            return []
        return [c for c in self.candidates if c.fits and c.time.total < self.best.time.total]

    @property
    def runners_up(self) -> list[Candidate]:
        return [c for c in self.candidates if c.fits and c is not self.best][:3]

    def to_json(self) -> dict:
        return {"model": self.model, "gpu": self.gpu,
                "best": None if self.best is None else self.best.to_json(),
                "why": [{"label": c.mixture.label, "step_time_s": round(c.time.total, 4),
                         "over_gb": round(c.over_gb, 3)} for c in self.faster_misfits],
                "candidates": [c.to_json() for c in self.candidates], "message": self.suggestion,
                "notes": list(self.notes)}


def _options(gpu: GpuSpec, flags: dict, search_batch: bool, effective_batch: int) -> list[dict]:
    out = []
    shardings = [flags["sharding"]] if flags.get("sharding") else ["deepspeed", "fsdp2"]
    for sharding in shardings:
        out += _engine_options(gpu, dict(flags, sharding=sharding), search_batch, effective_batch)
    return out


def _engine_options(gpu: GpuSpec, flags: dict, search_batch: bool, effective_batch: int) -> list[dict]:
    """One engine's candidates: DeepSpeed ZeRO 0-3 with its offloads; FSDP2 FULL_SHARD (with or
    without CPUOffloadPolicy) and SHARD_GRAD_OP."""
    fsdp2 = flags["sharding"] == "fsdp2"
    zeros = [flags["zero"]] if flags.get("zero") is not None else ([2, 3] if fsdp2 else [0, 1, 2, 3])
    gcs = [flags["gc"]] if flags.get("gc") is not None else [False, True]
    attns = [flags["attn"]] if flags.get("attn") else (["fa2", "sdpa", "eager"] if gpu.flash_attention_2 else ["sdpa", "eager"])
    world = (flags.get("gpus") or 1) * (flags.get("nodes") or 1)
    if flags.get("micro_batch") is not None or not search_batch:
        batches = [flags.get("micro_batch") or 1]
    else:
        per_gpu = max(1, effective_batch // world)
        batches = [2 ** k for k in range(int(math.log2(per_gpu)) + 1)]
    out = []
    for zero in zeros:
        offloads = [flags["offload"]] if flags.get("offload") else (
            ["none"] if zero == 0 else ["none"] + ([] if fsdp2 else ["optimizer"]) + (["all"] if zero == 3 else []))
        for offload in offloads:
            for gc in gcs:
                for attn in attns:
                    for b in batches:
                        out.append(dict(flags, zero=zero, offload=offload, gc=gc, attn=attn, micro_batch=b))
    return out


def candidates(model: ModelSpec, gpu: GpuSpec, flags: dict, search_batch: bool = False,
               effective_batch: int = STUDY_EFFECTIVE_BATCH, constants: RuntimeConstants = DEFAULT,
               safety_margin: float = SAFETY_MARGIN, deepspeed: dict | None = None,
               cpu_ram: float | None = None, overheads=None) -> list[Candidate]:
    """Every mixture the open dimensions allow; ``cpu_ram`` (bytes per node) makes those needing
    more host memory for offload not fit."""
    _check_fixed(model, gpu, flags)
    if flags.get("micro_batch") is not None or not search_batch:
        world = (flags.get("gpus") or 1) * (flags.get("nodes") or 1)
        grad_accum(effective_batch, flags.get("micro_batch") or 1, world)  # the batch asked for, exactly
    found, first_error = [], None
    for option in _options(gpu, flags, search_batch, effective_batch):
        try:
            m = mixture_from_flags(gpu, **option)
            accum = grad_accum(effective_batch, m.micro_batch, m.world)
            mem = estimate(model, m, gpu, "analytic", safety_margin, deepspeed, overheads, accum)
        except FtmixError as exc:  # an impossible combination of open dimensions: skip it
            first_error = first_error or exc
            continue
        found.append(Candidate(m, mem, step_time(model, gpu, m, effective_batch, constants), cpu_ram))
    if not found:
        raise first_error or FtmixError("no candidate mixture")
    return sorted(found, key=lambda c: (not c.fits, c.time.total))


def _check_fixed(model: ModelSpec, gpu: GpuSpec, flags: dict) -> None:
    """Reject what the user fixed before searching what they left open (so the error names it)."""
    probe = dict(flags)
    probe["zero"] = 3 if flags.get("zero") is None else flags["zero"]
    probe["offload"] = flags.get("offload") or "none"
    probe["attn"] = flags.get("attn") or "sdpa"
    estimate(model, mixture_from_flags(gpu, **probe), gpu)


def plan(model: ModelSpec, gpu: GpuSpec, flags: dict, search_batch: bool = False,
         effective_batch: int = STUDY_EFFECTIVE_BATCH, constants: RuntimeConstants = DEFAULT,
         safety_margin: float = SAFETY_MARGIN, suggest: bool = True, deepspeed: dict | None = None,
         cpu_ram: float | None = None, overheads=None) -> Plan:
    """The fastest fitting mixture; LoRA versus full fine-tuning stays the user's choice (flags).
    With the user's DeepSpeed config its stage and offload stay fixed (the caller puts them in
    ``flags``) and its bucket sizes enter every estimate. ``cpu_ram``: host RAM per node;
    ``overheads``: a calibration's allocator slack and CUDA context (estimate.MemoryOverheads)."""
    if effective_batch <= 0:
        raise FtmixError(f"effective batch must be positive, got {effective_batch}")
    args = (search_batch, effective_batch, constants, safety_margin, deepspeed, cpu_ram, overheads)
    found = candidates(model, gpu, flags, *args)
    best, notes = _break_ties([c for c in found if c.fits])
    if best is not None and best.mixture.offload != "none" and cpu_ram is None \
            and best.memory.cpu_bytes > LARGEST_SERVER_RAM:
        notes += (f"it needs {best.memory.cpu_bytes / GB:,.0f} GB of host RAM per node for the offloaded states, "
                  f"more than a GPU server has (a DGX H100: {LARGEST_SERVER_RAM / GB:,.0f} GB); give your nodes' "
                  "RAM with --cpu-ram GB to plan within it",)
    if best is not None and not flags.get("sharding"):
        notes += _engine_note(best, [c for c in found if c.fits])
    message = None
    if best is None and suggest:
        message = _smallest_change(model, gpu, flags, *args)
        host_bound = [c for c in found if c.fits_gpu and not c.fits_cpu]
        if host_bound:
            least = min(c.memory.cpu_bytes for c in host_bound) / GB
            message += (f"; {len(host_bound)} mixture(s) fit the GPU but need more CPU RAM than the "
                        f"{cpu_ram / GB:,.0f} GB per node allowed (--cpu-ram; the least needs {least:,.0f} GB)")
    return Plan(model.name, gpu.name, best, tuple(found), message, notes)


TIE = 0.03  # step times this close are one prediction (docs/plan.md: the runtime model's resolution)
LARGEST_SERVER_RAM = 2.0e12  # bytes: the most host RAM a common 8-GPU server has (DGX H100: 2 TB)


def _break_ties(fitting: list[Candidate]) -> tuple[Candidate | None, tuple[str, ...]]:
    """The fastest fitting candidate; among those within ``TIE`` of it, no DeepSpeed on one GPU
    (nothing to shard, one engine less), then the least device memory, then the least host RAM."""
    if not fitting:
        return None, ()
    fastest = fitting[0]
    tied = [c for c in fitting if c.time.total <= fastest.time.total * (1 + TIE)]
    best = min(tied, key=lambda c: (not (c.mixture.world == 1 and c.mixture.zero == 0), c.memory.device_total,
                                    c.memory.cpu_bytes, c.time.total))
    if best is fastest:
        return best, ()
    why = ("no DeepSpeed on one GPU" if best.mixture.world == 1 and best.mixture.zero == 0
           and not (fastest.mixture.zero == 0) else "less memory")
    slower = 100 * (best.time.total / fastest.time.total - 1)
    return best, (f"{fastest.mixture.label} is predicted {slower:.1f}% faster, within the {100 * TIE:.0f}% the "
                  f"runtime model cannot tell apart: the tie goes to {why} "
                  f"({human_bytes(best.memory.device_total)} vs {human_bytes(fastest.memory.device_total)} on the "
                  "device)",)


def _engine_note(best: Candidate, fitting: list[Candidate]) -> tuple[str, ...]:
    """Why this engine: the other engine's fastest fitting mixture beside the winner (or that none
    of its mixtures fits)."""
    def name(c: Candidate) -> str:
        return "FSDP2" if c.mixture.fsdp2 else "DeepSpeed" if c.mixture.zero else "plain torch"

    if best.mixture.zero == 0:
        return ()  # no sharding engine at all: one GPU or plain DDP won
    rival = "DeepSpeed" if best.mixture.fsdp2 else "FSDP2"
    others = [c for c in fitting if name(c) == rival]
    if not others:
        return (f"engine: {name(best)}; no {rival} mixture fits",)
    other = min(others, key=lambda c: c.time.total)
    slower = 100 * (other.time.total / best.time.total - 1)
    pace = f"{slower:.1f}% slower" if slower >= 0 else f"{-slower:.1f}% faster (a tie)"
    return (f"engine: {name(best)}; the fastest {name(other)} mixture that fits, {other.mixture.label}, is {pace} "
            f"with {human_bytes(other.memory.device_total)} on the device (vs {human_bytes(best.memory.device_total)})",)


def _any_fits(model, gpu, flags, *args) -> bool:
    try:
        return candidates(model, gpu, flags, *args)[0].fits
    except FtmixError:
        return False


def _smallest_change(model, gpu, flags, *args) -> str:
    """Nothing fits: name the single changes that would make something fit."""
    ways = []
    seq = flags.get("seq_len") or 256
    shorter = seq // 2
    while shorter >= 64:
        if _any_fits(model, gpu, dict(flags, seq_len=shorter), *args):
            ways.append(f"a shorter context (--seq-len {shorter})")
            break
        shorter //= 2
    gpus, nodes = flags.get("gpus") or 1, flags.get("nodes") or 1
    search_batch, effective, *rest = args
    for _ in range(8):
        gpus, nodes = (gpus * 2, nodes) if gpus < 8 else (gpus, nodes * 2)
        # more GPUs than samples per step need a larger effective batch, said with the suggestion
        batch = max(effective, gpus * nodes * (flags.get("micro_batch") or 1))
        if _any_fits(model, gpu, dict(flags, gpus=gpus, nodes=nodes), search_batch, batch, *rest):
            ways.append(f"more GPUs ({gpus * nodes}: --gpus {gpus} --nodes {nodes}"
                        + (f" --effective-batch {batch})" if batch != effective else ")"))
            break
    for key, flag in (("offload", "--offload"), ("zero", "--zero"), ("gc", "--gc/--no-gc"), ("attn", "--attn")):
        if flags.get(key) is not None and _any_fits(model, gpu, dict(flags, **{key: None}), *args):
            ways.append(f"letting ftmix choose {flag} (drop it)")
    if (flags.get("lora") == 0) and _any_fits(model, gpu, dict(flags, lora=64), *args):
        ways.append("LoRA instead of full fine-tuning (--lora 64)")
    if (flags.get("micro_batch") or 1) > 1 and _any_fits(model, gpu, dict(flags, micro_batch=1), *args):
        ways.append("a smaller micro batch (--micro-batch 1)")
    total = (flags.get("gpus") or 1) * (flags.get("nodes") or 1)
    head = f"nothing fits {model.name} on {total} x {gpu.name}"
    return head + (": would fit with " + "; or ".join(ways) if ways else ": no single change found")
