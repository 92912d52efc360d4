"""ftmix train: bad input is one line on stderr and exit 2, before any training."""

import pytest

from tests.train.conftest import TINY, run_train_cli, tiny_flags, yaml_args


@pytest.fixture
def base(tmp_path):
    return yaml_args(tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2))


@pytest.mark.parametrize("extra", [
    ["lr=-1"],
    ["nosuchkey=1"],
    ["notkeyvalue"],
    ["--zero", "1", "--offload", "all"],
    ["--seq-len", "0"],
    ["data=/no/such/file.jsonl"],
    ["model=no-such-org/no-such-model", "random_init=false"],
    ["--resume"],
])
def test_bad_input(base, extra):
    proc = run_train_cli(base + extra, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr[-2000:]


def test_malformed_data_file(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "dialogue": "A: hi"\nnot json at all\n')
    proc = run_train_cli(base + [f"data={bad}"], timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot load data")


@pytest.mark.slow
def test_yaml_config_and_json_summary(tmp_path):
    import json

    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_flags(tmp_path / "out", zero=0, lora=8, max_steps=3)))
    proc = run_train_cli([str(cfg), "lora=4", "--json"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["mixture"]["lora"] == 4 and summary["measured"]["steps"] == 3
    assert summary["engine"]["trainable_params"] == 2 * 4 * (64 + 64 + 64 + TINY["hidden_size"] // 2)


@pytest.mark.slow
def test_the_console_puts_the_twin_beside_the_estimate(tmp_path):
    """On CPU the readable summary shows the twin's device peak and host bytes next to estimate's
    prediction for the same mixture, with the error; the run record has the same numbers."""
    import json

    proc = run_train_cli(yaml_args(tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "measured vs predicted" in proc.stdout
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    device = record["comparison"]["device peak per GPU, twin (GB)"]
    assert device["measured"] > 0 and abs(device["error"]) <= 0.01
    from ftmix.units import human_bytes

    line = next(x for x in proc.stdout.splitlines() if "device peak per GPU, twin" in x)
    # in a unit that fits (MB for a tiny model), not 0.002629 GB
    assert human_bytes(device["measured"] * 1e9) in line and human_bytes(device["predicted"] * 1e9) in line
    assert f"{100 * device['error']:+.1f}%" in line and " MB " in line
    assert "host memory per node, twin" in proc.stdout
    # no CUDA here: its counters are absent, not shown as zero
    assert "peak memory allocated per GPU (GB)" not in proc.stdout
