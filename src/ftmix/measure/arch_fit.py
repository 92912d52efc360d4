"""``ftmix calibrate-arch``: fit the analytic method's activation terms for one architecture from
simulations of its real code (``ftmix.measure.simulate``) at two and three layers.

For each mixture class (LoRA or full fine-tuning, GC or not, sdpa or eager) the model is simulated
at L = 2 and 3 layers and three sequence lengths, and the analytic method is run on the same
shapes. The residual r(L, s) = simulated - analytic peak is fitted by least squares as
``L * (a*s + b*s^2) + a0*s + b0*s^2``: a per-layer part with the activations' linear term and the
attention scores' s-squared one (Korthikanti et al. 2022 eq. 1 has the same two) and a
model-level part. Where the analytic method is already within ``EXACT`` of every simulation of a
class, nothing is fitted for it: a fit would only carry the noise of which moment wins. Each fit
is then checked on a held-out simulation (8 layers, twice the longest fitted s) and dropped where
it does worse than no fit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from ftmix.catalog import spec_from_hf_config
from ftmix.errors import FtmixError
from ftmix.estimate.analytic import analytic_estimate
from ftmix.estimate.arch_fits import class_key, fingerprint
from ftmix.measure.simulate import simulate
from ftmix.mixture import mixture_from_flags

FIT_SEQ = (256, 512, 1024)
# two and three layers: with one, the peak can fall at a moment (the loss head's backward beside
# the only layer) that deeper models never see, and a per-layer slope from it misleads (measured)
LAYERS = (2, 3)
CLASSES = tuple(itertools.product((True, False), (False, True), ("sdpa", "eager")))  # (LoRA, GC, attention)
EXACT = 0.005
HELD_OUT_LAYERS = 8  # and twice the longest fitted length


def _mixture(lora: bool, gc: bool, attn: str, seq_len: int):
    return mixture_from_flags(None, zero=0, precision="bf16", micro_batch=1, lora=None if lora else 0, gc=gc,
                              attn=attn, seq_len=seq_len)


def _least_squares(rows: list[list[float]], values: list[float]) -> list[float]:
    """Solve the normal equations of rows x = values (a handful of unknowns, Gaussian elimination)."""
    n = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) for j in range(n)] + [sum(r[i] * v for r, v in zip(rows, values))]
         for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda k: abs(a[k][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for k in range(n):
            if k != col and a[col][col]:
                f = a[k][col] / a[col][col]
                a[k] = [x - f * y for x, y in zip(a[k], a[col])]
    return [a[i][n] / a[i][i] if a[i][i] else 0.0 for i in range(n)]


def fit_class(points: list[tuple[int, int, float, float]]) -> dict:
    """points: (layers, s, simulated, analytic). The per-layer and model-level terms."""
    if all(abs(sim - ana) <= EXACT * sim for _, _, sim, ana in points):
        return {"layer": [0.0, 0.0], "base": [0.0, 0.0]}
    # scaled columns keep the normal equations well conditioned (s up to thousands, s^2 millions)
    rows = [[layers * s / 1e3, layers * s * s / 1e6, s / 1e3, s * s / 1e6] for layers, s, _, _ in points]
    a, b, a0, b0 = _least_squares(rows, [sim - ana for _, _, sim, ana in points])
    return {"layer": [a / 1e3, b / 1e6], "base": [a0 / 1e3, b0 / 1e6]}


def _held_out(config: dict, name: str, lora: bool, gc: bool, attn: str, terms: dict, seq: int) -> dict:
    """The fit checked where it was not made: at HELD_OUT_LAYERS (or the model's own depth, if
    smaller) and s = ``seq``. A fit that does worse there than no fit is dropped: with few layers
    a model can peak at a moment its full depth never sees."""
    layers = min(HELD_OUT_LAYERS, int(config.get("num_hidden_layers") or HELD_OUT_LAYERS))
    cfg = dict(config, num_hidden_layers=layers)
    m = _mixture(lora, gc, attn, seq)
    simulated = simulate(cfg, m, name).peak
    analytic = analytic_estimate(spec_from_hf_config(cfg, name), m).peak
    (a, b), (a0, b0) = terms["layer"], terms["base"]
    s = seq
    fitted = analytic + layers * (a * s + b * s * s) + a0 * s + b0 * s * s
    return {"layers": layers, "seq_len": s, "simulated": simulated, "analytic": analytic, "fitted": fitted}


def fit_architecture(config: dict, name: str, seq_lens: tuple[int, ...] = FIT_SEQ,
                     progress: Callable[[str], None] | None = None) -> tuple[str, dict]:
    """(fingerprint, fit entry) for the architecture of ``config`` (a transformers config dict)."""
    classes, residuals, skipped = {}, [], {}
    for lora, gc, attn in CLASSES:
        key, points = class_key(_mixture(lora, gc, attn, seq_lens[0])), []
        for layers, s in itertools.product(LAYERS, seq_lens):
            cfg = dict(config, num_hidden_layers=layers)
            m = _mixture(lora, gc, attn, s)
            try:
                simulated = simulate(cfg, m, name).peak
            except FtmixError as exc:  # e.g. an architecture without an SDPA path
                skipped[key] = str(exc)
                if progress:
                    progress(f"{key}: not buildable")
                break
            analytic = analytic_estimate(spec_from_hf_config(cfg, name), m).peak
            points.append((layers, s, simulated, analytic))
            residuals.append({"class": key, "layers": layers, "seq_len": s, "simulated": simulated,
                              "analytic": analytic})
            if progress:
                progress(f"{key} L={layers} s={s}")
        if key not in skipped:
            classes[key] = fit_class(points)
            longest = min(2 * max(seq_lens), int(config.get("max_position_embeddings") or 2 * max(seq_lens)))
            held_out = _held_out(config, name, lora, gc, attn, classes[key], longest)
            residuals.append({"class": key, "held_out": True, **held_out})
            if abs(held_out["fitted"] / held_out["simulated"] - 1) > abs(held_out["analytic"] / held_out["simulated"] - 1):
                classes[key] = {"layer": [0.0, 0.0], "base": [0.0, 0.0]}  # the fit would not carry to depth
            if progress:
                progress(f"{key} held out")
    if not classes:
        raise FtmixError(f"no mixture class of {name} could be simulated: {next(iter(skipped.values()))}")
    fp = fingerprint(spec_from_hf_config(dict(config, num_hidden_layers=1), name))
    return fp, {"name": name, "fit_seq": list(seq_lens), "fit_layers": list(LAYERS), "classes": classes,
                "not_buildable": skipped, "residuals": residuals}


def simulations_per_fit(seq_lens: tuple[int, ...] = FIT_SEQ) -> int:
    return len(CLASSES) * (len(LAYERS) * len(seq_lens) + 1)
