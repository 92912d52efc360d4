"""Kill a CPU run with SIGKILL mid-way, resume from its last checkpoint: the loss trajectory equals
an uninterrupted run's."""

import pytest
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import run_train_cli, tiny_flags, yaml_args

pytestmark = pytest.mark.slow  # real training or simulation: make test runs it, make test-fast not

STEPS = 24  # long enough that the kill, 0.3 s after checkpoint 8, lands mid-run


def test_sigkill_then_resume(tmp_path):
    whole = tiny_flags(tmp_path / "whole", zero=0, lora=8, max_steps=STEPS, save_steps=4, max_rows=60, epochs=3)
    proc = run_train_cli(yaml_args(whole) + ["--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = _curve(tmp_path / "whole")

    part = dict(whole, output_dir=str(tmp_path / "part"))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    child = subprocess.Popen([sys.executable, "-m", "ftmix", "train", *yaml_args(part)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "part" / "checkpoint-8"
    deadline = time.time() + 600
    while not (checkpoint / "trainer_state.json").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run on past the checkpoint, then kill it without warning
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "part" / "run.json").exists()

    resumed = run_train_cli(yaml_args(part) + ["resume=true", "--json"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    import json

    record = json.loads((tmp_path / "part" / "run.json").read_text())
    start = int(Path(record["measured"]["resumed_from"]).name.split("-")[1])
    assert start >= 8 and record["measured"]["steps"] == STEPS
    after = _curve(tmp_path / "part")
    assert after and min(after) == start + 1
    for step, loss in after.items():
        assert abs(loss - reference[step]) < 1e-5, (step, loss, reference[step])


def _curve(out: Path) -> dict[int, float]:
    import json

    record = json.loads((out / "run.json").read_text())
    return {step: loss for step, loss in record["measured"]["loss_curve"]}
