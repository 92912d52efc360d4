"""Plain torch: one GPU, or DDP over several processes (HF Trainer through accelerate). No ZeRO
stage, no offload; the optimizer states and gradients sit whole on every GPU."""

from __future__ import annotations

from ftmix.engines.base import EngineDefaults, TwinRules
from ftmix.mixture import Mixture


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


class TorchDDP(EngineDefaults):
    name = "torch"
    # torch DDP's reducer allocates its gradient buckets inside accelerate's ``prepare_model``
    # (torch frames are skipped when naming a site)
    twin = TwinRules(bucket_functions=("accelerate/accelerator.py:prepare_model",))

    def config(self, m: Mixture, trainable_params: int, user_config: dict | None = None) -> dict | None:
        return None

    def trainer_args(self, config: dict | None, device: str, world: int) -> dict:
        return {"deepspeed": None, "ddp_backend": "gloo" if (device == "cpu" and world > 1) else None}

    def offloads(self, config: dict | None) -> bool:
        return False

    def report(self, trainer, config: dict | None) -> dict:
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        return {"name": "torch" + (" DDP" if trainer.args.world_size > 1 else ""), "zero_stage": 0,
                "offload_optimizer": False, "offload_param": False,
                "optimizer": type(_inner(trainer.optimizer)).__name__,
                "trainable_params": sum(p.numel() for p in params),
                "dtype": str(params[0].dtype) if params else None}
