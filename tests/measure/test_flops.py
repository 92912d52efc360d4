"""torch's FlopCounterMode on a real tiny step, as ftmix.measure.flops counts it: the CPU flash
attention and bitsandbytes' 4-bit GEMM counted as their GPU counterparts are, and the kernel
list's figure met exactly (the committed benchmark covers the rest: tests/plan/test_kernels.py)."""

import pytest

from ftmix.catalog import spec_from_hf_config
from ftmix.measure.flops import count_flops
from ftmix.mixture import mixture_from_flags
from ftmix.plan.kernels import step_flops

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512,
        "tie_word_embeddings": False}


@pytest.mark.parametrize("keys", [dict(lora=0, gc=True), dict(lora=8, quantize="bnb.nf4")], ids=["full-gc", "qlora"])
def test_a_real_tiny_step_counts_what_the_kernel_list_says(keys):
    m = mixture_from_flags(None, **dict(dict(zero=0, seq_len=32, micro_batch=2, attn="sdpa"), **keys))
    total, by_op = count_flops(TINY, m, fake=False)
    assert total == step_flops(spec_from_hf_config(TINY, "tiny"), m)
    attention = [op for op in by_op if "flash_attention_for_cpu" in op]
    assert len(attention) == 2 and all(by_op[op] > 0 for op in attention)  # forward and backward counted
    if m.quantize != "none":
        assert by_op["bitsandbytes.gemm_4bit"] == 2 * 64 * 2 * sum(
            i * o for i, o in ((64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)))
