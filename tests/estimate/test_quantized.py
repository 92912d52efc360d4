"""QLoRA and the other small-GPU setups (issue 20): the byte formulas against bitsandbytes' own
numbers, the switches in every command, and bad input before anything loads."""

import json

import pytest

from ftmix.catalog import load_model, spec_from_hf_config
from ftmix.estimate import estimate
from ftmix.estimate import quantized as q
from ftmix.estimate.states import model_states, trainable_params
from ftmix.mixture import Mixture

N = 4096 * 4096


def test_nf4_is_four_and_a_half_bits_and_double_quantization_about_4_13():
    # bitsandbytes quantize_4bit: n/2 packed bytes, one fp32 absmax per 64 weights, a 16-value code book
    nf4 = q.quantized_bytes(4096, 4096, Mixture(quantize="bnb.nf4"))
    assert nf4 == N / 2 + 4 * N / 64 + 64
    dq = q.quantized_bytes(4096, 4096, Mixture(quantize="bnb.nf4-dq"))
    assert dq == N / 2 + N / 64 + 4 * (N / 64 / 256) + 64 + 1024 + 4
    assert 8 * nf4 / N == pytest.approx(4.5, abs=1e-4) and 8 * dq / N == pytest.approx(4.127, abs=1e-3)
    assert q.quantized_bytes(4096, 11008, Mixture(quantize="bnb.int8")) == 4096 * 11008 + 4 * 11008  # + SCB rows


def test_tiny_model_quantization_constants_as_bitsandbytes_allocates_them():
    """The tiny conformance Llama loaded by transformers + bitsandbytes 0.50.2 holds exactly these
    constants (counted from each Linear4bit's quant_state: 18432 B of absmax and 896 of code books
    without double quantization; 4688 + 15232 + 56 with it; int8: 8192 B of SCB)."""
    spec = spec_from_hf_config({"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "vocab_size": 1024, "tie_word_embeddings": False})
    packed = 2 * sum(lin.d_in * lin.d_out for lin in spec.linears) // 2
    for scheme, constants in (("bnb.nf4", 18432 + 896), ("bnb.nf4-dq", 4688 + 15232 + 56)):
        m = Mixture(quantize=scheme)
        linear = 2 * sum(q.quantized_bytes(lin.d_in, lin.d_out, m) for lin in spec.linears)
        assert linear == packed + constants
    m8 = Mixture(quantize="bnb.int8")
    assert 2 * sum(q.quantized_bytes(lin.d_in, lin.d_out, m8) for lin in spec.linears) == 2 * packed + 8192


def test_qlora_holds_a_quarter_of_the_lora_base_and_upcasts_the_rest_to_fp32():
    spec = load_model("llama-2-7b")
    lora = model_states(spec, Mixture(zero=0, offload="none"))
    qlora = model_states(spec, Mixture(zero=0, offload="none", quantize="bnb.nf4"))
    linear = spec.layers * sum(lin.d_in * lin.d_out for lin in spec.linears)
    other = spec.total_params - linear
    adapters = trainable_params(spec, Mixture()) * 4
    assert qlora.parameters == pytest.approx(linear * 4.5 / 8 + 4 * other + adapters, rel=1e-4)
    assert lora.parameters == 2 * spec.total_params + adapters
    # under DeepSpeed the engine casts the module back to 16 bits (measured: ZeRO-2 QLoRA row)
    z2 = model_states(spec, Mixture(zero=2, offload="none", quantize="bnb.nf4"))
    assert z2.parameters == pytest.approx(linear * 4.5 / 8 + 2 * other + 2 * trainable_params(spec, Mixture()),
                                          rel=1e-4)


def test_8bit_adam_keeps_small_tensors_in_fp32():
    m = Mixture(optimizer="adamw_8bit")
    assert q.optimizer_bytes([4095], m) == 8 * 4095
    assert q.optimizer_bytes([4096], m) == 2 * 4096 + 2 * 4 * 16
    assert q.optimizer_bytes([10], Mixture(optimizer="paged_adamw_32bit")) == 80
    spec = load_model("llama-2-7b")
    full = model_states(spec, Mixture(zero=0, offload="none")).optimizer
    eight = model_states(spec, Mixture(zero=0, offload="none", optimizer="adamw_8bit")).optimizer
    assert eight == pytest.approx(full * (2 + 8 / 256) / 8, rel=1e-3)


def test_dora_and_modules_to_save_train_more_tensors():
    spec = load_model("llama-2-7b")
    base = trainable_params(spec, Mixture())
    per_layer_outs = sum(lin.d_out for lin in spec.linears if lin.name in ("q_proj", "v_proj"))
    assert trainable_params(spec, Mixture(dora=True)) == base + spec.layers * per_layer_outs
    assert trainable_params(spec, Mixture(modules_to_save="lm_head")) == base + spec.vocab * spec.hidden


def test_gptq_checkpoint_is_read_from_its_config(tmp_path):
    cfg = json.loads(json.dumps(load_model("llama-2-7b").__dict__["hub_id"] and {}))
    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "vocab_size": 32000,
           "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    spec = spec_from_hf_config(cfg, "llama-2-7b-gptq")
    assert spec.quantization == ("gptq", 4, 128) and any("GPTQ" in n for n in spec.notes)
    est = estimate(spec, Mixture(zero=0, offload="none"))
    plain = estimate(load_model("llama-2-7b"), Mixture(zero=0, offload="none"))
    assert est.breakdown["parameters"] < 0.45 * plain.breakdown["parameters"]


def test_a_24gb_card_fits_7b_qlora_with_gc_but_not_16bit_lora_at_4k():
    spec = load_model("llama-2-7b")
    from ftmix.catalog import load_gpu
    gpu = load_gpu("rtx4090-24gb")
    kw = dict(zero=0, offload="none", gc=True, attn="fa2", seq_len=4096, precision="bf16")
    assert estimate(spec, Mixture(quantize="bnb.nf4", **kw), gpu).fits
    assert not estimate(spec, Mixture(**kw, micro_batch=4), gpu).fits
