"""Ctrl-C during a 2-rank run (issue 19, defect 2): to the launcher alone, or to its whole process
group as a terminal sends it. Every rank stops, the last checkpoint is named, exit 130, no
traceback on the screen and no process left behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import tiny_flags, yaml_args

pytestmark = pytest.mark.slow  # real training or simulation: make test runs it, make test-fast not


def _alive_with(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the run's own config file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("to", ["launcher", "group"])
def test_ctrl_c_stops_every_rank(tmp_path, to):
    out = tmp_path / "run"
    flags = yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=10_000, save_steps=1, keep_last=2, epochs=1000))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # as a terminal's foreground job has it: a background job (`make test &`) starts with SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-m", "ftmix", "train", *flags, "--gpus", "2"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marker = str(out / "train_config.json")
    try:
        deadline = time.time() + 400
        while not list(out.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert len(_alive_with(marker)) >= 3  # torchrun and its two ranks
        if to == "launcher":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        lines = [x for x in err.splitlines() if x.strip() and "training" not in x and "ranks via" not in x]
        assert len(lines) == 1 and lines[0].startswith("error: interrupted; last checkpoint: "), err[-3000:]
        assert "Traceback" not in err
        time.sleep(1)
        assert _alive_with(marker) == [], "ranks left running"
        checkpoints = sorted(out.glob("checkpoint-*"))
        time.sleep(3)  # an orphan would go on writing checkpoints and final/
        assert sorted(out.glob("checkpoint-*")) == checkpoints and not (out / "final").exists()
    finally:  # pass or fail, nothing of the run is left running
        _kill(_alive_with(marker) + ([proc.pid] if proc.poll() is None else []))
