"""The step as a list of kernels (issue 22): the torch-free kernel list's FLOPs equal torch's
FlopCounterMode on the real step, committed for tiny models of five families and catalog models at
full size (benchmarks/step_flops.py), and the list has the structure autograd gives it."""

import json
import sys
from pathlib import Path

import pytest

from ftmix.catalog import load_model
from ftmix.errors import FtmixError
from ftmix.mixture import mixture_from_flags
from ftmix.plan.kernels import step_flops, step_kernels

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import step_flops as bench  # noqa: E402 - the benchmark's own cases, from benchmarks/

COMMITTED = json.loads((BENCH / "results" / "step_flops.json").read_text())["rows"]


@pytest.mark.parametrize("row", COMMITTED, ids=[r["case"] for r in COMMITTED])
def test_the_kernel_list_counts_what_torch_counted(row):
    again = bench.predict(row)
    assert again["predicted_flops"] == row["predicted_flops"], "the kernel list moved: run benchmarks/step_flops.py"
    assert again["predicted_flops"] == pytest.approx(row["counted_flops"], rel=0.01)


def test_the_benchmark_covers_the_mixture_classes_and_full_size():
    labels = " | ".join(r["case"] for r in COMMITTED)
    for what in ("full FT", "LoRA", "QLoRA", "GC", "eager", "SDPA", "embed_tokens,lm_head", "bf16-true"):
        assert what in labels, what
    assert {r["model"] for r in COMMITTED if r["fake"]} >= {"llama-2-7b", "mistral-7b", "phi-3-mini"}
    assert len({r["model"] for r in COMMITTED if not r["fake"]}) >= 5


def _m(**keys):
    return mixture_from_flags(None, **dict(dict(zero=0, seq_len=1024, micro_batch=1, attn="sdpa"), **keys))


def test_frozen_weights_get_no_weight_gradient_and_the_first_layer_no_input_gradient():
    model = load_model("llama-2-7b")
    full = step_flops(model, _m(lora=0))
    lora = step_flops(model, _m(lora=16))
    names = {k.name for k in step_kernels(model, _m(lora=16))}
    assert not any("weight gradient" in n and "lora" not in n for n in names)
    # LoRA's backward is about half of full fine-tuning's (input gradients only): 4N vs 6N per token
    assert 0.64 < lora / full < 0.70
    # the first layer's k_proj has no adapter and nothing below it is trained: no backward at all
    k_backward = [k for k in step_kernels(model, _m(lora=16)) if k.name == "k_proj input gradient (frozen)"]
    assert k_backward[0].count == model.layers - 1
    # GC makes the embedding's output require a gradient: every layer passes one down
    k_gc = [k for k in step_kernels(model, _m(lora=16, gc=True)) if k.name == "k_proj input gradient (frozen)"]
    assert k_gc[0].count == model.layers


def test_gc_recomputes_each_layer_but_its_last_matmul_and_qlora_multiplies_as_lora():
    model = load_model("llama-2-7b")
    plain, gc = step_kernels(model, _m(lora=0)), step_kernels(model, _m(lora=0, gc=True))
    recompute = sum(k.total_flops for k in gc if k.phase == "recompute")
    forward_layers = sum(k.total_flops for k in plain if k.phase == "forward" and k.name != "lm_head")
    down = 2 * 1024 * 11008 * 4096 * model.layers
    assert recompute == pytest.approx(forward_layers - down)
    assert step_flops(model, _m(lora=16, quantize="bnb.nf4")) == step_flops(model, _m(lora=16))


def test_fused_attention_is_counted_without_the_causal_discount_as_torch_counts_it():
    model = load_model("llama-2-7b")
    attention = [k for k in step_kernels(model, _m(lora=0, seq_len=4096)) if k.kind == "attention"]
    product = 2 * 4096 * 4096 * 128 * 32
    assert {(k.phase, k.flops) for k in attention} == {("forward", 2 * product), ("backward", 5 * product)}


def test_what_the_list_does_not_model_is_said():
    with pytest.raises(FtmixError, match="DoRA"):
        step_kernels(load_model("llama-2-7b"), _m(lora=8, dora=True))
