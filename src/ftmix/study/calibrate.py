"""``ftmix study calibrate``: fit the runtime model's constants and the memory model's overheads to
the measured trials in a store, with every k-th trial held back, and say the prediction error before
and after on both parts.

Runtime: per GPU type (achievable FLOP/s and overheads are the hardware's), the constants that move
any fitted prediction are fitted by Levenberg-Marquardt in log space, minimizing the mean squared
log error of the step time plus a pull towards ftmix's defaults, ``prior`` x sum log(c / default)^2;
then every constant whose return to its default costs the fit less than 5% goes back, so the fit
moves the few constants the data speaks for and leaves the others at their literature values. Each constant stays inside its physical range (``plan.constants.RANGES``). A GPU
type with fewer than MIN_PER_GPU fitted step times keeps the defaults (one time cannot tell
compute from overhead); one set fitted on all GPUs together is written too, for other GPU types,
used only when the user says so (``--calibration-any-gpu``).
Memory: allocated peaks do not depend on the overheads; the allocator slack is fitted to reserved
peaks, then the CUDA context to device totals. A memory constant is kept only when it lowers the
fitted trials' error and raises no held-back trial's error (else the default stays, and the report
says so). Pure: no torch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields, replace

from ftmix.catalog import GpuSpec, ModelSpec, load_gpu, spec_from_hf_config
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.estimate.overheads import DEFAULT_OVERHEADS
from ftmix.estimate.overheads import RANGES as MEMORY_RANGES
from ftmix.estimate.overheads import MemoryOverheads, with_overheads
from ftmix.mixture import Mixture
from ftmix.plan.constants import DEFAULT, RANGES, RuntimeConstants
from ftmix.plan.runtime import step_time
from ftmix.study.published import accumulation

FORMAT = "ftmix-calibration"
PRIOR = 0.01  # weight of sum log(c / default)^2 against the mean squared log error
SPARSE_TOLERANCE = 0.05  # a constant goes back to its default when the fit loses less than this by it


@dataclass
class Observation:
    id: str
    source: str
    spec: ModelSpec
    mixture: Mixture
    gpu: GpuSpec | None
    effective_batch: int
    memory_what: str  # allocated | reserved | device_total
    peak_bytes: float | None
    step_s: float | None
    grad_accum: int | None = None  # micro steps per optimizer step, where the trial recorded it
    _base: object = None  # the estimate with default overheads, computed once

    def base_estimate(self):
        if self._base is None:
            self._base = estimate(self.spec, self.mixture, self.gpu, grad_accum=self.grad_accum)
        return self._base


def observations(rows: list[dict], gpu: str | None = None) -> tuple[list[Observation], list[dict]]:
    """Measured trials the model can predict again; the others with the reason."""
    out, skipped = [], []
    for r in rows:
        if r["status"] != "ok":
            continue
        inputs = r.get("inputs") or {}
        if not inputs.get("model_config") or not inputs.get("mixture"):
            skipped.append({"id": r["id"], "why": "no model shape or mixture recorded"})
            continue
        if gpu is not None and inputs.get("gpu") != gpu:
            continue
        try:
            spec = spec_from_hf_config(inputs["model_config"], name=r.get("trial_key") or r["id"])
            g = load_gpu(inputs["gpu"]) if inputs.get("gpu") else None
            m = Mixture(**inputs["mixture"])
        except (FtmixError, TypeError) as exc:
            skipped.append({"id": r["id"], "why": str(exc)})
            continue
        what = {"gpu_allocated": "allocated", "twin_device": "allocated"}.get(r.get("peak_what"), r.get("peak_what"))
        # a step time measured on a CPU has no GPU model to fit, whatever GPU it was predicted for
        step = r.get("step_s") if g is not None and r.get("device") != "cpu" else None
        peak = None if r.get("peak_gb") is None else r["peak_gb"] * 1e9
        if peak is None and step is None:
            continue
        out.append(Observation(r["id"], r.get("source") or "run", spec, m, g, int(inputs.get("effective_batch") or 8),
                               what or "allocated", peak, step, accumulation(inputs.get("grad_accum"))))
    return out, skipped


def predicted_peak(o: Observation, mem: MemoryOverheads) -> float:
    est = with_overheads(o.base_estimate(), mem)
    return {"allocated": est.peak, "reserved": est.reserved, "device_total": est.device_total}[o.memory_what]


def predicted_step(o: Observation, c: RuntimeConstants) -> float:
    return step_time(o.spec, o.gpu, o.mixture, o.effective_batch, c).total


def errors(obs: list[Observation], c, mem: MemoryOverheads) -> dict:
    """``c``: one set of runtime constants, or a function giving each observation its own."""
    pick = c if callable(c) else (lambda o: c)
    memory = [predicted_peak(o, mem) / o.peak_bytes - 1 for o in obs if o.peak_bytes]
    time = [predicted_step(o, pick(o)) / o.step_s - 1 for o in obs if o.step_s]
    return {"memory": stats(memory), "time": stats(time)}


def stats(errs: list[float]) -> dict:
    if not errs:
        return {"median": None, "worst": None, "n": 0}
    a = [abs(e) for e in errs]
    return {"median": round(statistics.median(a), 4), "worst": round(max(a), 4), "n": len(a)}


def split(obs: list[Observation], every: int) -> tuple[list[Observation], list[Observation]]:
    """(fitted, held back): every k-th observation, in the store's order, is held back."""
    if every < 2:
        raise FtmixError(f"--holdout-every must be 2 or more, got {every}")
    held = [o for i, o in enumerate(obs) if i % every == every - 1]
    return [o for i, o in enumerate(obs) if i % every != every - 1], held


