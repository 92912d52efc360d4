import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, check_json=False, timeout=120):
    """Run the real console entry point in a fresh interpreter."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "ftmix", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check_json:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def ftmix(capsys, monkeypatch):
    """The CLI in this process (fast): returns (exit code, stdout, stderr)."""
    from ftmix.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def run(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
