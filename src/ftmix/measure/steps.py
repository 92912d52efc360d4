"""The training steps the simulation and the FSDP2 check run under the device-memory twin, as HF
Trainer runs them at ``--zero 0``: the loss divided over the accumulation, clipping to 1.0, fused or
foreach AdamW, ``zero_grad(set_to_none=True)``."""

from __future__ import annotations

import torch

from ftmix.errors import FtmixError
from ftmix.measure.twin import DeviceTwin
from ftmix.mixture import Mixture

STEPS, MICRO_STEPS = 2, 2  # optimizer steps and micro steps each: the second step is a steady one


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