def _bounds(name: str) -> tuple[float, float]:
    low, high, _ = RANGES[name]
    return max(low, 1e-12), high


# the link's efficiency only scales what the exposed-communication fractions scale already
NOT_FITTED = ("link_efficiency",)


def sensitive(obs: list[Observation], c: RuntimeConstants) -> list[str]:
    """The runtime constants that move at least one fitted step-time prediction by 0.1%."""
    base = [predicted_step(o, c) for o in obs]
    out = []
    for f in fields(RuntimeConstants):
        if f.name in NOT_FITTED:
            continue
        value = getattr(c, f.name)
        low, high = _bounds(f.name)
        probe = min(high, max(low, value * 1.5 if value else 1e-3))
        if probe == value:
            probe = max(low, value / 1.5)
        moved = [predicted_step(o, replace(c, **{f.name: probe})) for o in obs]
        if any(abs(m / b - 1) > 1e-3 for m, b in zip(moved, base)):
            out.append(f.name)
    return out


def _at(names: list[str], x, start: RuntimeConstants = DEFAULT) -> RuntimeConstants:
    """The constants at log-offsets ``x`` from the defaults, clipped to their physical ranges."""
    values = {}
    for name, offset in zip(names, x):
        low, high = _bounds(name)
        values[name] = min(high, max(low, (getattr(DEFAULT, name) or 1e-4) * math.exp(float(offset))))
    return replace(start, **values)


def _residuals(obs, names, x, prior: float):
    # lazy: numpy only for the fit
    import numpy as np

    c = _at(names, x)
    data = [math.log(predicted_step(o, c) / o.step_s) / math.sqrt(len(obs)) for o in obs]
    return np.array(data + [math.sqrt(prior) * float(v) for v in x]), sum(d * d for d in data)


