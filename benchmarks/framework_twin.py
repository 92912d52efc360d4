"""Another framework's training step at full size under fake tensors, counted by the device-memory
twin: shared by benchmarks/litgpt_twin.py and torchtune_twin.py (issue 8: a source that misses the
goal is explained by its own framework's code, measured)."""

from __future__ import annotations

import warnings
from typing import Callable


def micro_steps(row: dict) -> int:
    """Micro steps per simulated optimizer step: one where the row's loop accumulates no
    gradients (they are set to None before each forward), else two (kept between them)."""
    return 1 if row.get("grad_accum") == 1 else 2


def twin_steps(make: Callable, forward_loss: Callable, micro_steps: int = 2, steps: int = 2,
               reset_after_make: bool = False) -> dict:
    """``make()`` builds (model, optimizer) under fake tensors; ``forward_loss(model, loop)`` runs
    one micro step's forward and returns its loss, keeping in the dict ``loop`` what the
    framework's training loop keeps in its local variables (its logits: alive through the
    backward and, until they are rebound, through the next forward). Runs ``steps`` optimizer
    steps of ``micro_steps`` micro steps (the loss divided over them, ``zero_grad(set_to_none=True)``
    after each step) and returns the twin's report (the device peak, where it fell, by role and by
    code site). ``reset_after_make``: forget the peaks of the build (a model built in 16 bits, then
    quantized, where the framework loads quantized weights)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftmix.measure.twin import DeviceTwin

    twin = DeviceTwin(virtual=True)
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True):
        warnings.simplefilter("ignore")
        twin.start()
        try:
            model, optimizer = make()
            if reset_after_make:
                twin.reset_peak()
            twin.watch_model(model)
            twin.watch_step(optimizer)
            loop = {}
            for step in range(1, steps + 1):
                twin.begin_step(step)
                for _ in range(micro_steps):
                    loss = forward_loss(model, loop)
                    (loss / micro_steps).backward()
                    del loss
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            with twin.paused():
                twin.mark_model(model)
                return twin.report()
        finally:
            twin.stop()
