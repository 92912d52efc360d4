"""Entry point of each rank under torchrun or the deepspeed launcher: ``-m ftmix.train.worker CONFIG.json``."""

import json
import sys

import torch.distributed as dist

from ftmix.errors import FtmixError
from ftmix.job.config import TrainConfig
from ftmix.train.auto import is_oom
from ftmix.train.run import train


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    cfg = TrainConfig(**json.loads(open(args[0]).read()))
    try:
        train(cfg)
        _leave_process_group()
    except FtmixError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - an out-of-memory of any engine: one line, exit 3
        if not is_oom(exc):
            raise
        sys.stderr.write(f"error: {str(exc).strip().splitlines()[0]}\n")
        sys.exit(3)


def _leave_process_group() -> None:
    """Destroy the process group while the interpreter is whole, as accelerate's ``end_training``
    does: left to interpreter finalization, gloo's worker threads can abort a finished run
    (pytorch/pytorch#179291)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
