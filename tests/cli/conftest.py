import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, check_json=False):
    """Run the real console entry point in a fresh interpreter."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "ftmix", *args], capture_output=True, text=True, env=env, timeout=120)
    if check_json:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    return proc


@pytest.fixture
def cli():
    return run_cli
