"""The one way from what a user gives to a Mixture: flags (the CLI's, the API's keywords, a train
config's YAML keys, all the same keys) and, optionally, their own DeepSpeed JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmix.mixture.engine import apply_deepspeed
from ftmix.mixture.mixture import Mixture, check_flags, check_mixture, mixture_from_flags

if TYPE_CHECKING:  # the catalog's type, for annotations only
    from ftmix.catalog import GpuSpec


def resolve_mixture(flags: dict, gpu: GpuSpec | None = None, deepspeed: dict | None = None,
                    deepspeed_path: str = "--deepspeed", unset: dict | None = None, check: bool = True) -> Mixture:
    """The mixture the keys stand for on ``gpu``: the DeepSpeed JSON's stage, offload and precision
    (a key given that contradicts it is an error naming both), LoRA settings that full fine-tuning
    would drop refused, keys still unset taken from ``unset`` (a caller's own defaults, as train's
    precision on CPU), then from the declared defaults; the whole checked unless ``check`` is off
    (a caller that checks another way, as FSDP2's simulation)."""
    if deepspeed is not None:
        flags = apply_deepspeed(flags, deepspeed, deepspeed_path)
    flags = dict(flags, **{k: v for k, v in (unset or {}).items() if flags.get(k) is None})
    check_flags(flags)
    m = mixture_from_flags(gpu, **flags)
    return check_mixture(m, None, gpu) if check else m
