"""``ftmix estimate --method simulate``: the exact peak of any causal LM transformers can build, at
full size on a CPU, by running the real code under fake tensors (no weights, no memory).

The model is built by ``ftmix.model.build.build_model`` (what ``ftmix train`` runs: attention
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
import torch.distributed as dist
import torch.utils
import transformers
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.device_mesh import init_device_mesh
from torch.testing._internal.distributed.fake_pg import FakeStore
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from ftmix.catalog import GpuSpec, spec_from_hf_config
from ftmix.engines.fsdp2 import FSDP2, one_process_mixture, optimizer_for, reshard_after_forward
from ftmix.errors import FtmixError
from ftmix.estimate.analytic import analytic_estimate, data_note, runtime_overheads
from ftmix.estimate.result import Estimate
from ftmix.estimate.sim_input import check_sharding
from ftmix.job.source import ModelSource
from ftmix.measure.steps import MICRO_STEPS, measure_steps
from ftmix.measure.twin import DeviceTwin
from ftmix.mixture import Mixture, check_mixture
from ftmix.model.build import build_model, optimizer_for_mixture
from ftmix.units import human_bytes

BREAKDOWN = {"parameters": ("parameter",), "gradients": ("gradient",), "optimizer": ("optimizer state", "fp32 master"),
             "zero_buffers": ("bucket", "deepspeed buffer"), "activations": ("activation",),
             "temporaries": ("temporary",)}


@contextlib.contextmanager
def _swappable(fake: FakeTensorMode):
    """PEFT's ``get_peft_model`` moves modules with ``Module._apply``, which swaps fake parameters
    with ``torch.utils.swap_tensors``; torch refuses a tensor that the fake converter's memo holds a
    weakref to (shared field notes, obstacle 1). Forget the memo before each swap."""
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
def _fake_quantized_weights():
    """PEFT's DoRA expands a quantized base weight by its class name (``dequantize_module_weight``:
    Params4bit, Int8Params); a fake one is a plain parameter with the same attributes
    (``model.build.quantize_in_place``): expand it with bitsandbytes' own functions alike, and give
    an FSDP2-gathered one its layer's quant state as ``Linear4bit.forward`` does."""
    # lazy: bitsandbytes loads with a simulation, never with the analytic method or the CLI
    import bitsandbytes as bnb
    from peft.tuners.lora import dora, layer

    original, copy = dora.dequantize_module_weight, dora.deepcopy

    def dequantize(module):
        weight = module.weight
        if getattr(weight, "quant_state", None) is not None and type(weight).__name__ != "Params4bit":
            return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
        if getattr(weight, "SCB", None) is not None and type(weight).__name__ != "Int8Params":
            return bnb.functional.int8_vectorwise_dequant(weight.CB, weight.SCB)
        return original(module)

    def deepcopy(module):
        # DoRA copies a Linear4bit before expanding it (for FSDP's sake); a deep copy of a fake
        # parameter drops its attributes, so it reads the layer itself (the copy is transient)
        return module if getattr(getattr(module, "weight", None), "quant_state", None) is not None else copy(module)

    fix = bnb.nn.modules.fix_4bit_weight_quant_state_from_module

    def restore_quant_state(module):
        # FSDP2 gathers a weight into a new plain parameter; bitsandbytes re-wraps it as Params4bit
        # with its layer's quant state, which torch cannot do to a fake tensor: set the attribute
        weight = module.weight
        if getattr(weight, "quant_state", None) is None and type(weight).__name__ != "Params4bit" \
                and getattr(module, "quant_state", None) is not None:
            weight.quant_state = module.quant_state
            return None
        return fix(module)

    dora.dequantize_module_weight = layer.dequantize_module_weight = dequantize
    dora.deepcopy = deepcopy
    bnb.nn.modules.fix_4bit_weight_quant_state_from_module = restore_quant_state
    try:
        yield
    finally:
        dora.dequantize_module_weight = layer.dequantize_module_weight = original
        dora.deepcopy = copy
        bnb.nn.modules.fix_4bit_weight_quant_state_from_module = fix


@contextlib.contextmanager
def fake_tensors():
    """Fake tensors as the simulation uses them: PEFT's swaps allowed, bitsandbytes' weights faked."""
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake, _swappable(fake), _fake_quantized_weights():
        yield


@contextlib.contextmanager
def _fake_twin():
    """Fake tensors (PEFT's swaps allowed) and the device-memory twin counting them; warnings off."""
    twin = DeviceTwin(virtual=True)
    with warnings.catch_warnings(), fake_tensors():
        warnings.simplefilter("ignore")
        twin.start()
        try:
            yield twin
        finally:
            twin.stop()


