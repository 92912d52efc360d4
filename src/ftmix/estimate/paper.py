"""The study's section-4 theory, exactly ("A Study of Optimizations for Fine-Tuning Large Language
Models", Singh et al., Microsoft, 2024: "Theory of GPU memory").

theta is the nominal parameter count ("7B" -> 7e9) as the study used it; models without one use
their exact count. Model states: (2 + 2 + K) theta with K = 12, partitioned per ZeRO stage over
N_d GPUs; under LoRA the 2 theta of 16-bit parameters cover the whole base and gradients and
optimizer states cover the trainable parameters only. Activations: Korthikanti et al. 2022 eq. 1,
L * s * b * h * (34 + 5 a s / h) bytes, whatever the attention kernel or GC (the study's formula has
no term for either). ftmix's one extension: optimizer offload moves the K-byte states to CPU, and
parameter offload the parameters, as ZeRO-Offload does.
"""

from __future__ import annotations

from ftmix.catalog import ModelSpec
from ftmix.estimate.constants import ADAM_K
from ftmix.estimate.result import Estimate
from ftmix.estimate.states import trainable_params
from ftmix.mixture import Mixture


def korthikanti_activations(model: ModelSpec, m: Mixture) -> float:
    s, b, h, a = m.seq_len, m.micro_batch, model.hidden, model.heads
    return model.layers * s * b * h * (34 + 5 * a * s / h)


def paper_estimate(model: ModelSpec, m: Mixture, gpu_memory: float | None = None, gpu: str | None = None,
                   safety_margin: float = 0.0) -> Estimate:
    theta = model.nominal_params or float(model.total_params)
    exact_trainable = trainable_params(model, m)
    trainable = theta if m.lora == 0 else float(exact_trainable)
    n = m.world
    params, grads, opt = 2 * theta, 2 * trainable, ADAM_K * trainable
    if m.zero >= 1:
        opt /= n
    if m.zero >= 2:
        grads /= n
    if m.zero == 3:
        params /= n
    cpu = 0.0
    if m.offload in ("optimizer", "all"):
        cpu += opt * m.gpus
        opt = 0.0
    if m.offload == "all":
        cpu += params * m.gpus
        params = 0.0
    breakdown = {"parameters": params, "gradients": grads, "optimizer": opt,
                 "activations": korthikanti_activations(model, m)}
    return Estimate(method="paper", model=model.name, gpu=gpu, mixture=m,
                    total_params=int(theta), trainable_params=int(trainable), breakdown=breakdown,
                    cpu_bytes=cpu, gpu_memory=gpu_memory, safety_margin=safety_margin,
                    notes=("study section 4: nominal theta, 34 + 5as/h activations, no overheads",))
