"""The interface every engine implements, and what the device-memory twin must know of each."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Protocol

from ftmix.mixture import Mixture


@dataclass(frozen=True)
class TwinRules:
    """What the device-memory twin must know of an engine's own allocations (code sites are
    "path/inside/site-packages:function" prefixes, as the twin names them)."""

    site_roles: tuple[tuple[str, str], ...] = ()  # a storage never marked: its role from where it was made
    strong_site_roles: tuple[tuple[str, str], ...] = ()  # these sites' storages keep their role whatever marks say
    bucket_functions: tuple[str, ...] = ()  # functions that allocate gradient reduction buckets
    host_sites: tuple[str, ...] = ()  # sites whose bare "cpu" tensors are host memory
    host_attributes: frozenset[str] = frozenset()  # optimizer attributes holding host buffers under offload
    back_to_device_sites: frozenset[str] = frozenset()  # sites that send host-staged tensors back to the device
    # patches the engine so that what it moves to the host where the twin's placement mode does not
    # run (autograd's callbacks) is retagged: called with ``to_host(tensors)``
    host_moves: Callable[[Callable], AbstractContextManager] | None = None
    skip_sites: tuple[str, ...] = ()  # wrappers the site search walks past
    optimizer_module: str | None = None  # optimizers from here have flat buffers, marked by attribute name
    attribute_role: Callable[[str], str | None] | None = None  # such a buffer's role, by its attribute name
    offload_code: tuple[str, ...] = ()  # code whose bare "cpu" means host memory while the engine offloads
    named_frames: str | None = None  # frames inside torch that name a site (the engine's own collectives)
    virtual_device: Callable[[str], AbstractContextManager] | None = None  # makes the engine answer this device


class Engine(Protocol):
    """One engine, every concern of it in one place."""

    name: str
    twin: TwinRules
    shards_after_build: bool  # ``prepare`` shards a model built whole (the build is not a step's memory)

    def config(self, m: Mixture, trainable_params: int, user_config: dict | None = None) -> dict | None:
        """The engine's own configuration for a mixture (the user's, when given); None if it has none."""

    def trainer_args(self, config: dict | None, device: str, world: int) -> dict:
        """What HF ``TrainingArguments`` need to run under this engine."""

    def offloads(self, config: dict | None) -> bool:
        """Whether the engine keeps optimizer states or parameters in host memory."""

    def report(self, trainer, config: dict | None) -> dict:
        """What the engine itself says it ran: stage, offload, optimizer, trainable parameters."""

    def build_mixture(self, m: Mixture) -> Mixture:
        """The mixture the model is built for (FSDP2: as for one process, it shards that)."""

    def build_options(self, m: Mixture) -> dict:
        """Keyword arguments of ``build_model`` the engine needs (FSDP2: ``sharded_base``)."""

    def prepare(self, model, m: Mixture, device: str):
        """The model as the engine runs it, before HF Trainer sees it (FSDP2 shards it)."""

    def trainer_precision(self, m: Mixture) -> dict:
        """HF TrainingArguments' precision flags (``bf16``/``fp16``: autocast)."""

    def optimizer_cls_and_kwargs(self, hyper: dict) -> tuple | None:
        """The optimizer class and arguments when the engine picks its own (HF ``optimizer_cls_and_kwargs``)."""

    def adopt(self, trainer) -> None:
        """Anything the Trainer's accelerator must know of the engine, once the Trainer exists."""

    def save_final(self, trainer, path: str) -> None:
        """Save the trained model (or adapter) as a standard folder."""


class EngineDefaults:
    """What an engine that HF Trainer wraps by itself does at each hook: nothing."""

    # the model is built whole, then sharded by ``prepare``: a real job builds on the meta device and
    # loads each rank's shards, so the build is not a training step's memory
    shards_after_build = False

    def build_mixture(self, m: Mixture) -> Mixture:
        """The mixture the model is built for (``ftmix.model.build``)."""
        return m

    def build_options(self, m: Mixture) -> dict:
        """Keyword arguments of ``build_model`` the engine needs."""
        return {}

    def prepare(self, model, m: Mixture, device: str):
        """The model as the engine runs it, before HF Trainer sees it."""
        return model

    def trainer_precision(self, m: Mixture) -> dict:
        """HF TrainingArguments' precision flags: mixed precision is autocast over fp32 masters
        (DeepSpeed casts by itself); pure 16-bit and fp32 runs need none."""
        return {"bf16": m.precision == "bf16", "fp16": m.precision == "fp16"}

    def optimizer_cls_and_kwargs(self, hyper: dict) -> tuple | None:
        """The optimizer class and arguments when the engine picks its own (HF ``optimizer_cls_and_kwargs``)."""
        return None

    def adopt(self, trainer) -> None:
        """Anything the Trainer's accelerator must know of the engine, once the Trainer exists."""

    def save_final(self, trainer, path: str) -> None:
        trainer.save_model(path)
