"""``ftmix estimate --method simulate``: the exact peak of any causal LM transformers can build, at
full size on a CPU, by running the real code under fake tensors (no weights, no memory).

The model is built by ``ftmix.train.model.build_model`` (what ``ftmix train`` runs: attention
kernel, non-reentrant GC, PEFT LoRA with its dtypes), then two optimizer steps of two micro steps
each (one with ``grad_accum=1``) run as HF Trainer runs them at ``--zero 0``: autocast for mixed precision, the loss divided over
the accumulation, gradient clipping to 1.0, fused AdamW, ``zero_grad(set_to_none=True)``. The
device-memory twin (``ftmix.measure.twin``) counts every tensor, so the peak, its phase and the
breakdown by role are those of a real run (tests/measure/test_simulate.py compares with the twin
of real tiny runs). What no tensor holds (CUDA context, allocator slack, cuBLAS workspace) comes
from the analytic method's named constants.

One GPU without DeepSpeed runs whole under fake tensors; ``--attn fa2`` runs as SDPA on unpadded
rows. ZeRO stages and several ranks: see ``_sharded`` (model states sharded as the engines do,
activations from the one-rank simulation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ftmix.catalog import GpuSpec
from ftmix.errors import FtmixError
from ftmix.estimate.analytic import data_note, runtime_overheads
from ftmix.estimate.result import Estimate
from ftmix.measure.twin import DeviceTwin
from ftmix.mixture import Mixture, check_mixture

STEPS, MICRO_STEPS = 2, 2  # optimizer steps and micro steps each: the second step is a steady one
BREAKDOWN = {"parameters": ("parameter",), "gradients": ("gradient",), "optimizer": ("optimizer state", "fp32 master"),
             "zero_buffers": ("bucket", "deepspeed buffer"), "activations": ("activation",),
             "temporaries": ("temporary",)}


@contextlib.contextmanager
def _swappable(fake: FakeTensorMode):
    """PEFT's ``get_peft_model`` moves modules with ``Module._apply``, which swaps fake parameters
    with ``torch.utils.swap_tensors``; torch refuses a tensor that the fake converter's memo holds a
    weakref to (shared field notes, obstacle 1). Forget the memo before each swap."""
    import torch.utils

    original = torch.utils.swap_tensors

    def swap(a, b):
        converter = fake.fake_tensor_converter
        converter.tensor_memo.clear()
        describer = converter.meta_converter.describer
        describer.lookup_tensor.clear()
        describer.lookup_storage.clear()
        return original(a, b)

    torch.utils.swap_tensors = swap
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


@contextlib.contextmanager
def _fake_twin():
    """Fake tensors (PEFT's swaps allowed) and the device-memory twin counting them; warnings off."""
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    twin = DeviceTwin(virtual=True)
    with warnings.catch_warnings(), fake, _swappable(fake):
        warnings.simplefilter("ignore")
        twin.start()
        try:
            yield twin
        finally:
            twin.stop()


def simulate(config: dict, m: Mixture, name: str, gpu: GpuSpec | None = None, safety_margin: float = 0.05,
             deepspeed: dict | None = None, sharding: str = "deepspeed", grad_accum: int | None = None) -> Estimate:
    """Peak device bytes of ``ftmix train`` with mixture ``m`` on the model of ``config`` (a
    transformers config.json dict), as an Estimate in the analytic method's shape; with
    ``sharding="fsdp2"``, of rank 0 of ``m.world`` FSDP2 ranks (``ftmix.measure.fsdp``).
    ``grad_accum=1`` runs one micro step per optimizer step (the gradients set to None between
    steps); anything else two (kept between micro steps). DeepSpeed's stages keep their own
    gradient buffers either way."""
    from ftmix.estimate.sim_input import check_sharding

    check_sharding(sharding, m, "simulate", deepspeed, gpu)
    if sharding == "deepspeed":
        check_mixture(m, None, gpu)
    _check_model_type(config)
    micro_steps = 1 if grad_accum == 1 else MICRO_STEPS
    if sharding == "fsdp2":
        est = _fsdp2(config, m, name, gpu, safety_margin, micro_steps)
    elif m.zero or m.world > 1:
        est = _sharded(config, m, name, gpu, safety_margin, deepspeed)
    else:
        est = _one_rank(config, m, name, gpu, safety_margin, micro_steps)
    return dataclasses.replace(est, grad_accum=grad_accum, mixture=m)  # the mixture asked, as simulated


def _sharded(config: dict, m: Mixture, name: str, gpu: GpuSpec | None, safety_margin: float,
             deepspeed: dict | None) -> Estimate:
    """N ranks and DeepSpeed stages: the model states, buckets and gathered parameters per rank as
    the engines shard them (the analytic method's, equal to the device-memory twin of the real
    engines within 1% on the conformance grid), with the activations of the real model code: the
    simulation of one rank without DeepSpeed adds its difference from the analytic activations of
    that same one-rank mixture (zero for the architectures the analytic method models exactly)."""
    from ftmix.catalog import spec_from_hf_config
    from ftmix.estimate.analytic import analytic_estimate

    spec = spec_from_hf_config(config, name)
    one = m.with_(zero=0, offload="none", gpus=1, nodes=1)
    if m.zero and m.precision in ("bf16", "fp16"):
        # DeepSpeed runs the whole module, adapters included, in 16 bits without autocast: the
        # activations of pure 16-bit training, not of HF Trainer's autocast
        one = one.with_(precision=f"{m.precision}-true")
    simulated = _one_rank(config, one, name, None, safety_margin)
    residual = simulated.peak - analytic_estimate(spec, one).peak
    est = analytic_estimate(spec, m, None if gpu is None else float(gpu.memory_bytes),
                            gpu.name if gpu else None, safety_margin, deepspeed)
    breakdown = dict(est.breakdown)
    breakdown["activations"] = max(0.0, breakdown.get("activations", 0.0) + residual)
    note = (f"{m.world} rank(s), ZeRO-{m.zero}: model states sharded as the engine does (the analytic method's, "
            f"conformance-checked); activations simulated on one rank ({residual / 1e9:+.3f} GB vs the analytic terms)")
    return dataclasses.replace(est, method="simulate", breakdown=breakdown,
                               overheads=runtime_overheads(breakdown, m), notes=est.notes + (note,))


def _one_rank(config: dict, m: Mixture, name: str, gpu: GpuSpec | None, safety_margin: float,
              micro_steps: int = MICRO_STEPS) -> Estimate:
    from ftmix.train.model import ModelSource, build_model

    notes, asked = (), m
    if m.attn == "fa2":
        # CPU has no FlashAttention-2; PyTorch's SDPA without a mask keeps what it keeps (output,
        # log-sum-exp, K/V at their own width): unpadded rows, as FA2's varlen path runs them
        m = m.with_(attn="sdpa", packing=True)
        notes = ("fa2 simulated as SDPA on unpadded rows (the same saved tensors)",)
    with _fake_twin() as twin:
        model = build_model(ModelSource("catalog-config", name, config=dict(config)), m, "cpu").model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        cannot = f"{name} cannot be simulated with {m.label}"
        report, total, trainable = measure_steps(model, optimizer, m, twin, cannot, micro_steps=micro_steps)
    est = _estimate(report, m, name, gpu, safety_margin, total, trainable, notes)
    if asked is m:
        return est
    # reported as asked: FA2 keeps what SDPA on unpadded rows keeps, padded or packed
    kept = tuple(data_note(asked) if n == data_note(m) else n for n in est.notes)
    return dataclasses.replace(est, mixture=asked, notes=kept)


def measure_steps(model, optimizer, m: Mixture, twin: DeviceTwin, cannot: str, autocast: bool = True, ids=None,
                  micro_steps: int = MICRO_STEPS):
    """Run the steps under the twin: (its report, all parameters, trainable parameters). An op
    without a fake-tensor (meta) kernel for these dtypes (grouped_mm of fp32 experts in
    mixed-precision full fine-tuning) is one FtmixError starting with ``cannot``."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    twin.watch_model(model)
    twin.watch_step(optimizer)
    try:
        run_steps(model, optimizer, params, m, twin, autocast, ids, micro_steps)
    except (RuntimeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FtmixError(f"{cannot}: {first}") from None
    with twin.paused():
        twin.mark_model(model)
        return twin.report(), sum(p.numel() for p in model.parameters()), sum(p.numel() for p in params)


def _fsdp2(config: dict, m: Mixture, name: str, gpu: GpuSpec | None, safety_margin: float,
           micro_steps: int = MICRO_STEPS) -> Estimate:
    """Rank 0 of ``m.world`` FSDP2 ranks under a fake process group: the real ``fully_shard`` code
    at full size (tests/measure/test_fsdp.py: equal to a real gloo run's twin)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from ftmix.measure import fsdp
    from ftmix.train.model import ModelSource, build_model

    if dist.is_initialized():
        raise FtmixError("--sharding fsdp2 simulates its own process group; this process already has one")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=m.world)
    try:
        mesh = init_device_mesh("cpu", (m.world,))  # before fake mode: the mesh reads its ranks' values
        with _fake_twin() as twin:
            model = build_model(ModelSource("catalog-config", name, config=dict(config)),
                                fsdp.one_process_mixture(m), "cpu").model
            layers = fsdp.shard(model, m, mesh)
            twin.reset_peak()  # built whole, then sharded: see fsdp.shard
            optimizer = fsdp.optimizer_for([p for p in model.parameters() if p.requires_grad])
            cannot = f"{name} cannot be simulated under FSDP2 with {m.label}"
            report, total, trainable = measure_steps(model, optimizer, m, twin, cannot, autocast=False,
                                                     micro_steps=micro_steps)
    finally:
        dist.destroy_process_group()
    strategy = "FULL_SHARD" if fsdp.reshard_after_forward(m) else "SHARD_GRAD_OP"
    note = (f"FSDP2 fully_shard ({strategy}, like ZeRO-{m.zero}) over {layers} decoder layers and the root: rank 0 "
            f"of {m.world}, simulated with a fake process group")
    return dataclasses.replace(_estimate(report, m, name, gpu, safety_margin, total, trainable, (note,)),
                               sharding="fsdp2")


def _check_model_type(config: dict) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise FtmixError(f"transformers {_version()} cannot build model_type {config.get('model_type')!r}")


def _version() -> str:
    import transformers

    return transformers.__version__


def run_steps(model, optimizer, params, m: Mixture, twin: DeviceTwin, autocast: bool = True, ids=None,
              micro_steps: int = MICRO_STEPS) -> None:
    """STEPS optimizer steps of ``micro_steps`` micro steps each, the loss divided over them, clipping to
    1.0, ``zero_grad(set_to_none=True)``. ``autocast``: HF Trainer's mixed precision (FSDP2 casts
    through its policy instead). ``ids``: real token ids (checks on real tensors), else zeros."""
    mixed = autocast and m.precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if m.precision.startswith("bf16") else torch.float16
    for step in range(1, STEPS + 1):
        twin.begin_step(step)
        for _ in range(micro_steps):
            batch = ids if ids is not None else torch.zeros(m.micro_batch, m.seq_len, dtype=torch.long)
            mask = None  # packed rows carry none
            if not m.packing:
                # padded rows carry a mask (SDPA then repeats grouped K/V); one padded token, as real
                # data has: transformers drops an all-ones mask (a data-dependent check that a fake
                # tensor cannot answer, so under fake tensors the mask always stays)
                mask = torch.ones_like(batch)
                mask[:, -1] = 0
            with torch.autocast("cpu", dtype=dtype, enabled=mixed):
                loss = model(input_ids=batch, attention_mask=mask, labels=batch).loss / micro_steps
            loss.backward()
            del loss
        twin.set_phase("optimizer step")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with twin.paused():
            twin.mark_optimizer(optimizer)
        twin.set_phase("between steps")


ROLE_WORDS = {"parameter": "weights", "fp32 master": "fp32 master weights", "optimizer state": "optimizer states",
              "bucket": "gradient buckets", "gradient": "gradients", "deepspeed buffer": "DeepSpeed buffers",
              "activation": "activations kept for the backward", "temporary": "temporary buffers"}
PARTS = (("attention", "attention"), ("attn", "attention"), ("loss", "the loss"), ("nll", "the loss"),
         ("cross_entropy", "the loss"), ("softmax", "the loss"), ("lm_head", "the output head"), ("lora", "LoRA"),
         ("mlp", "the MLP"), ("embedding", "the embeddings"), ("norm", "the norms"), ("adam", "AdamW"))


def holder(site: dict) -> str:
    """A top allocation site in a user's terms: what it holds, for which part, how much (the
    library function in brackets)."""
    from ftmix.units import human_bytes

    where = site["site"].rsplit(":", 1)[-1]
    low = site["site"].lower()
    part = next((name for key, name in PARTS if key in low), None)
    what = ROLE_WORDS.get(site.get("role"), site.get("role") or "tensors")
    return f"{what}{' of ' + part if part else ''} {human_bytes(site['bytes'])} ({where})"


def _estimate(report: dict, m: Mixture, name: str, gpu: GpuSpec | None, safety_margin: float, total: int,
              trainable: int, notes: tuple[str, ...] = ()) -> Estimate:
    roles = report["device_by_role"]
    breakdown = {key: float(sum(roles.get(r, 0) for r in names)) for key, names in BREAKDOWN.items()}
    left = report["device_peak_bytes"] - sum(breakdown.values())
    breakdown["temporaries"] += left  # roles the twin names beyond these (none today)
    at = report["device_peak_at"] or {}
    where = f"peak at: {at.get('phase')} of step {at.get('step')} (simulated under fake tensors)"
    top = ", ".join(holder(s) for s in report["device_top_sites"][:3])
    return Estimate(method="simulate", model=name, gpu=gpu.name if gpu else None, mixture=m, total_params=total,
                    trainable_params=trainable, breakdown=breakdown, overheads=runtime_overheads(breakdown, m),
                    gpu_memory=None if gpu is None else float(gpu.memory_bytes), safety_margin=safety_margin,
                    notes=(where, data_note(m), f"largest holders at the peak: {top}") + notes)
