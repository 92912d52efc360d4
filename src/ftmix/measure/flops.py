"""The FLOPs of one real micro step, counted by torch's ``FlopCounterMode``: the check of the
torch-free kernel list (``ftmix.plan.kernels``). Tiny models run for real; full-size ones under
fake tensors (shapes only, no memory), as the simulation builds them.

On CPU, SDPA runs ``_scaled_dot_product_flash_attention_for_cpu``, which torch's counter does not
list; it is the flash algorithm, so it is counted with torch's own SDPA formulas
(``sdpa_flop_count``, ``sdpa_backward_flop_count``), as the GPU's flash kernel is.
bitsandbytes' fused 4-bit GEMM is counted as the matmul it computes.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ftmix.job.source import ModelSource
from ftmix.mixture import Mixture
from ftmix.model.build import build_model

aten = torch.ops.aten
CPU_FLASH = aten._scaled_dot_product_flash_attention_for_cpu
CPU_FLASH_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _gemm_4bit(a_shape, b_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    rows = math.prod(a_shape[:-1])
    return 2 * rows * weight_shape[0] * weight_shape[1]


def counter() -> FlopCounterMode:
    """torch's counter, with the CPU flash attention kernels counted as the GPU's are, and
    bitsandbytes' fused 4-bit GEMM (``bitsandbytes::gemm_4bit``: de-quantize and multiply, the
    forward of ``MatMul4Bit``) as the product it computes."""
    table = {CPU_FLASH: _cpu_flash, CPU_FLASH_BACKWARD: _cpu_flash_backward}
    try:
        # lazy: importing bitsandbytes registers its ops; a 16-bit step needs none
        import bitsandbytes  # noqa: F401

        table[torch.ops.bitsandbytes.gemm_4bit] = _gemm_4bit
    except ImportError:
        pass
    return FlopCounterMode(display=False, custom_mapping=table)


def micro_step_flops(model, m: Mixture) -> tuple[int, dict]:
    """(total FLOPs, FLOPs by aten op) of one forward and backward of ``model`` on a micro batch,
    HF Trainer's way (autocast under mixed precision; one padded token, as measure_steps runs it)."""
    model.train()
    mixed = m.precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if m.precision.startswith("bf16") else torch.float16
    ids = torch.zeros(m.micro_batch, m.seq_len, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[:, -1] = 0
    count = counter()
    with count, torch.autocast("cpu", dtype=dtype, enabled=mixed):
        loss = model(input_ids=ids, attention_mask=None if m.packing else mask, labels=ids).loss
        loss.backward()
    by_op = Counter()
    for op, flops in count.get_flop_counts().get("Global", {}).items():
        by_op[str(op)] += flops
    return count.get_total_flops(), dict(by_op)


def count_flops(config: dict, m: Mixture, fake: bool) -> tuple[int, dict]:
    """Build the model of ``config`` for one process (``build_model``) and count one micro step;
    ``fake``: under fake tensors (full size)."""
    source = ModelSource("catalog-config", "flops-check", config=dict(config))
    one = m.with_(sharding="deepspeed", zero=0, offload="none", gpus=1, nodes=1)
    context = contextlib.nullcontext()
    if fake:
        from ftmix.measure.simulate import fake_tensors  # lazy: the simulation's fake mode, for full size

        context = fake_tensors()
    with warnings.catch_warnings(), context:
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = build_model(source, one, "cpu", quantize_in_memory=fake).model
        return micro_step_flops(model, one)
