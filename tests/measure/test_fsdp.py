"""`estimate --method simulate --sharding fsdp2`: rank 0 of N FSDP2 ranks under a fake process group
and fake tensors holds what a real gloo rank of the same job holds, by the device-memory twin
(issue 10, data-parallel sharding)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from ftmix.errors import FtmixError
from ftmix.measure.simulate import simulate
from ftmix.mixture import mixture_from_flags
from tests.measure.test_simulate import CONFIGS

pytestmark = pytest.mark.slow  # real training or simulation: make test runs it, make test-fast not


def _real(tmp_path, config: dict, m, ranks: int) -> list[dict]:
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "mixture.json").write_text(json.dumps(dataclasses.asdict(m)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    proc = subprocess.run([*torchrun, "-m", "ftmix.measure.fsdp", str(tmp_path / "config.json"),
                           str(tmp_path / "mixture.json"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(ranks)]


def _mixture(zero, lora, gc, precision="bf16", ranks=2, attn="sdpa", sharding="fsdp2"):
    return mixture_from_flags(None, zero=zero, offload="none", lora=lora, gc=gc, attn=attn, precision=precision,
                              seq_len=128, micro_batch=1, gpus=ranks, sharding=sharding)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("arch,zero,lora,gc,precision,ranks", [
    ("llama", 3, 0, False, "bf16", 2), ("llama", 3, 8, True, "bf16", 2), ("qwen3", 2, 0, True, "bf16", 2),
    ("mistral", 3, 0, False, "bf16-true", 2), ("llama", 3, 0, True, "bf16", 4)])
def test_fsdp2_simulation_is_a_real_gloo_rank(tmp_path, arch, zero, lora, gc, precision, ranks):
    m = _mixture(zero, lora, gc, precision, ranks)
    real = _real(tmp_path, CONFIGS[arch], m, ranks)
    est = simulate(CONFIGS[arch], m, arch)
    measured = real[0]["device_peak_bytes"]
    assert est.peak == pytest.approx(measured, rel=0.001), (est.peak, measured, est.breakdown, real[0]["device_by_role"])
    assert sum(est.breakdown.values()) == est.peak
    assert "FSDP2 fully_shard" in est.notes[-1] and f"rank 0 of {ranks}" in est.notes[-1]
    # rank 0 holds the largest shards (FSDP2 pads the last rank's): no rank holds more
    assert all(r["device_peak_bytes"] <= measured * 1.01 for r in real)


def test_fsdp2_shards_the_model_states_over_the_ranks():
    """Full fine-tuning, mixed precision: fp32 parameters, fp32 gradients and two fp32 AdamW states
    per parameter, each split over the ranks (FSDP2 pads dim 0 to a multiple of the ranks)."""
    config = CONFIGS["llama"]
    two = simulate(config, _mixture(3, 0, True, ranks=2), "llama")
    four = simulate(config, _mixture(3, 0, True, ranks=4), "llama")
    for est, ranks in ((two, 2), (four, 4)):
        assert est.breakdown["optimizer"] == pytest.approx(8 * est.total_params / ranks, rel=0.01)
        assert est.breakdown["gradients"] >= 4 * est.total_params / ranks * 0.99
    assert four.peak < two.peak


def test_fsdp2_takes_pure_16_bit_training_that_deepspeed_cannot():
    m = _mixture(3, 0, False, precision="bf16-true")
    est = simulate(CONFIGS["llama"], m, "llama")
    assert est.breakdown["optimizer"] == pytest.approx(4 * est.total_params / 2, rel=0.01)  # two bf16 states
    with pytest.raises(FtmixError, match="needs --zero 0"):
        simulate(CONFIGS["llama"], m.with_(sharding="deepspeed"), "llama")


@pytest.mark.parametrize("args,message", [
    (["--sharding", "fsdp2", "--method", "paper"], "--method paper is the study's ZeRO formulas"),
    (["--method", "simulate", "--sharding", "fsdp2", "--zero", "1"], "FULL_SHARD (--zero 3) or SHARD_GRAD_OP (--zero 2)"),
    (["--method", "simulate", "--sharding", "fsdp2", "--offload", "all"], "simulated without offload"),
    (["--method", "simulate", "--sharding", "megatron"], "sharding must be one of deepspeed, fsdp2"),
])
def test_fsdp2_bad_input_is_one_line_before_torch_loads(args, message):
    code = ("import sys, runpy; sys.argv = ['ftmix', 'estimate', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('ftmix', run_name='__main__')\n"
            "finally:\n    print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0] and lines[1] == "no torch", proc.stderr


def test_the_cli_simulates_fsdp2_and_says_so(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["llama"]))
    args = ["--model", str(tmp_path / "config.json"), "--method", "simulate", "--sharding", "fsdp2", "--gpus", "4",
            "--lora", "0", "--seq-len", "128"]
    run = lambda extra: subprocess.run([sys.executable, "-m", "ftmix", "estimate", *args, *extra],  # noqa: E731
                                       capture_output=True, text=True, timeout=300,
                                       env=dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200"))
    proc = run(["--json"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # --sharding fsdp2 defaults to FULL_SHARD (--zero 3) with nothing offloaded
    assert out["sharding"] == "fsdp2" and out["label"].startswith("FSDP2 FULL_SHARD")
    assert out["mixture"]["zero"] == 3 and out["mixture"]["offload"] == "none"
    m = _mixture(3, 0, False, ranks=4)
    assert out["peak_gb"] == round(simulate(CONFIGS["llama"], m, "llama").peak / 1e9, 3)
    table = run([])
    assert table.returncode == 0 and "FSDP2 FULL_SHARD + full FT" in table.stdout and "rank 0 of 4" in table.stdout
