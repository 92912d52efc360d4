"""The analytic FSDP2 model (issue 21): rank 0's peak of torch ``fully_shard`` in milliseconds,
against the FSDP2 simulation of the real code (committed, benchmarks/fsdp2_analytic.py) and from the
shapes of what it holds."""

import json
import sys
from pathlib import Path

import pytest

from ftmix.catalog import load_model
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.estimate.fsdp2 import fsdp2_states
from ftmix.mixture import check_mixture, mixture_from_flags

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import fsdp2_analytic  # noqa: E402 - the benchmark's own cases, from benchmarks/

COMMITTED = json.loads((BENCH / "results" / "fsdp2_analytic.json").read_text())["rows"]


def _m(**keys):
    return mixture_from_flags(None, **dict(dict(sharding="fsdp2", precision="bf16", attn="sdpa"), **keys))


@pytest.mark.parametrize("row", COMMITTED, ids=[r["case"] for r in COMMITTED])
def test_the_analytic_peak_is_the_simulated_one_within_1_percent(row):
    """Every committed simulation of the real fully_shard code at full size, predicted again."""
    again = fsdp2_analytic.predict(row["model"], row["keys"], row["grad_accum"])
    assert again["analytic_bytes"] == row["analytic_bytes"], "the model moved: run benchmarks/fsdp2_analytic.py"
    assert again["analytic_bytes"] == pytest.approx(row["simulated_bytes"], rel=0.01)


def test_the_benchmark_covers_both_strategies_lora_full_and_several_families():
    cases = {r["case"] for r in COMMITTED}
    assert len(COMMITTED) == len(fsdp2_analytic.CASES) >= 12
    assert any("FULL_SHARD" in c for c in cases) and any("SHARD_GRAD_OP" in c for c in cases)
    assert {r["model"] for r in COMMITTED} >= {"llama-2-7b", "llama-2-70b", "qwen2.5-7b", "phi-3-mini", "smollm2-135m"}


def test_sharded_states_split_over_the_ranks_and_the_gathered_layers_do_not():
    """Full fine-tuning under FSDP2's mixed precision: fp32 shards, fp32 gradients, two fp32 AdamW
    moments per parameter, each divided by the ranks; a gathered layer is the whole layer in bf16."""
    model = load_model("llama-2-7b")
    two, eight = fsdp2_states(model, _m(lora=0, gpus=2)), fsdp2_states(model, _m(lora=0, gpus=8))
    assert two.parameters == pytest.approx(4 * model.total_params / 2, rel=1e-6)
    assert two.optimizer == pytest.approx(8 * model.total_params / 2, rel=1e-6)
    assert eight.parameters == pytest.approx(two.parameters / 4, rel=1e-6)
    assert eight.layer == two.layer == 2 * model.layer_params
    # LoRA: a frozen bf16 base, fp32 adapters; only the adapters have gradients and moments
    lora = fsdp2_states(model, _m(lora=64, gpus=8))
    assert lora.parameters == pytest.approx(2 * model.total_params / 8, rel=0.02)
    assert lora.gradients < 0.01 * lora.parameters


def test_qlora_shards_the_packed_codes_and_keeps_the_quant_state_whole():
    """4-bit codes in 16-bit storage (two codes a byte: n / 4 elements of 2 bytes) split over the
    ranks like any parameter; the absmax and code books stay whole on every rank; a gathered layer
    is its codes, a quarter of the 16-bit layer's bytes."""
    from ftmix.estimate.states import quantization_constants

    model = load_model("llama-2-7b")
    m2, m8 = _m(lora=16, quantize="bnb.nf4", gpus=2), _m(lora=16, quantize="bnb.nf4", gpus=8)
    two, eight = fsdp2_states(model, m2), fsdp2_states(model, m8)
    constants = quantization_constants(model, m2)
    assert constants == pytest.approx(model.layers * model.layer_params / 64 * 4, rel=0.01)  # fp32 absmax per 64
    assert (two.parameters - constants) == pytest.approx(4 * (eight.parameters - constants), rel=0.01)
    plain = fsdp2_states(model, _m(lora=16, gpus=2))
    assert two.layer == pytest.approx(plain.layer / 4, rel=0.01)
    assert two.gradients == plain.gradients and two.optimizer == plain.optimizer  # the same adapters
    # the whole step: a quarter of the base's bytes cuts the 7B's peak on 2 ranks by GBs
    assert estimate(model, m2).peak < estimate(model, _m(lora=16, gpus=2)).peak - 3e9
    # CPUOffloadPolicy moves the shards to the host; the quant state stays on the GPU
    off = fsdp2_states(model, m2.with_(offload="all"))
    assert off.parameters == constants
    assert off.cpu == pytest.approx(2 * (two.parameters - constants + two.gradients + two.optimizer + two.step_temp))


def test_shard_grad_op_holds_every_layer_that_full_shard_frees():
    model = load_model("llama-2-7b")
    full = estimate(model, _m(zero=3, lora=0, gc=True, gpus=8, seq_len=1024))
    grad_op = estimate(model, _m(zero=2, lora=0, gc=True, gpus=8, seq_len=1024))
    layer = 2 * model.layer_params
    assert grad_op.breakdown["gathered_params"] - full.breakdown["gathered_params"] >= (model.layers - 3) * layer
    assert "SHARD_GRAD_OP" in grad_op.label and "FULL_SHARD" in full.label


def test_cpu_offload_moves_the_sharded_states_to_the_host():
    model = load_model("llama-2-13b")
    on = estimate(model, _m(lora=0, gc=True, gpus=8, seq_len=1024))
    off = estimate(model, _m(lora=0, gc=True, gpus=8, seq_len=1024, offload="all"))
    states = sum(on.breakdown[k] for k in ("parameters", "gradients", "optimizer"))
    assert off.breakdown["parameters"] == off.breakdown["optimizer"] == 0
    assert off.cpu_bytes >= 8 * states  # every rank on the node
    assert off.peak < on.peak - 0.9 * states and "CPUOffloadPolicy" in " ".join(off.notes)


def test_without_accumulation_the_first_moments_have_no_gradients():
    model = load_model("llama-2-7b")
    kept = estimate(model, _m(lora=0, gc=True, gpus=8, seq_len=2048), grad_accum=2)
    fresh = estimate(model, _m(lora=0, gc=True, gpus=8, seq_len=2048), grad_accum=1)
    assert fresh.peak <= kept.peak


@pytest.mark.parametrize("keys,says", [
    (dict(zero=1), "ZeRO-1 (optimizer states only) is DeepSpeed's"),
    (dict(zero=0), "--zero 0 shards nothing"),
    (dict(offload="optimizer"), "moves the parameters, gradients and optimizer states together"),
    (dict(zero=2, offload="all"), "needs ZeRO stage 3"),
    (dict(quantize="bnb.int8", lora=8), "Int8Params) are int8"),
    (dict(optimizer="adamw_8bit"), "DTensor shards"),
])
def test_what_fully_shard_cannot_run_is_refused(keys, says):
    with pytest.raises(FtmixError, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_mixture(_m(**keys))


def test_fsdp2_defaults_to_full_shard_without_offload_and_takes_pure_16_bit():
    m = mixture_from_flags(None, sharding="fsdp2")
    assert (m.zero, m.offload) == (3, "none") and m.engine == "FSDP2 FULL_SHARD"
    check_mixture(m.with_(precision="bf16-true"))
    with pytest.raises(FtmixError, match="needs --zero 0"):
        check_mixture(m.with_(precision="bf16-true", sharding="deepspeed"))
