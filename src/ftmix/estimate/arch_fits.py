"""Per-architecture corrections to the analytic activation terms, fitted by ``ftmix calibrate-arch``
from simulations of the real model code (``ftmix.measure.arch_fit``). Torch-free: the analytic
method reads them in microseconds.

A fit holds, per mixture class (LoRA or full, GC or not, sdpa or eager), the difference between
the simulated and the analytic peak of one sequence as ``L * (a*s + b*s^2) + (a0*s + b0*s^2)``: a
per-layer term linear in s plus the s-squared attention term, and a model-level one. It is keyed
by the shape that determines activations (model type and widths, not depth), so every depth of a
fitted architecture uses it. Fits ship as package data (``data/arch_fits.json``, made for the
catalog's models); ``calibrate-arch`` adds a user's own to ``user_fits_path()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ftmix.catalog import ModelSpec
from ftmix.catalog.models import FITTED_ARCHITECTURES
from ftmix.errors import FtmixError
from ftmix.mixture import Mixture

PACKAGED = "data/arch_fits.json"


def fingerprint(model: ModelSpec) -> str:
    """What fixes a layer's activations: the model type and widths (not the depth)."""
    return (f"{model.model_type}:h{model.hidden}:i{model.intermediate}:a{model.heads}:kv{model.kv_heads}"
            f":d{model.head_dim}:v{model.vocab}:{'tied' if model.tied_embeddings else 'untied'}")


def class_key(m: Mixture) -> str:
    """The mixture class a fit is made for; FlashAttention-2 keeps what SDPA keeps on unpadded rows."""
    attn = "eager" if m.attn == "eager" else "sdpa"
    return f"{'lora' if m.lora else 'full'}-{'gc' if m.gc else 'nogc'}-{attn}"


def user_fits_path() -> Path:
    """Where ``calibrate-arch`` keeps a user's fits: $FTMIX_ARCH_FITS, else the user cache."""
    if os.environ.get("FTMIX_ARCH_FITS"):
        return Path(os.environ["FTMIX_ARCH_FITS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ftmix" / "arch_fits.json"


@lru_cache(maxsize=4)
def _read(path: str, mtime: float) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FtmixError(f"architecture fits {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("fits"), dict):
        raise FtmixError(f"architecture fits {path} must be a JSON object with a 'fits' object")
    return data["fits"]


def read_fits(path: Path) -> dict:
    """The fits in one file, checked."""
    return _read(str(path), path.stat().st_mtime)


@lru_cache(maxsize=1)
def _packaged() -> dict:
    packaged = resources.files("ftmix.estimate").joinpath(PACKAGED)
    return dict(json.loads(packaged.read_text(encoding="utf-8"))["fits"]) if packaged.is_file() else {}


def load_fits() -> dict:
    """Packaged fits, then the user's (which win for the same shape). Both parsed once: plan and
    matrix ask for thousands of estimates."""
    user = user_fits_path()
    if not user.is_file():
        return _packaged()
    return {**_packaged(), **read_fits(user)}


def correction(model: ModelSpec, m: Mixture) -> tuple[float, str | None]:
    """Bytes to add to the analytic peak for this architecture and mixture, and a note naming the
    fit (None when no fit covers it)."""
    fit = load_fits().get(fingerprint(model))
    terms = (fit or {}).get("classes", {}).get(class_key(m))
    if not terms:
        if model.model_type in FITTED_ARCHITECTURES:
            why = (fit or {}).get("not_buildable", {}).get(class_key(m))
            raise FtmixError(f"{model.model_type} activations come from a fitted table and none covers this shape "
                             f"and {class_key(m)}" + (f" (not buildable: {why[:120]})" if why else "")
                             + f"; run `ftmix calibrate-arch --model {model.name}` or use --method simulate")
        return 0.0, None
    (a, b), (a0, b0) = terms["layer"], terms["base"]
    if not any((a, b, a0, b0)):
        return 0.0, None  # the analytic terms matched every simulation of this class
    s = m.seq_len
    per_sequence = model.layers * (a * s + b * s * s) + a0 * s + b0 * s * s
    note = (f"architecture fit: {fit.get('name', '?')} ({class_key(m)}; ftmix calibrate-arch, simulated at "
            f"s={'/'.join(str(x) for x in fit.get('fit_seq', ()))})")
    return m.micro_batch * per_sequence, note


def apply(est, model: ModelSpec):
    """The analytic Estimate with the architecture's fitted correction in its activations."""
    extra, note = correction(model, est.mixture)
    if note is None:
        return est
    if not any(est.breakdown.get(k) for k in ("activations", "loss_head", "autocast_copies", "gc_recompute",
                                              "backward_working")):
        # the peak holds no activations (the optimizer step): a fit of activation terms cannot move it
        return dataclasses.replace(est, notes=est.notes + (note + "; not applied: the peak holds no activations",))
    breakdown = dict(est.breakdown)
    breakdown["activations"] = max(0.0, breakdown.get("activations", 0.0) + extra)
    return dataclasses.replace(est, breakdown=breakdown, notes=est.notes + (note,))


def write_fit(path: Path, key: str, entry: dict) -> None:
    """Add or replace one architecture's fit in a fits file (created when missing)."""
    data = {"fits": {}}
    if path.is_file():
        data = {"fits": dict(read_fits(path))}
    data["fits"][key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
