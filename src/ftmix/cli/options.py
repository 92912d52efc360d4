"""What the commands share: the mixture flags (declared once, as Annotated types) and ``guard``.

Every flag defaults to None ("not given"): estimate and train fill the study's defaults, plan
searches the dimensions left open.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import fields
from types import SimpleNamespace
from typing import Annotated, Optional

import typer

from ftmix.errors import FtmixError
from ftmix.mixture import KEYS, Mixture


def mixture_option(key: str):
    """The CLI option of a mixture key, made from its one declaration (``ftmix.mixture.Mixture``):
    the flag, metavar and help there; None ("not given") as the default."""
    declared = next(f for f in fields(Mixture) if f.name == key)
    kind = {"int": int, "str": str, "bool": bool, "float": float}[declared.type]
    meta = declared.metadata
    return Annotated[Optional[kind], typer.Option(meta["flag"], metavar=meta["metavar"], help=meta["help"])]


# every mixture key's option, by key: `zero: o.MIX.zero = None` in a command
MIX = SimpleNamespace(**{key: mixture_option(key) for key in KEYS})
GradAccum = Annotated[Optional[int], typer.Option("--grad-accum", metavar="N", help="Micro steps per optimizer step. 1 on one GPU without DeepSpeed: the gradients are set to None after each step, so the forward runs without them (full fine-tuning peaks lower). Default: unknown, counted as kept between micro steps.")]
DeepSpeed = Annotated[Optional[str], typer.Option("--deepspeed", metavar="FILE", help="Your DeepSpeed JSON: its stage, offload, precision and bucket sizes (HF \"auto\" values too) drive the estimate.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Model = Annotated[str, typer.Option("--model", metavar="NAME|PATH", help="Catalog name or its hub id (see `ftmix models`), or a config.json (or its folder).")]
Gpu = Annotated[Optional[str], typer.Option("--gpu", metavar="NAME", help="Catalog GPU (see `ftmix gpus`).")]
GPU_DEFAULT = "a100-80gb"  # plan and matrix need a GPU; estimate gives a verdict only when one is named


def guard(fn):
    """One clear line on stderr and exit 2 for bad input, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FtmixError as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise typer.Exit(2) from None

    return wrapper
