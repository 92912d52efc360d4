"""The device-memory twin: the tensor bytes a GPU run of the same code would hold on the GPU, and
those it would keep in host memory, measured on any device to the byte.

DeepSpeed, PEFT and transformers allocate the same tensors (sizes, dtypes) on the CPU as on a GPU;
what differs is where offloaded states live. The twin tells the two apart with a *virtual device*:
DeepSpeed's CPU accelerator is made to answer ``cpu:0`` (standing for ``cuda:0``) while its offload
code keeps asking for the bare ``cpu``, so every new storage is tagged *device* or *host* by where
it was asked to live, and ops without a device argument inherit the tag of their inputs. A
``Tensor.to``/``.cpu`` between the two, which on a CPU would hand back the same storage, makes a
real copy, as it does on a GPU. On CUDA the tag is simply the storage's real device.

Counting is a dispatch-mode live-bytes counter with weakref finalizers on storages (the ruler of
``memcount.LiveBytes``, plus a tag, a code site and a role per storage). The peak's contents are
kept so that each byte at the device peak is attributed to the library function that allocated it
and to a role: parameter, gradient, optimizer state, fp32 master, DeepSpeed bucket or buffer, saved
activation, temporary. Roles come from marks (autograd's saved-tensor hook, gradient hooks, walks
over the model, the optimizer and DeepSpeed's ZeRO optimizer) and, for storages never marked, from
the allocating site.
"""

from __future__ import annotations

import sys
import weakref
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ftmix.engines import twin_rules

DEVICE, HOST = "device", "host"
VIRTUAL_DEVICE = "cpu:0"  # what DeepSpeed's CPU accelerator answers while the twin runs

# Roles, strongest first: a storage marked with several keeps the first.
ROLES = ("parameter", "fp32 master", "optimizer state", "bucket", "gradient", "deepspeed buffer",
         "activation", "temporary")
_PRIORITY = {r: i for i, r in enumerate(ROLES)}

# What each engine's own allocations are (ftmix.engines): the rules of all, merged in order.
_ENGINES = twin_rules()
_FSDP = next(r.named_frames for r in _ENGINES if r.named_frames)
# Frames the code-site search walks past: torch itself, this room, ftmix's engine wrappers (they
# call the engine, whose own frames name the site) and decorators' wrappers.
_SKIP = ("/torch/", "/ftmix/measure/", "/ftmix/engines/", "/contextlib.py", "/functools.py", "<") + sum(
    (r.skip_sites for r in _ENGINES), ())
# A storage never marked gets its role from where it was allocated.
_SITE_ROLES = sum((r.site_roles for r in _ENGINES), ())
# Sites whose allocations keep their role whatever marks say (an engine's gathered parameters)
_STRONG_SITE_ROLES = sum((r.strong_site_roles for r in _ENGINES), ())
# Functions that allocate gradient reduction buckets
_BUCKET_FUNCTIONS = sum((r.bucket_functions for r in _ENGINES), ())
_HOST_SITES = sum((r.host_sites for r in _ENGINES), ())
_HOST_ATTRIBUTES = frozenset().union(*(r.host_attributes for r in _ENGINES))
_BACK_TO_DEVICE_SITES = frozenset().union(*(r.back_to_device_sites for r in _ENGINES))
_OFFLOAD_CODE = sum((r.offload_code for r in _ENGINES), ())


@dataclass
class _Alloc:
    nbytes: int
    tag: str
    site: str
    dtype: str
    seq: int
    role: str | None = None
    attr: str | None = None  # the DeepSpeed attribute that holds it, when a walk found one

    def mark(self, role: str, attr: str | None = None) -> None:
        if self.role is None or _PRIORITY[role] < _PRIORITY[self.role]:
            self.role, self.attr = role, attr or self.attr

    def final_role(self) -> str:
        if self.site.endswith(_BUCKET_FUNCTIONS):
            return "bucket"  # gradients live in it (contiguous_gradients), but it is the engine's bucket
        for prefix, role in _STRONG_SITE_ROLES:
            if self.site.startswith(prefix):
                return role
        if self.role is not None:
            return self.role
        for prefix, role in _SITE_ROLES:
            if self.site.startswith(prefix):
                return role
        return "temporary"


