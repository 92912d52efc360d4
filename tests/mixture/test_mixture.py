import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.errors import FtmixError
from ftmix.mixture import Mixture, check_mixture, mixture_from_flags, resolve_targets
from ftmix.mixture.engine import deepspeed_config


def test_defaults_are_the_studys_setup():
    m = mixture_from_flags(load_gpu("a100-80gb"))
    assert (m.zero, m.offload, m.lora, m.lora_alpha, m.lora_targets, m.gc) == (2, "optimizer", 64, 32, "q_proj,v_proj", False)
    assert (m.attn, m.precision, m.micro_batch, m.seq_len, m.gpus, m.nodes) == ("fa2", "bf16", 1, 256, 1, 1)


def test_defaults_follow_the_gpu():
    m = mixture_from_flags(load_gpu("v100-32gb"))
    assert (m.attn, m.precision) == ("sdpa", "fp16")


def test_label():
    m = Mixture(zero=3, offload="none", lora=64, gc=True, attn="fa2")
    assert m.label == "ZeRO-3 + LoRA r64 + GC + FA2"
    assert Mixture(zero=0, offload="none", lora=0, attn="eager").label == "1 GPU + full FT + eager"
    assert Mixture(zero=0, offload="none", lora=0, attn="eager", gpus=2).label == "DDP + full FT + eager"


@pytest.mark.parametrize("flags,gpu,message", [
    (dict(attn="fa2"), "v100-32gb", "FlashAttention-2"),
    (dict(attn="fa2"), "t4-16gb", "FlashAttention-2"),
    (dict(precision="bf16"), "v100-16gb", "bf16"),
    (dict(zero=2, offload="all"), "a100-80gb", "stage 3"),
    (dict(zero=0, offload="optimizer"), "a100-80gb", "ZeRO stage >= 1"),
    (dict(seq_len=8192), "a100-80gb", "positions"),
    (dict(seq_len=0), "a100-80gb", "seq-len"),
    (dict(micro_batch=-1), "a100-80gb", "micro-batch"),
    (dict(gpus=0), "a100-80gb", "gpus"),
    (dict(nodes=0), "a100-80gb", "nodes"),
    (dict(lora=-4), "a100-80gb", "lora"),
    (dict(zero=4), "a100-80gb", "zero"),
    (dict(offload="disk"), "a100-80gb", "offload"),
    (dict(attn="xformers"), "a100-80gb", "attn"),
    (dict(lora_targets="w_pack"), "a100-80gb", "w_pack"),
])
def test_impossible_mixtures(flags, gpu, message):
    g = load_gpu(gpu)
    with pytest.raises(FtmixError, match=message):
        check_mixture(mixture_from_flags(g, **flags), load_model("llama-2-7b"), g)


def test_targets():
    llama, phi3, falcon = load_model("llama-2-7b"), load_model("phi-3-mini"), load_model("falcon-180b")
    assert resolve_targets(Mixture(), llama) == ("q_proj", "v_proj")
    assert resolve_targets(Mixture(lora_targets="all-linear"), llama) == llama.linear_names
    assert resolve_targets(Mixture(), phi3) == ("qkv_proj",)  # PEFT's default for fused q/k/v
    assert resolve_targets(Mixture(), falcon) == ("query_key_value",)
    with pytest.raises(FtmixError):
        resolve_targets(Mixture(lora_targets="q_proj,v_proj,w1"), llama)


def test_deepspeed_config_from_mixture():
    cfg = deepspeed_config(Mixture(zero=3, offload="all", precision="bf16"), trainable_params=33_554_432)
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["reduce_bucket_size"] == 33_554_432 and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    plain = deepspeed_config(Mixture(zero=0, offload="none"), trainable_params=10)
    assert plain["zero_optimization"] == {"stage": 0}


def test_zero_0_defaults_to_no_offload():
    assert mixture_from_flags(None, zero=0).offload == "none"
    assert mixture_from_flags(None, zero=1).offload == "optimizer"