def _levenberg_marquardt(obs, names, prior: float, iterations: int = 60):
    """Least squares in log space: min sum(log(pred/meas)^2)/n + prior * sum(log(c/default)^2)."""
    # lazy: numpy only for the fit
    import numpy as np

    x = np.zeros(len(names))
    low = np.array([math.log(_bounds(n)[0] / (getattr(DEFAULT, n) or 1e-4)) for n in names])
    high = np.array([math.log(_bounds(n)[1] / (getattr(DEFAULT, n) or 1e-4)) for n in names])
    r, _ = _residuals(obs, names, x, prior)
    cost, damping = float(r @ r), 1e-2
    for _ in range(iterations):
        jac = np.empty((len(r), len(names)))
        for j in range(len(names)):
            h = 1e-4 if x[j] + 1e-4 <= high[j] else -1e-4  # at its upper bound, step inwards
            step = np.zeros(len(names))
            step[j] = h
            jac[:, j] = (_residuals(obs, names, x + step, prior)[0] - r) / h
        grad, normal = jac.T @ r, jac.T @ jac
        while damping < 1e8:
            delta = np.linalg.solve(normal + damping * (np.diag(np.diag(normal)) + np.eye(len(names))), -grad)
            trial = np.clip(x + delta, low, high)
            r_new, _ = _residuals(obs, names, trial, prior)
            if float(r_new @ r_new) < cost:
                x, r, cost, damping = trial, r_new, float(r_new @ r_new), max(damping / 3, 1e-9)
                break
            damping *= 4
        else:
            break
        if float(np.max(np.abs(delta))) < 1e-7:
            break
    return x, _residuals(obs, names, x, prior)[1]


def fit_runtime(obs: list[Observation], prior: float = PRIOR) -> tuple[RuntimeConstants, list[str]]:
    """Levenberg-Marquardt on the constants that move any prediction, then each constant the data
    barely needs (its reset to the default costs under SPARSE_TOLERANCE of the fit) goes back to
    its default: the fit moves the few constants the trials speak for."""
    timed = [o for o in obs if o.step_s]
    if not timed:
        return DEFAULT, []
    names = sensitive(timed, DEFAULT)
    if not names:
        return DEFAULT, []
    x, loss = _levenberg_marquardt(timed, names, prior)
    kept = list(names)
    for name in sorted(names, key=lambda n: abs(float(x[names.index(n)]))):
        rest = [n for n in kept if n != name]
        if not rest:
            break
        loss_rest = _levenberg_marquardt(timed, rest, prior)[1]
        if loss_rest <= loss * (1 + SPARSE_TOLERANCE) + 1e-6:
            kept = rest
    x_final, _ = _levenberg_marquardt(timed, kept, prior)
    return _at(kept, x_final), names


def fit_memory(fitted: list[Observation], held: list[Observation]) -> tuple[MemoryOverheads, list[str]]:
    """Slack from reserved peaks, then the context from device totals, each kept only when it helps
    the fitted trials and harms no held-back one."""
    mem, notes = DEFAULT_OVERHEADS, []
    every_fitted = [o for o in fitted if o.peak_bytes]
    for name, what in (("allocator_slack", "reserved"), ("cuda_context_bytes", "device_total")):
        fit_obs = [o for o in fitted if o.peak_bytes and o.memory_what == what]
        held_obs = [o for o in held if o.peak_bytes and o.memory_what in ("reserved", "device_total")]
        if not fit_obs:
            continue
        low, high = MEMORY_RANGES[name]

        def loss(m):
            return sum((predicted_peak(o, m) / o.peak_bytes - 1) ** 2 for o in fit_obs)

        grid = [low + (high - low) * i / 400 for i in range(401)]
        best = min((replace(mem, **{name: v}) for v in grid), key=loss)
        if loss(best) >= loss(mem) - 1e-12:
            continue
        if _median(every_fitted, best) > _median(every_fitted, mem) + 1e-9:
            notes.append(f"{name}: the fit ({getattr(best, name):.4g}) would raise the fitted trials' median "
                         "memory error; the default stays")
            continue
        worse = [o.id for o in held_obs
                 if abs(predicted_peak(o, best) / o.peak_bytes - 1) > abs(predicted_peak(o, mem) / o.peak_bytes - 1) + 1e-9]
        if worse:
            notes.append(f"{name}: the fit ({getattr(best, name):.4g}) would raise the error of held-back "
                         f"{', '.join(worse)}; the default stays")
            continue
        mem = best
    return mem, notes


MIN_PER_GPU = 2  # fitted step times a GPU type needs for constants of its own


