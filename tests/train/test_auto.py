"""`ftmix train --mixture auto`: the planner's choice, run for real, and on out-of-memory the next
candidate that needs less (issue 12). On CPU the out-of-memory is the device-memory twin's own
limit (memory_limit_gb), here set between the first and the second candidate's peaks."""

import json
from pathlib import Path

import pytest

from tests.cli.conftest import run_cli
from tests.train.conftest import TINY, run_train_cli, tiny_flags, yaml_args

pytestmark = pytest.mark.slow  # real training or simulation: make test runs it, make test-fast not

AUTO = ["--mixture", "auto", "--gpu", "a100-80gb", "--lora", "8", "--json"]


def _timed(tmp_path) -> str:
    """A calibration without the per-step overhead and the host's issue time: a tiny model's step
    times then differ by their compute (with them, every candidate ties and the plan takes the least
    memory, leaving nothing smaller to fall back to)."""
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"constants": {"step_overhead_s": 0, "host_seconds_per_op": 0}}))
    return f"calibration={path}"


def _auto_after_an_injected_oom(tmp_path, *extra: str) -> tuple[Path, dict]:
    """--mixture auto with an out-of-memory injected at step 3 of 4, checkpoints every step: the run
    folder and its record (the fallback must have finished)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    args = _flags(out, save_steps=1, keep_last=2) + ["max_steps=4", *extra, _timed(tmp_path)] + AUTO
    env = dict(os.environ, HF_HUB_OFFLINE="1", FTMIX_INJECT_OOM_AT_STEP="3")
    proc = subprocess.run([sys.executable, "-m", "ftmix", "train", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "run.json").read_text())


def _flags(out, **extra):
    flags = tiny_flags(out, max_steps=2, **extra)
    for key in ("zero", "offload", "gc", "attn"):  # left open for the planner
        flags.pop(key, None)
    return yaml_args(flags)


@pytest.mark.timeout(900)
def test_auto_runs_the_planners_choice(tmp_path):
    proc = run_train_cli(_flags(tmp_path / "run") + AUTO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (attempt,) = record["attempts"]
    assert attempt["outcome"] == "ok" and record["label"] == attempt["label"]
    # the same shape through `ftmix plan`
    from importlib import resources

    config = tmp_path / "config.json"
    entry = json.loads(resources.files("ftmix.catalog").joinpath("data/models/smollm2-135m.json").read_text())
    config.write_text(json.dumps({**entry["config"], **TINY}))
    planned = run_cli("plan", "--model", str(config), "--gpu", "a100-80gb", "--lora", "8", "--precision", "bf16",
                      "--seq-len", "128", "--effective-batch", "4", "--json", check_json=True)
    assert planned["best"]["label"] == attempt["label"]


@pytest.mark.timeout(900)
def test_an_oom_falls_back_to_the_next_candidate_and_finishes(tmp_path):
    out = tmp_path / "run"
    # planned first: ZeRO-2 + FA2 (2.76 MB predicted); the fastest that needs less: 1 GPU + FA2 (2.43 MB)
    proc = run_train_cli(_flags(out, memory_limit_gb=0.0026) + [_timed(tmp_path)] + AUTO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "run.json").read_text())
    first, second = record["attempts"]
    assert first["outcome"] == "oom" and "out of memory" in first["error"] and " of step " in first["error"]
    assert second["outcome"] == "ok" and second["predicted_peak_gb"] < first["predicted_peak_gb"]
    assert record["label"] == second["label"] and record["measured"]["steps"] == 2
    assert record["measured"]["twin"]["device_peak_bytes"] <= 0.0026e9  # the limit held in the run that finished
    m = record["mixture"]
    assert record["measured"]["grad_accum"] * m["micro_batch"] * m["gpus"] == 4  # the effective batch, unchanged
    # issue 19, defect 16: the fallback is printed, not only recorded
    shown = run_train_cli(_flags(tmp_path / "again", memory_limit_gb=0.0026) + [_timed(tmp_path)] + AUTO[:-1],
                          timeout=600)  # the table
    assert shown.returncode == 0 and "--mixture auto: 2 attempts" in shown.stdout
    assert f"1. {first['label']}" in shown.stdout and "out of memory" in shown.stdout


def test_auto_on_cpu_needs_a_gpu_to_plan_for(tmp_path):
    proc = run_train_cli(_flags(tmp_path / "run") + ["--mixture", "auto"], timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--gpu" in proc.stderr


@pytest.mark.timeout(900)
def test_a_later_oom_resumes_from_the_checkpoint_when_the_stage_stays(tmp_path):
    """With --zero 0 fixed, the next candidate keeps the engine (GC or another kernel): it resumes
    from the failed attempt's last checkpoint instead of starting over."""
    _, record = _auto_after_an_injected_oom(tmp_path, "--zero", "0")
    first, second = record["attempts"]
    assert first["outcome"] == "oom" and "at step 3" in first["error"]
    assert second["resumed"] is True and second["mixture"]["zero"] == 0
    assert record["measured"]["steps"] == 4 and record["measured"]["steps_this_run"] == 2


@pytest.mark.timeout(900)
def test_an_fsdp2_run_falls_back_and_resumes_its_distributed_checkpoint(tmp_path):
    """Issue 21: auto's out-of-memory fallback under FSDP2 (the engine fixed, FULL_SHARD without
    offload): the next candidate keeps the engine and resumes from the failed attempt's torch
    distributed checkpoint."""
    out, record = _auto_after_an_injected_oom(tmp_path, "sharding=fsdp2", "--zero", "3", "--offload", "none")
    first, second = record["attempts"]
    assert first["outcome"] == "oom" and "at step 3" in first["error"]
    assert second["resumed"] is True and second["mixture"]["sharding"] == "fsdp2" and second["label"] != first["label"]
    assert all((c / "pytorch_model_fsdp_0").is_dir() for c in out.glob("checkpoint-*")) and list(out.glob("checkpoint-*"))
    assert record["engine"]["name"] == "fsdp2" and record["measured"]["steps"] == 4
