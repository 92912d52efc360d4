import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 512}


def tiny_flags(out: Path, **overrides) -> dict:
    flags = dict(model="smollm2-135m", random_init=True, model_overrides=TINY, max_rows=16, seq_len=128,
                 effective_batch=4, max_steps=6, output_dir=str(out), lr=0.01)
    flags.update(overrides)
    return flags


def yaml_args(flags: dict) -> list[str]:
    """The same config as key=value overrides for the real CLI."""
    import json

    return [f"{k}={json.dumps(v) if isinstance(v, (dict, bool)) else v}" for k, v in flags.items()]


def run_train_cli(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/ftmix/torch_extensions")))
    return subprocess.run([sys.executable, "-m", "ftmix", "train", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def tiny(tmp_path):
    return lambda **kw: tiny_flags(tmp_path / "run", **kw)


PINNED = Path(__file__).resolve().parent / "data" / "loss_curves.json"


def pinned_curve(name: str, record: dict) -> list[float]:
    """The run's loss curve, which must equal the committed one (tests/train/data/loss_curves.json):
    a tiny seeded run on CPU repeats to the last digit on one CPU model, so any change to the data,
    the model, the mixture or the loop shows. Across CPU models bf16 kernels differ (with and without
    AVX512-BF16: up to 6.5e-5 relative, measured between this project's machines), so the curves
    agree to 2e-4 relative, far under what a changed batch, seed or learning rate moves them.
    FTMIX_PIN_LOSSES=1 writes the curves anew (say why in the commit)."""
    import json

    curve = [round(loss, 6) for _, loss in record["measured"]["loss_curve"]]
    table = json.loads(PINNED.read_text()) if PINNED.is_file() else {}
    if os.environ.get("FTMIX_PIN_LOSSES") == "1":
        table[name] = curve
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    assert name in table, f"no pinned loss curve for {name}: run with FTMIX_PIN_LOSSES=1"
    assert curve == pytest.approx(table[name], rel=2e-4), (name, curve, table[name])
    return curve