def _median(obs: list[Observation], mem: MemoryOverheads) -> float:
    return statistics.median(abs(predicted_peak(o, mem) / o.peak_bytes - 1) for o in obs)


def calibrate(rows: list[dict], every: int = 3, gpu: str | None = None, prior: float = PRIOR) -> dict:
    """The report and calibration file: runtime constants per GPU type (``per_gpu``), the
    all-GPU set (``constants``), memory overheads, errors before and after on both parts."""
    obs, skipped = observations(rows, gpu)
    if not obs:
        raise FtmixError("no measured trial to calibrate on (run a study, or `ftmix study import` measurements)")
    fitted, held = split(obs, every)
    runtime, names = fit_runtime(fitted, prior)
    # GPUs with a step time to fit (a CPU trial predicted for a GPU has none)
    gpus = sorted({o.gpu.name for o in fitted if o.gpu is not None and o.step_s})
    per_gpu: dict[str, RuntimeConstants] = {}
    for name in gpus:
        own = [o for o in fitted if o.gpu is not None and o.gpu.name == name and o.step_s]
        if len(own) >= MIN_PER_GPU:
            per_gpu[name] = fit_runtime(own, prior)[0]

    def constants_for(o: Observation) -> RuntimeConstants:
        """What a user gets for this trial's GPU: its own constants, else the defaults."""
        return per_gpu.get(o.gpu.name, DEFAULT) if o.gpu is not None else DEFAULT

    memory, notes = fit_memory(fitted, held)
    nothing = not per_gpu and runtime == DEFAULT and memory == DEFAULT_OVERHEADS
    if nothing:
        why = ("no trial has a step time measured on a GPU (CPU step times are not a GPU's)" if not gpus
               else "the measurements asked for no change")
        notes = [f"nothing was fitted: {why}; every constant keeps ftmix's default"] + notes
    report = {
        "format": FORMAT, "version": 1,
        "gpu": gpu or (gpus[0] if len(gpus) == 1 else None),
        "fitted_on_gpus": gpus,
        "constants": _changed(runtime),
        "per_gpu": {name: {"constants": _changed(c)} for name, c in per_gpu.items()},
        "memory": {k: _round(v) for k, v in memory.to_dict().items() if v != getattr(DEFAULT_OVERHEADS, k)},
        "fitted_constants": names, "fitted": not nothing,
        "holdout_every": every, "prior": prior,
        "trials": {"fitted": len(fitted), "held_back": len(held), "skipped": skipped},
        "errors": {
            "fitted": {"before": errors(fitted, DEFAULT, DEFAULT_OVERHEADS), "after": errors(fitted, constants_for, memory)},
            "held_back": {"before": errors(held, DEFAULT, DEFAULT_OVERHEADS), "after": errors(held, constants_for, memory)},
        },
        "rows": [_row(o, constants_for(o), memory, o in held) for o in obs],
        "notes": notes,
    }
    return report


def _changed(c: RuntimeConstants) -> dict:
    return {f.name: _round(getattr(c, f.name)) for f in fields(RuntimeConstants)
            if getattr(c, f.name) != getattr(DEFAULT, f.name)}


def _row(o: Observation, c, mem, held: bool) -> dict:
    out = {"id": o.id, "source": o.source, "held_back": held, "label": o.mixture.label,
           "gpu": o.gpu.name if o.gpu else None}
    if o.peak_bytes:
        out["memory"] = {"what": o.memory_what, "measured_gb": round(o.peak_bytes / 1e9, 4),
                         "before": round(predicted_peak(o, DEFAULT_OVERHEADS) / o.peak_bytes - 1, 4),
                         "after": round(predicted_peak(o, mem) / o.peak_bytes - 1, 4)}
    if o.step_s:
        out["time"] = {"measured_s": round(o.step_s, 5), "before": round(predicted_step(o, DEFAULT) / o.step_s - 1, 4),
                       "after": round(predicted_step(o, c) / o.step_s - 1, 4)}
    return out


def _round(x: float) -> float:
    return float(f"{x:.6g}")
