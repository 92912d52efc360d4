"""The activation model against torch itself: bytes autograd saves, and the live peak of a real
forward + backward, for tiny Llama-shaped models on CPU (16-bit, like a GPU run)."""

import contextlib
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftmix.catalog import spec_from_hf_config
from ftmix.estimate import activations as act
from ftmix.estimate.analytic import activation_peak
from ftmix.measure.memcount import LiveBytes, saved_tensor_bytes
from ftmix.mixture import Mixture

warnings.filterwarnings("ignore")
BASE = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, vocab_size=2000,
            max_position_embeddings=2048)


def _build(layers, kv, attn, m):
    torch.manual_seed(0)
    cfg = LlamaConfig(**BASE, num_hidden_layers=layers, num_key_value_heads=kv)
    cfg._attn_implementation = {"fa2": "sdpa"}.get(attn, attn)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if m.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.lora:
        from peft import LoraConfig, get_peft_model
        if m.gc:
            model.enable_input_require_grads()
        targets = m.lora_targets.split(",") if m.lora_targets != "all-linear" else "all-linear"
        model = get_peft_model(model, LoraConfig(r=m.lora, lora_alpha=m.lora_alpha, target_modules=targets))
        if m.zero >= 1:  # DeepSpeed's engine casts the module, adapters included, to 16 bits
            model = model.to(torch.bfloat16)
    model.train()
    return model, spec_from_hf_config(cfg.to_dict())


def _saved_per_token(layers, kv, m):
    model, spec = _build(layers, kv, m.attn, m)
    ids = torch.randint(0, BASE["vocab_size"], (m.micro_batch, m.seq_len))
    mask = torch.ones_like(ids)
    if not m.packing:
        mask[:, -8:] = 0  # padded rows: the mask makes SDPA repeat grouped-query K/V
    # fp32 adapters run under HF Trainer's bf16 autocast, as ftmix train runs them
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if act.adapters_fp32(m) else contextlib.nullcontext()
    with autocast:
        saved, _ = saved_tensor_bytes(lambda: model(input_ids=ids, attention_mask=mask, labels=ids), exclude=model)
    return saved / m.tokens, spec


MIXTURES = [
    Mixture(lora=0, zero=1, attn="sdpa"),
    Mixture(lora=0, zero=1, attn="eager"),
    Mixture(lora=16, zero=0, offload="none", attn="sdpa"),  # PEFT fp32 adapters
    Mixture(lora=16, zero=2, attn="sdpa"),  # 16-bit adapters
    Mixture(lora=16, zero=2, attn="eager", lora_targets="all-linear"),
    Mixture(lora=16, zero=0, offload="none", attn="sdpa", lora_targets="q_proj,k_proj,v_proj,o_proj,down_proj"),
]


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("kv", [4, 2])
@pytest.mark.parametrize("m", MIXTURES, ids=lambda m: f"{m.label}-{m.lora_targets}")
def test_saved_bytes_per_layer(m, kv, packing):
    m = m.with_(seq_len=128, packing=packing)
    three, spec = _saved_per_token(3, kv, m)
    two, _ = _saved_per_token(2, kv, m)
    measured = three - two
    predicted = act.layer_activations(spec, m).total + act.autocast_copies_per_layer(spec, m) / m.tokens
    assert predicted == pytest.approx(measured, rel=0.005), (predicted / 256, measured / 256)


def test_gc_keeps_one_hidden_state_per_layer():
    m = Mixture(lora=16, zero=2, gc=True, seq_len=128, packing=True)
    three, spec = _saved_per_token(3, 4, m)
    two, _ = _saved_per_token(2, 4, m)
    assert three - two == act.checkpoint_bytes(spec, m) == 2 * 256


@pytest.mark.parametrize("m", [
    Mixture(lora=16, zero=2, attn="sdpa", seq_len=256),
    Mixture(lora=16, zero=2, attn="sdpa", seq_len=256, gc=True),
    Mixture(lora=16, zero=2, attn="eager", seq_len=512, gc=True),
    Mixture(lora=16, zero=2, attn="eager", seq_len=512),
    Mixture(lora=16, zero=2, attn="sdpa", seq_len=128, micro_batch=2),
], ids=lambda m: f"{m.label}-s{m.seq_len}-b{m.micro_batch}")
def test_backward_peak(m):
    """Peak live bytes of forward + backward (LoRA: gradients are negligible) within 10%."""
    model, spec = _build(4, 4, m.attn, m)
    ids = torch.randint(0, BASE["vocab_size"], (m.micro_batch, m.seq_len))
    with LiveBytes() as counter:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    parts, _, _, _ = activation_peak(spec, m)
    predicted = sum(parts.values()) + grads
    assert predicted == pytest.approx(counter.peak, rel=0.10), (predicted, counter.peak)
