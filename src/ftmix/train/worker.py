"""Entry point of each rank under torchrun or the deepspeed launcher: ``-m ftmix.train.worker CONFIG.json``."""

import json
import sys

from ftmix.errors import FtmixError
from ftmix.train.config import TrainConfig
from ftmix.train.run import train


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    cfg = TrainConfig(**json.loads(open(args[0]).read()))
    try:
        train(cfg)
    except FtmixError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - an out-of-memory of any engine: one line, exit 3
        from ftmix.train.auto import is_oom

        if not is_oom(exc):
            raise
        sys.stderr.write(f"error: {str(exc).strip().splitlines()[0]}\n")
        sys.exit(3)


if __name__ == "__main__":
    main()