def simulate(config: dict, m: Mixture, name: str, gpu: GpuSpec | None = None, safety_margin: float = 0.05,
             deepspeed: dict | None = None, grad_accum: int | None = None) -> Estimate:
    """Peak device bytes of ``ftmix train`` with mixture ``m`` on the model of ``config`` (a
    transformers config.json dict), as an Estimate in the analytic method's shape; with
    ``m.sharding == "fsdp2"``, of rank 0 of ``m.world`` FSDP2 ranks (``ftmix.engines.fsdp2``).
    ``grad_accum=1`` runs one micro step per optimizer step (the gradients set to None between
    steps); anything else two (kept between micro steps). DeepSpeed's stages keep their own
    gradient buffers either way."""
    check_sharding(m, "simulate")
    check_mixture(m, None, gpu)
    _check_model_type(config)
    micro_steps = 1 if grad_accum == 1 else MICRO_STEPS
    if m.fsdp2:
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
    notes, asked = (), m
    if m.attn == "fa2":
        # CPU has no FlashAttention-2; PyTorch's SDPA without a mask keeps what it keeps (output,
        # log-sum-exp, K/V at their own width): unpadded rows, as FA2's varlen path runs them
        m = m.with_(attn="sdpa", packing=True)
        notes = ("fa2 simulated as SDPA on unpadded rows (the same saved tensors)",)
    with _fake_twin() as twin:
        model = build_model(ModelSource("catalog-config", name, config=dict(config)), m, "cpu",
                            quantize_in_memory=True).model
        if m.quantize != "none":
            twin.reset_peak()  # built in 16 bits, then quantized: a real job loads the quantized weights
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = optimizer_for_mixture(params, m)
        cannot = f"{name} cannot be simulated with {m.label}"
        report, total, trainable = measure_steps(model, optimizer, m, twin, cannot, micro_steps=micro_steps)
    est = _estimate(report, m, name, gpu, safety_margin, total, trainable, notes)
    if asked is m:
        return est
    # reported as asked: FA2 keeps what SDPA on unpadded rows keeps, padded or packed
    kept = tuple(data_note(asked) if n == data_note(m) else n for n in est.notes)
    return dataclasses.replace(est, mixture=asked, notes=kept)


def _fsdp2(config: dict, m: Mixture, name: str, gpu: GpuSpec | None, safety_margin: float,
           micro_steps: int = MICRO_STEPS) -> Estimate:
    """Rank 0 of ``m.world`` FSDP2 ranks under a fake process group: the real ``fully_shard`` code
    at full size (tests/measure/test_fsdp.py: equal to a real gloo run's twin)."""
    if dist.is_initialized():
        raise FtmixError("--sharding fsdp2 simulates its own process group; this process already has one")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=m.world)
    try:
        mesh = init_device_mesh("cpu", (m.world,))  # before fake mode: the mesh reads its ranks' values
        with _fake_twin() as twin:
            model = build_model(ModelSource("catalog-config", name, config=dict(config)),
                                one_process_mixture(m), "cpu", quantize_in_memory=True, sharded_base=True).model
            layers = FSDP2.shard(model, m, mesh)
            twin.reset_peak()  # built whole, then sharded: see engines.fsdp2.shard
            optimizer = optimizer_for([p for p in model.parameters() if p.requires_grad])
            cannot = f"{name} cannot be simulated under FSDP2 with {m.label}"
            report, total, trainable = measure_steps(model, optimizer, m, twin, cannot, autocast=False,
                                                     micro_steps=micro_steps)
    finally:
        dist.destroy_process_group()
    strategy = "FULL_SHARD" if reshard_after_forward(m) else "SHARD_GRAD_OP"
    note = (f"FSDP2 fully_shard ({strategy}, like ZeRO-{m.zero}) over {layers} decoder layers and the root: rank 0 "
            f"of {m.world}, simulated with a fake process group")
    return _estimate(report, m, name, gpu, safety_margin, total, trainable, (note,))


def _check_model_type(config: dict) -> None:
    if config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise FtmixError(f"transformers {_version()} cannot build model_type {config.get('model_type')!r}")


def _version() -> str:
    return transformers.__version__


ROLE_WORDS = {"parameter": "weights", "fp32 master": "fp32 master weights", "optimizer state": "optimizer states",
              "bucket": "gradient buckets", "gradient": "gradients", "deepspeed buffer": "DeepSpeed buffers",
              "activation": "activations kept for the backward", "temporary": "temporary buffers"}
PARTS = (("attention", "attention"), ("attn", "attention"), ("loss", "the loss"), ("nll", "the loss"),
         ("cross_entropy", "the loss"), ("softmax", "the loss"), ("lm_head", "the output head"), ("lora", "LoRA"),
         ("mlp", "the MLP"), ("embedding", "the embeddings"), ("norm", "the norms"), ("adam", "AdamW"))


def holder(site: dict) -> str:
    """A top allocation site in a user's terms: what it holds, for which part, how much (the
    library function in brackets)."""
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
