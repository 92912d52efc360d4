"""The checkpoints and files of a run folder, read and written the same way by the pre-flight
check (torch-free) and by the run that saves them."""

from __future__ import annotations

from pathlib import Path

from ftmix.job.config import TrainConfig
from ftmix.mixture import Mixture

RESUME_KEYS = ("model", "model_overrides", "random_init", "gguf_file", "lora", "lora_alpha", "lora_targets", "zero")


CHECKPOINT_MIXTURE = "ftmix_checkpoint.json"
# "runs": HF Trainer's default logging_dir; "trainer_state.json": its state, saved beside the
# checkpoints at the end of a run that saves them
RUN_FILES = ("run.json", "train.log", "launcher.log", "train_config.json", "eval.json", "ranks", "final", "export",
             "runs", "trainer_state.json")


def is_run_file(name: str) -> bool:
    """What an ftmix run writes into its folder (``--overwrite`` clears only such a folder)."""
    return name in RUN_FILES or name.startswith(("checkpoint-", "attempt-")) or name.startswith(".")


def checkpoint_record(cfg: TrainConfig, m: Mixture) -> dict:
    """What ``_check_resume_matches`` compares, written into every checkpoint by the run."""
    out = {k: getattr(cfg, k) for k in RESUME_KEYS}
    out.update(zero=m.zero, lora=m.lora, lora_alpha=m.lora_alpha if m.lora else None,
               lora_targets=m.lora_targets if m.lora else None, sharding=m.sharding, mixture=m.to_dict())
    if m.zero >= 1 and not m.fsdp2:  # torch distributed checkpoints reshard to another world size
        out["world"] = m.world
    return out


def checkpoint_step(path: str | None) -> int:
    return int(Path(path).name.split("-")[-1]) if path else 0


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint: HF Trainer writes trainer_state.json last, so a save cut
    short (Ctrl-C, a kill) is passed over rather than resumed from."""
    steps = [(int(p.name.split("-")[-1]), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(steps)[1]) if steps else None
