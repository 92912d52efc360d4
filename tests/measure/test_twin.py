"""The device-memory twin on real tiny models: every byte counted (the same peak as the plain
live-bytes ruler), device and host told apart, the peak placed in its phase and explained by role."""

import torch
import transformers

from ftmix.measure.memcount import LiveBytes
from ftmix.measure.twin import DeviceTwin

CFG = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)


def _two_steps(ruler, twin=None):
    with ruler:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(CFG, dtype=torch.bfloat16, attn_implementation="sdpa")
        opt = torch.optim.AdamW(model.parameters(), foreach=True)
        if twin is not None:
            twin.watch_model(model)
            twin.watch_step(opt)
        ids = torch.randint(0, 256, (2, 64))
        for step in (1, 2):
            if twin is not None:
                twin.begin_step(step)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            if twin is not None:
                twin.mark_model(model)
                twin.mark_optimizer(opt)
    return model


def test_same_peak_as_the_live_bytes_ruler_and_a_breakdown_that_sums_to_it():
    plain = LiveBytes()
    _two_steps(plain)
    twin = DeviceTwin()
    model = _two_steps(twin, twin)
    report = twin.report()
    assert report["device_peak_bytes"] == plain.peak and report["host_peak_bytes"] == 0
    assert report["breakdown_sums_to_peak"]
    assert sum(report["device_by_role"].values()) == plain.peak
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # RoPE's inv_freq
    assert report["device_by_role"]["parameter"] == params + buffers
    # AdamW's two bf16 moments per parameter (foreach keeps them in the parameters' dtype)
    assert report["device_by_role"]["optimizer state"] == 2 * params
    assert report["device_peak_at"]["phase"] in ("forward", "backward", "optimizer step")
    assert report["device_peak_at"]["step"] in (1, 2)
    assert report["device_by_role"]["activation"] > 0
    assert any(s["site"].startswith("transformers/") for s in report["device_top_sites"])


def test_moves_between_device_and_host_are_real_copies():
    with DeviceTwin() as twin:
        x = torch.ones(1000, dtype=torch.bfloat16)  # on the (virtual) device
        y = x.cpu()  # on a GPU: a copy into host memory
        z = y.to("cpu:0")  # and back
        assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        assert z.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
        assert twin.live == {"device": 4000, "host": 2000}
        del y
        assert twin.live == {"device": 4000, "host": 0}
        w = x.to("cpu:0")  # already on the device: no copy, as on a GPU
        assert w.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert twin.peak == {"device": 4000, "host": 2000}


def test_paused_twin_counts_nothing():
    with DeviceTwin() as twin:
        with twin.paused():
            torch.ones(10_000)
        torch.ones(100)
    assert twin.peak["device"] == 400


def test_deepspeed_defragment_returns_its_buffer_to_the_device():
    """Stage 3 flattens the parameter partitions through a host buffer and sends it back with
    ``.to(t.device)`` (``deepspeed/runtime/zero/utils.py:defragment``): on a GPU the result is
    device memory, even while the twin reads DeepSpeed's bare "cpu" as the host (offload on)."""
    from deepspeed.runtime.zero.utils import defragment

    with DeviceTwin(offload=True) as twin:
        parts = [torch.ones(1000, dtype=torch.bfloat16, device="cpu:0") for _ in range(3)]
        flat = defragment(parts)
        assert twin._tag_of(flat) == "device" and twin._tag_of(parts[0]) == "device"
        assert twin.live == {"device": 6000, "host": 0}


def test_dropout_masks_count_one_byte_per_element_as_on_cuda():
    """CPU dropout fills a mask of the input's dtype (bernoulli_) and keeps it for backward; CUDA's
    fused native_dropout keeps booleans: the twin counts the GPU's byte per element."""
    x = torch.ones(1000, dtype=torch.bfloat16, device="cpu:0", requires_grad=True)
    with DeviceTwin() as twin:
        y = torch.nn.functional.dropout(x, 0.1, training=True)
        assert twin.live["device"] == y.nbytes + 1000  # output 2000 + mask 1000, not 2000
        y.sum().backward()
    assert x.grad is not None
