"""What ftmix predicts for a trial before it runs: peak memory, step time, fits, for the GPU the
study is for. Torch-free: the train config's schema and its pre-flight shape reader, then estimate
and plan (``--mixture auto`` trials: the planner's fastest fitting mixture, as train would pick).
"""

from __future__ import annotations

import dataclasses

from ftmix.catalog import GpuSpec, ModelSpec, load_gpu
from ftmix.catalog import model_config as catalog_model_config
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.job.config import TrainConfig
from ftmix.job.preflight import model_spec, on_cpu
from ftmix.mixture import KEYS, Mixture, check_mixture, grad_accum
from ftmix.plan import plan, step_time
from ftmix.plan.constants import DEFAULT, RuntimeConstants
from ftmix.plan.search import SEARCHED


def model_config(config: dict) -> dict | None:
    """The HF config dict the trial builds (catalog entry or local config.json, plus overrides)."""
    found = catalog_model_config(config.get("model", "smollm2-135m"), config.get("model_overrides"))
    return None if found is None else found[0]


def trial_inputs(config: dict, gpu: GpuSpec | None) -> tuple[ModelSpec, Mixture] | None:
    """(the model shape, the mixture) a trial runs; None when the shape is unknown without a download."""
    cfg = TrainConfig(**config)
    spec = model_spec(cfg)
    if spec is None:
        return None
    return spec, check_mixture(cfg.to_mixture(gpu, cpu=on_cpu(cfg) and gpu is None), spec, gpu)


def predict(config: dict, gpu_name: str | None, constants: RuntimeConstants = DEFAULT) -> dict:
    """{label, mixture, predicted_peak_gb, predicted_step_s, predicted_fits, inputs} for one trial."""
    gpu_name = gpu_name or config.get("gpu")  # the GPU the study is predicted for (--gpu) wins
    gpu = load_gpu(gpu_name) if gpu_name else None
    limit = config.get("memory_limit_gb")  # the twin's limit (a CPU form's small GPU): verdicts honour it
    limit = float(limit) * 1e9 if limit else None
    effective_batch = int(config.get("effective_batch", 8))
    got = trial_inputs({k: v for k, v in config.items() if k != "mixture"}, gpu)
    if got is None:
        return {"note": "model shape unknown without a download: no prediction"}
    spec, m = got
    if config.get("mixture") == "auto":
        if gpu is None:
            raise FtmixError("a --mixture auto trial needs a GPU to plan for: --gpu or gpu: in the spec")
        # what the trial fixes stays; the planner's dimensions are open unless the spec gives them
        flags = {k: getattr(m, k) for k in KEYS if k not in SEARCHED}
        for key in SEARCHED:
            if config.get(key) is not None:
                flags[key] = config[key]
        result = plan(spec, gpu, flags, effective_batch=effective_batch, constants=constants)
        if limit is not None:  # auto falls back to the fastest that needs less, down to the limit
            under = [c for c in result.candidates if c.fits and c.memory.peak <= limit]
            result = dataclasses.replace(result, best=under[0] if under else None)
        if result.best is None:
            fastest = result.candidates[0] if result.candidates else None
            out = {"predicted_fits": 0, "label": None if fastest is None else fastest.mixture.label}
            if fastest is not None:
                out.update(predicted_peak_gb=round(fastest.memory.peak / 1e9, 4), mixture=fastest.mixture.to_dict())
            return out
        m = result.best.mixture
    accum = grad_accum(effective_batch, m.micro_batch, m.world)  # as ftmix train runs it
    est = estimate(spec, m, gpu, grad_accum=accum)
    fits = est.fits
    if limit is not None:
        fits = est.peak <= limit and fits is not False
    out = {"label": m.label, "mixture": m.to_dict(), "predicted_peak_gb": round(est.peak / 1e9, 6),
           "predicted_fits": None if fits is None else int(fits),
           "inputs": inputs_of(model_config(config), m, gpu, effective_batch, grad_accum=accum)}
    if gpu is not None:
        out["predicted_step_s"] = round(step_time(spec, gpu, m, effective_batch, constants).total, 6)
    return out


def inputs_of(hf_config: dict | None, m: Mixture, gpu: GpuSpec | None, effective_batch: int,
              memory_what: str = "allocated", grad_accum: int | None = None) -> dict:
    """What calibration needs to predict a trial again with other constants. ``grad_accum``: micro
    steps per optimizer step where known (the memory estimate depends on it)."""
    return {"model_config": hf_config, "mixture": m.to_dict(), "gpu": None if gpu is None else gpu.name,
            "effective_batch": effective_batch, "memory_what": memory_what, "grad_accum": grad_accum}
