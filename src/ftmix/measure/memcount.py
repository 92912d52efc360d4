"""Exact live-tensor byte counter: the torch-side ruler that checks the analytic model.

A TorchDispatchMode sees every tensor an op creates; a weakref finalizer on each new storage
subtracts its bytes when autograd or Python frees it. The peak is the most bytes alive at once,
to the byte, on any device, real or fake (shared field notes: MemTracker is 30x slower and trips
over frozen parameters). Only the estimate's check and the simulate path import this (it imports
torch).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Counts bytes of storages created while active; ``peak`` and ``live`` in bytes."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def reset_peak(self) -> None:
        self.peak = self.live

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

        def _free(key=key, nbytes=nbytes):
            self._seen.discard(key)
            self.live -= nbytes

        weakref.finalize(storage, _free)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place results alias an input's storage: nothing new was allocated.
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self._track(t)
        return out


def saved_tensor_bytes(fn, exclude: torch.nn.Module | None = None) -> tuple[int, object]:
    """Bytes of distinct storages autograd saves for backward while running ``fn()``, and its result.

    Storages of ``exclude``'s parameters and buffers (weights saved for the input gradient) are not
    activations and are left out.
    """
    storages: dict[int, int] = {}
    skip = set()
    if exclude is not None:
        skip = {t.untyped_storage().data_ptr() for t in [*exclude.parameters(), *exclude.buffers()]}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out
