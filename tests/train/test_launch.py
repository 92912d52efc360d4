"""Launch commands for several processes and nodes, and the user's own DeepSpeed JSON."""

import json
import sys

import pytest

from ftmix.errors import FtmixError
from ftmix.job.config import load_config
from ftmix.train.launch import clear_stale_locks, launch, worker_command


def test_torchrun_multi_node_command(tmp_path):
    cfg = load_config(None, ["nproc=8", "nnodes=2", "node_rank=1", "master_addr=10.0.0.1", "master_port=29600"])
    cmd = worker_command(cfg, tmp_path / "c.json")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    joined = " ".join(cmd)
    for part in ("--nproc_per_node 8", "--nnodes 2", "--node_rank 1", "--master_addr 10.0.0.1", "--master_port 29600",
                 "-m ftmix.train.worker"):
        assert part in joined


def test_deepspeed_launcher_with_hostfile(tmp_path):
    cfg = load_config(None, ["launcher=deepspeed", "nproc=8", "nnodes=2", "hostfile=/etc/hosts.ds"])
    cmd = worker_command(cfg, tmp_path / "c.json")
    joined = " ".join(cmd)
    assert cmd[0].endswith("deepspeed") and "--hostfile /etc/hosts.ds" in joined and "--num_nodes 2" in joined
    assert "--num_gpus 8" in joined and "--module ftmix.train.worker" in joined


def test_stale_locks_are_cleared_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import time

    for op in ("cpu_adam", "shm_comm"):
        (tmp_path / op).mkdir()
        (tmp_path / op / "lock").write_text("")
    hour_ago = time.time() - 3600
    os.utime(tmp_path / "cpu_adam" / "lock", (hour_ago, hour_ago))  # left by a killed run
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert clear_stale_locks() == 1 and not (tmp_path / "cpu_adam" / "lock").exists()
    assert (tmp_path / "shm_comm" / "lock").exists()  # another run is building this op now


@pytest.mark.slow
def test_users_own_deepspeed_json(tiny, tmp_path):
    """The user's JSON fixes the stage and sizes the buckets, for the engine and the estimate alike."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                              "zero_optimization": {"stage": 1, "reduce_bucket_size": 3_000_000},
                              "zero_allow_untested_optimizer": True}))
    record = launch(load_config(None, [], tiny(lora=8, max_steps=2, deepspeed_config=str(ds))))
    assert record["engine"]["name"] == "deepspeed" and record["engine"]["zero_stage"] == 1
    assert record["mixture"]["zero"] == 1 and record["mixture"]["offload"] == "none"
    # one 3e6-element bf16 bucket, predicted and measured by the twin
    assert record["predicted"]["breakdown_bytes"]["zero_buffers"] == 6_000_000
    buffers = record["comparison_components"]["gradients and DeepSpeed buffers"]
    assert buffers["measured"] == pytest.approx(buffers["predicted"], rel=0.01)
    with pytest.raises(FtmixError, match="contradicts"):
        launch(load_config(None, [], tiny(zero=2, lora=8, max_steps=2, deepspeed_config=str(ds))))



@pytest.mark.slow
def test_a_finished_rank_leaves_its_process_group(tmp_path):
    """The worker destroys the group itself once training returns, rather than leaving gloo's
    threads to interpreter finalization (which can abort a finished run: pytorch/pytorch#179291).
    In a fresh process: an in-process DeepSpeed run of another test may hold this one's group."""
    import subprocess

    (tmp_path / "c.json").write_text(json.dumps({}))
    code = f"""
import sys
import torch.distributed as dist
from ftmix.train import worker

def fake_train(cfg):
    dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
    print("inside", dist.is_initialized())

worker.train = fake_train
sys.argv = ["worker", "{tmp_path / 'c.json'}", "--local_rank=0"]
worker.main()
print("after", dist.is_initialized())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["inside", "True", "after", "False"]