_code_labels: dict = {}


_BACKWARD_ENTRIES = {("_tensor.py", "backward"), ("__init__.py", "backward"), ("__init__.py", "grad"),
                     ("graph.py", "_engine_run_backward")}


def _site() -> str:
    """'package/module.py:function' of the innermost frame outside torch and the twin; for what
    the autograd engine allocates between Python frames, 'autograd:<Node>' (e.g. MmBackward0)."""
    frame = sys._getframe(2)
    inner = None
    while frame is not None:
        code = frame.f_code
        if inner is not None and (inner.co_filename.rsplit("/", 1)[-1], inner.co_name) in _BACKWARD_ENTRIES:
            node = torch._C._current_autograd_node()
            if node is not None:
                return f"autograd:{node.name()}"
        label = _code_labels.get(code)
        if label is None:
            name = code.co_filename
            if _FSDP in name:  # FSDP2's own buffers, named by the collective that asks for them
                label = "" if code.co_name == "allocate" else \
                    f"torch/distributed/fsdp/{name.rsplit('/', 1)[1]}:{code.co_name}"
            elif any(s in name for s in _SKIP):
                label = ""
            else:
                for root in ("site-packages/", "/src/", "/benchmarks/", "/tests/"):
                    if root in name:
                        name = name.split(root, 1)[1]
                        break
                label = f"{name}:{code.co_name}"
            _code_labels[code] = label
        if label:
            return label
        inner = code
        frame = frame.f_back
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, twin: DeviceTwin):
        super().__init__()
        self.twin = twin

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        twin = self.twin
        inputs = [_local(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        keys = {t.untyped_storage()._cdata for t in inputs}
        new = [t for t in map(_local, tree_leaves(out))
               if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in keys]
        if new:
            tag = twin._tag_for(kwargs.get("device"), inputs)
            for t in new:
                twin._track(t, tag)
        elif func in _DROPOUT_MASKS and inputs and inputs[0].dtype != torch.bool:
            # CPU dropout (``_dropout_impl``) fills a mask of the input's dtype with bernoulli_
            # and keeps it for backward; CUDA's fused native_dropout keeps 1-byte booleans
            twin._as_bool_mask(inputs[0])
        elif func in _RESIZES and inputs:
            twin._resized(inputs[0])
        return out


_RESIZES = {torch.ops.aten.resize_.default}
_DROPOUT_MASKS = {torch.ops.aten.bernoulli_.float}
class _Placement(TorchFunctionMode):
    """Where each call asks its result to live, read before torch normalizes the device.

    A string "cpu" (DeepSpeed's ``'cpu'`` literals, ``OffloadDeviceEnum.cpu``) from DeepSpeed while
    it offloads means the host; ``cpu:0`` means the device; a ``torch.device('cpu')`` object, as
    code passes ``p.device`` along, has no opinion (the result inherits its inputs' tag).
    ``.cpu()`` always means the host. A ``.to``/``.cpu`` between device and host makes a real copy,
    as on a GPU; a move to where a tensor already lives makes none.
    """

    def __init__(self, twin: DeviceTwin):
        super().__init__()
        self.twin = twin

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        twin = self.twin
        if func is torch.Tensor.cpu:
            want, move = HOST, True
        elif func is torch.Tensor.to:
            want, move = twin._want(_raw_device(args[1:], kwargs)), True
            if want is None and _site() in _BACK_TO_DEVICE_SITES:
                want = DEVICE
            args, kwargs = _bare_cpu(args), _bare_cpu(kwargs)
        else:
            want, move = twin._want(kwargs.get("device")), False
        if want is None:
            return func(*args, **kwargs)
        with twin._forced(want):
            out = func(*args, **kwargs)
            src = args[0] if move and args and isinstance(args[0], torch.Tensor) else None
            if src is not None and isinstance(out, torch.Tensor) and twin._tag_of(src) not in (None, want) \
                    and out.untyped_storage()._cdata == src.untyped_storage()._cdata:
                out = out.clone()
        return out


def _bare_cpu(obj):
    """The same arguments with ``cpu:N`` written as ``cpu`` (the virtual device is the CPU)."""
    def fix(x):
        if isinstance(x, torch.device) and x.type == "cpu" and x.index is not None:
            return torch.device("cpu")
        if isinstance(x, str) and x.startswith("cpu:"):
            return "cpu"
        return x

    if isinstance(obj, dict):
        return {k: fix(v) for k, v in obj.items()}
    return tuple(fix(x) for x in obj)


def _raw_device(args, kwargs):
    if kwargs.get("device") is not None:
        return kwargs["device"]
    for a in args:
        if isinstance(a, (str, torch.device)):
            return a
    return None


class DeviceOutOfMemory(RuntimeError):
    """The twin's device bytes passed the limit a run set for itself (``memory_limit_gb``): on CPU,
    what a GPU of that size would have answered with CUDA's out-of-memory error."""


class DeviceTwin:
    """Live bytes per tag, the device and host peaks, and what the device peak holds.

    ``virtual=True`` (CPU runs): tags come from the requested device as described in the module
    doc; ``offload`` says whether DeepSpeed's bare "cpu" means the host (set it before the engine
    starts). ``virtual=False``: a storage on a non-CPU device is device memory, one on the CPU is host.
    """

    def __init__(self, virtual: bool = True, offload: bool = False, limit: float | None = None):
        self.virtual = virtual
        self.limit = self._limit_set = limit  # device bytes past which an allocation fails (None: no limit)
        self.offload = offload  # DeepSpeed offloads optimizer states or parameters to the host
        self.live = {DEVICE: 0, HOST: 0}
        self.peak = {DEVICE: 0, HOST: 0}
        self.peak_where = {DEVICE: None, HOST: None}
        self.phase = "setup"
        self.step = 0
        self.micro = 0
        self.allocations = 0
        self.phase_peaks: dict[str, int] = {}  # the device peak within each phase
        self._seq = 0
        self._peak_seq = -1
        self._records: dict[int, _Alloc] = {}
        self._dead_at_peak: list[_Alloc] = []
        self._force: str | None = None
        self._stack: ExitStack | None = None

    # --- tagging ---------------------------------------------------------------------------
    def _want(self, raw) -> str | None:
        """The tag a requested device stands for, or None for no opinion (see _Placement).

        A string "cpu" from DeepSpeed means host memory only while it offloads: without offload
        it says "cpu" for device memory too (stage3 ``subgroup_to_device`` is the accelerator's
        ``_name``)."""
        if not self.virtual or raw is None:
            return None
        if isinstance(raw, torch.device):
            return DEVICE if raw.type == "cpu" and raw.index is not None else None
        if not isinstance(raw, str):
            return None
        name = getattr(raw, "value", raw)
        if name.startswith("cpu:"):
            return DEVICE
        if name == "cpu" and self.offload and _site().startswith(_OFFLOAD_CODE):
            return HOST
        return None

    def _tag_of(self, t: torch.Tensor) -> str | None:
        rec = self._records.get(t.untyped_storage()._cdata)
        return None if rec is None else rec.tag

    def _tag_of_device(self, device: torch.device) -> str:
        if device.type != "cpu":
            return DEVICE
        if not self.virtual:
            return HOST
        return DEVICE if device.index is not None else HOST

    def _tag_for(self, device, inputs) -> str:
        if self._force is not None:
            return self._force
        if device is not None:
            device = torch.device(device)
            if not self.virtual or device.type != "cpu" or device.index is not None:
                return self._tag_of_device(device)
            # the bare "cpu" with no opinion from _Placement: DeepSpeed's CPU Adam keeps its
            # states on the host; elsewhere code passing ``x.device`` along means the device
            if self.offload and _site().startswith(_HOST_SITES):
                return HOST
        tags = {self._tag_of(t) for t in inputs}
        if DEVICE in tags:
            return DEVICE
        if HOST in tags:
            return HOST
        return DEVICE if self.virtual else (HOST if device is not None and torch.device(device).type == "cpu" else DEVICE)

    @contextmanager
    def _forced(self, tag: str):
        saved, self._force = self._force, tag
        try:
            yield
        finally:
            self._force = saved

    # --- counting --------------------------------------------------------------------------
    def _track(self, t: torch.Tensor, tag: str) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._records or (storage.device.type == "meta" and not isinstance(t, FakeTensor)):
            return  # meta tensors hold shapes, no memory (DeepSpeed keeps them as metadata); a fake
            # tensor (simulate) stands for a real one: its storage is meta, its bytes count
        nbytes = storage.nbytes()
        self._seq += 1
        self.allocations += 1
        rec = _Alloc(nbytes, tag, _site(), str(t.dtype).removeprefix("torch."), self._seq)
        self._records[key] = rec
        self._add(rec, nbytes)
        weakref.finalize(storage, self._free, key)

    def _add(self, rec: _Alloc, nbytes: int) -> None:
        self.live[rec.tag] += nbytes
        if rec.tag == DEVICE and self.limit is not None and self.live[DEVICE] > self.limit:
            live, self.limit = self.live[DEVICE], None  # raise once: the unwinding allocates too
            raise DeviceOutOfMemory(
                f"device out of memory (the run's own limit of {self._limit_set / 1e9:.4g} GB, as a GPU of that "
                f"size; {live / 1e9:.4g} GB wanted) at {self.phase} of step {self.step}, micro step {self.micro}: "
                f"{rec.site}")
        if rec.tag == DEVICE and self.live[DEVICE] > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.live[DEVICE]
        if self.live[rec.tag] > self.peak[rec.tag]:
            self.peak[rec.tag] = self.live[rec.tag]
            self.peak_where[rec.tag] = (self.phase, self.step, self.micro)
            if rec.tag == DEVICE:
                self._peak_seq = self._seq
                self._dead_at_peak.clear()

    def _free(self, key: int) -> None:
        rec = self._records.pop(key, None)
        if rec is None:
            return
        self.live[rec.tag] -= rec.nbytes
        if rec.tag == DEVICE and rec.seq <= self._peak_seq:
            self._dead_at_peak.append(rec)

    def _as_bool_mask(self, t: torch.Tensor) -> None:
        rec = self._records.get(t.untyped_storage()._cdata)
        if rec is not None and rec.nbytes > t.numel():
            self.live[rec.tag] -= rec.nbytes - t.numel()
            rec.nbytes = t.numel()

    def _resized(self, t: torch.Tensor) -> None:
        self._storage_resized(t.untyped_storage())

    def _storage_resized(self, storage) -> None:
        rec = self._records.get(storage._cdata)
        if rec is None:
            return
        nbytes = storage.nbytes()
        before, rec.nbytes = rec.nbytes, nbytes
        at_peak = rec.tag == DEVICE and rec.seq <= self._peak_seq
        if nbytes > before:
            if at_peak and before:  # what it held at the peak stays in the peak's contents
                self._dead_at_peak.append(replace(rec, nbytes=before))
            self._seq += 1
            rec.seq = self._seq  # the grown storage is alive from now on, not at an earlier peak
            self._add(rec, nbytes - before)
        else:
            if at_peak:
                self._dead_at_peak.append(replace(rec, nbytes=before - nbytes))
            self.live[rec.tag] -= before - nbytes

    def reset_peak(self) -> None:
        """Forget the peaks so far (set-up that a real job does elsewhere, e.g. building a model
        whole before sharding it, where real recipes build it on the meta device)."""
        self.peak = dict(self.live)
        self.peak_where = {tag: (self.phase, self.step, self.micro) for tag in self.live}
        self.phase_peaks = {}
        self._peak_seq = self._seq
        self._dead_at_peak.clear()

    # --- roles -----------------------------------------------------------------------------
    def mark(self, tensors, role: str, attr: str | None = None) -> int:
        """Give the storages of ``tensors`` (any nesting of lists, tuples, dicts) a role."""
        marked = 0
        for t in _tensors(tensors):
            rec = self._records.get(t.untyped_storage()._cdata)
            if rec is not None:
                rec.mark(role, attr)
                marked += 1
        return marked

    def mark_model(self, model) -> None:
        for p in model.parameters():
            self.mark(p, "parameter")
            if hasattr(p, "ds_tensor"):
                self.mark(p.ds_tensor, "parameter", "ds_tensor")
            if p.grad is not None:
                self.mark(p.grad, "gradient")
        for b in model.buffers():
            self.mark(b, "parameter")
        for module in model.modules():  # bitsandbytes' quantization constants: part of the weights
            weight = getattr(module, "weight", None)
            # under FSDP2 the weight is a DTensor over a plain shard: the state is its layer's
            # (``Params4bit._quantize`` leaves it on the module, ``Linear4bit.forward`` reads it there)
            state = getattr(weight, "quant_state", None) or getattr(module, "quant_state", None)
            while state is not None:
                self.mark([v for v in vars(state).values() if isinstance(v, torch.Tensor)], "parameter")
                state = getattr(state, "state2", None)
            if isinstance(getattr(weight, "SCB", None), torch.Tensor):
                self.mark(weight.SCB, "parameter")

    def mark_optimizer(self, optimizer) -> None:
        """A torch optimizer's states and, for DeepSpeed's ZeRO optimizers, their flat buffers by
        attribute name (fp32 partitions, gradient partitions, reduce buckets, 16-bit partitions)."""
        seen = set()
        while optimizer is not None and id(optimizer) not in seen:
            seen.add(id(optimizer))
            state = getattr(optimizer, "state", None)
            if isinstance(state, dict):
                for s in state.values():
                    self.mark(s, "optimizer state")
            rules = next((r for r in _ENGINES if r.optimizer_module
                          and type(optimizer).__module__.startswith(r.optimizer_module)), None)
            if rules is not None:
                for name, value in vars(optimizer).items():
                    role = rules.attribute_role(name)
                    if role:
                        self.mark(value, role, name)
                    if self.offload and self.virtual and name in _HOST_ATTRIBUTES:
                        self.retag(value, HOST)
            optimizer = getattr(optimizer, "optimizer", None)

    def _moved_to_host(self, tensors) -> None:
        """An engine moved these to the host out of the placement mode's sight (``host_moves``)."""
        if self.offload and self.virtual:
            self.retag(tensors, HOST)

    def retag(self, tensors, tag: str) -> None:
        """Move storages to ``tag`` from now on: for buffers DeepSpeed places on the host with a
        device object taken from a host tensor (``device=weights_partition.device``), which the
        placement rules cannot tell from a device one."""
        for t in _tensors(tensors):
            rec = self._records.get(t.untyped_storage()._cdata)
            if rec is not None and rec.tag != tag:
                self.live[rec.tag] -= rec.nbytes
                rec.tag = tag
                self._add(rec, rec.nbytes)

    def _saved(self, t):
        if isinstance(t, torch.Tensor):
            rec = self._records.get(t.untyped_storage()._cdata)
            if rec is not None:
                rec.mark("activation")
        return t

    # --- phases ----------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def begin_step(self, step: int) -> None:
        self.step, self.micro = step, 0

    def forward_pre_hook(self, *_):
        self.micro += 1
        self.phase = "forward"

    def forward_hook(self, *_):
        self.phase = "backward"

    def watch_model(self, model) -> list:
        """Phase hooks on the root module and gradient marks on trainable parameters."""
        handles = [model.register_forward_pre_hook(self.forward_pre_hook),
                   model.register_forward_hook(self.forward_hook)]

        def grad_accumulated(param) -> None:
            if param.grad is not None:
                self.mark(param.grad, "gradient")

        for p in model.parameters():
            if p.requires_grad:
                handles.append(p.register_post_accumulate_grad_hook(grad_accumulated))
        return handles

    def watch_step(self, optimizer) -> None:
        """Wrap ``optimizer.step`` so that the phase reads "optimizer step" while it runs."""
        inner = optimizer.step

        def step(*args, **kwargs):
            before, self.phase = self.phase, "optimizer step"
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = "after step" if before != "optimizer step" else before

        optimizer.step = step

    # --- on and off ------------------------------------------------------------------------
    def start(self) -> DeviceTwin:
        return self.__enter__()

    def stop(self) -> None:
        if self._stack is not None:
            self.__exit__(None, None, None)

    def __enter__(self) -> DeviceTwin:
        self._stack = ExitStack()
        if self.virtual:
            for rules in _ENGINES:
                if rules.virtual_device is not None:
                    self._stack.enter_context(rules.virtual_device(VIRTUAL_DEVICE))
                if rules.host_moves is not None:
                    self._stack.enter_context(rules.host_moves(self._moved_to_host))
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._saved, lambda t: t))
        self._stack.enter_context(_Placement(self))
        self._stack.enter_context(_Dispatch(self))
        self._stack.enter_context(_storage_resizes(self))
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        stack.close()

    @contextmanager
    def paused(self):
        """Leave the modes for a while (work that is not part of the run: saving, reporting)."""
        if self._stack is None:
            yield
            return
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    # --- the report ------------------------------------------------------------------------
    def at_peak(self) -> list[_Alloc]:
        live = [r for r in self._records.values() if r.tag == DEVICE and r.seq <= self._peak_seq]
        return live + [r for r in self._dead_at_peak if r.tag == DEVICE]

    def report(self, top: int = 12) -> dict:
        """Peaks in bytes, where they fell, and the device peak by role and by code site."""
        at_peak = self.at_peak()
        by_role: dict[str, int] = defaultdict(int)
        by_site: dict[tuple, int] = defaultdict(int)
        for r in at_peak:
            role = r.final_role()
            by_role[role] += r.nbytes
            by_site[(r.attr or r.site, role, r.dtype)] += r.nbytes
        sites = sorted(by_site.items(), key=lambda kv: -kv[1])[:top]
        host: dict[str, int] = defaultdict(int)
        for r in self._records.values():
            if r.tag == HOST:
                host[r.attr or r.site] += r.nbytes

        def where(tag):
            w = self.peak_where[tag]
            return None if w is None else {"phase": w[0], "step": w[1], "micro_step": w[2]}

        return {
            "device_peak_bytes": self.peak[DEVICE], "host_peak_bytes": self.peak[HOST],
            "device_peak_at": where(DEVICE), "host_peak_at": where(HOST),
            "device_by_role": {r: by_role[r] for r in ROLES if by_role.get(r)},
            "device_peak_by_phase": dict(self.phase_peaks),
            "device_top_sites": [{"site": s, "role": role, "dtype": d, "bytes": b} for (s, role, d), b in sites],
            "host_live_sites": [{"site": k, "bytes": v} for k, v in sorted(host.items(), key=lambda kv: -kv[1])[:top]],
            "allocations": self.allocations,
            "breakdown_sums_to_peak": sum(by_role.values()) == self.peak[DEVICE],
        }


def _local(t):
    """A DTensor's (FSDP2's) bytes are its local shard's; the wrapper's own storage has the global
    size."""
    return getattr(t, "_local_tensor", t)


def _tensors(obj, depth: int = 0):
    if isinstance(obj, torch.Tensor):
        yield _local(obj)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, depth + 1)


@contextmanager
def _storage_resizes(twin: DeviceTwin):
    """``UntypedStorage.resize_`` reaches no dispatch mode; FSDP2 frees and re-allocates its
    all-gathered parameters with it (``_fsdp_param.py`` ``free_storage``/``alloc_storage``)."""
    original = torch.UntypedStorage.resize_

    def resize_(storage, size):
        out = original(storage, size)
        twin._storage_resized(storage)
        return out

    torch.UntypedStorage.resize_ = resize_
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original
