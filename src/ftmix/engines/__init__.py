"""The engines a run trains under, side by side behind one interface: plain torch (one GPU, or DDP
over several), DeepSpeed ZeRO, and FSDP2. Training (``ftmix.train.run``), the device-memory twin's
attribution of engine buffers (``ftmix.measure.twin``) and the simulation (``ftmix.measure.simulate``)
all reach an engine through this room, so a simulated engine is the trained one.

Quantization is not an engine: it is the model's side (``ftmix.model``), under any engine.
"""

from __future__ import annotations

from ftmix.engines.base import Engine, EngineDefaults, TwinRules
from ftmix.engines.ddp import TorchDDP
from ftmix.engines.deepspeed import DeepSpeed
from ftmix.engines.fsdp2 import FSDP2
from ftmix.mixture import Mixture

__all__ = ["DeepSpeed", "Engine", "EngineDefaults", "FSDP2", "TorchDDP", "TwinRules", "engine_for", "twin_rules"]


def engine_for(m: Mixture, user_config: dict | None = None) -> Engine:
    """The engine a training run of ``m`` runs under: FSDP2 when the mixture says so, DeepSpeed for
    a ZeRO stage or a user's DeepSpeed JSON, else plain torch (DDP over several processes)."""
    if m.fsdp2:
        return FSDP2()
    return DeepSpeed() if (m.zero >= 1 or user_config is not None) else TorchDDP()


def twin_rules() -> tuple[TwinRules, ...]:
    """Every engine's rules, in the order the twin applies them."""
    return DeepSpeed.twin, FSDP2.twin, TorchDDP.twin
