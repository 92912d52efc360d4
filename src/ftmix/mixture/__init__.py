"""What the user may switch on: one Mixture type shared by estimate, plan and train."""

from ftmix.mixture.mixture import (ATTN_KERNELS, DEFAULTS, KEYS, OFFLOADS, OPTIMIZERS, PRECISIONS, QUANTIZE, SHARDINGS,
                                   Mixture,
                                   check_flags, check_mixture, grad_accum, mixture_from_flags, resolve_saved_modules,
                                   resolve_targets)
from ftmix.mixture.resolve import resolve_mixture

__all__ = ["ATTN_KERNELS", "DEFAULTS", "KEYS", "OFFLOADS", "OPTIMIZERS", "PRECISIONS", "QUANTIZE", "SHARDINGS", "Mixture", "check_flags", "check_mixture",
           "grad_accum", "mixture_from_flags", "resolve_mixture", "resolve_saved_modules", "resolve_targets"]
