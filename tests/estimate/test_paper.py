"""The study's Table 1 (section 4) exactly: Llama 2 7B, 8 GPUs, full fine-tuning, no offload."""

import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.estimate import estimate
from ftmix.estimate.paper import korthikanti_activations
from ftmix.mixture import mixture_from_flags


@pytest.mark.parametrize("zero,total", [(1, 39.98), (2, 27.73), (3, 15.48)])
def test_table_1(zero, total):
    gpu = load_gpu("a100-80gb")
    m = mixture_from_flags(gpu, zero=zero, offload="none", lora=0, gpus=8, seq_len=256, micro_batch=1)
    est = estimate(load_model("llama-2-7b"), m, gpu, method="paper")
    assert round(est.peak / 1e9, 2) == total
    assert round(est.breakdown["activations"] / 1e9, 2) == 1.48


def test_activation_formula():
    m = mixture_from_flags(None, seq_len=256)
    assert korthikanti_activations(load_model("llama-2-7b"), m) == 32 * 256 * 4096 * (34 + 5 * 32 * 256 / 4096)


def test_lora_and_no_zero():
    model = load_model("llama-2-7b")
    full = estimate(model, mixture_from_flags(None, zero=0, offload="none", lora=0), method="paper")
    assert full.peak > 16 * 7e9  # "more than 16*7 = 112 GB per GPU"
    lora = estimate(model, mixture_from_flags(None, zero=2, offload="none", gpus=8), method="paper")
    assert lora.breakdown["parameters"] == 2 * 7e9  # the whole base stays 16-bit
    assert lora.breakdown["optimizer"] == pytest.approx(12 * 33_554_432 / 8)


def test_zero3_multi_node_statement():
    # "Full fine-tuning of 100B over 5 nodes of 8 A100s is 40 GB of model states per GPU."
    from ftmix.catalog import spec_from_hf_config
    cfg = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
           "vocab_size": 32000, "max_position_embeddings": 4096}
    model = spec_from_hf_config(cfg, nominal_size="100B")
    est = estimate(model, mixture_from_flags(None, zero=3, offload="none", lora=0, gpus=8, nodes=5), method="paper")
    states = sum(v for k, v in est.breakdown.items() if k != "activations")
    assert states == pytest.approx(40e9)
