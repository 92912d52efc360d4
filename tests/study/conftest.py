import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train.conftest import TINY

TINY_BASE = dict(model="smollm2-135m", device="cpu", random_init=True, model_overrides=TINY, max_rows=8, seq_len=64,
                 effective_batch=2, max_steps=2, zero=0, lora=8, lr=0.01)


def write_spec(path: Path, **spec) -> Path:
    spec.setdefault("base", dict(TINY_BASE))
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study(*args, timeout=900, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ftmix", "study", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def rows(db: Path) -> list[dict]:
    from ftmix.study.store import Store

    store = Store(db, create=False)
    try:
        return store.trials()
    finally:
        store.close()


@pytest.fixture
def spec_file(tmp_path):
    return lambda **spec: write_spec(tmp_path / "spec.yaml", **spec)


def as_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
