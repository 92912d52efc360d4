"""What the user may switch on: one Mixture type shared by estimate, plan and train."""

from ftmix.mixture.mixture import (ATTN_KERNELS, DEFAULTS, OFFLOADS, PRECISIONS, Mixture, check_flags,
                                   check_mixture, grad_accum, mixture_from_flags, resolve_targets)

__all__ = ["ATTN_KERNELS", "DEFAULTS", "OFFLOADS", "PRECISIONS", "Mixture", "check_flags", "check_mixture",
           "grad_accum", "mixture_from_flags", "resolve_targets"]
