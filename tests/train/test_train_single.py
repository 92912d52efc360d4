"""Every mixture family, one process, tiny random-init Llama: the loss curve is the pinned one, the
record is complete and truthful (the engine's own trainable count equals PEFT's and ftmix's)."""

import json
from pathlib import Path

import pytest

from ftmix.catalog import spec_from_hf_config
from ftmix.estimate.states import trainable_params
from ftmix.mixture import Mixture
from ftmix.job.config import load_config
from ftmix.train.launch import launch

from .conftest import TINY, pinned_curve

pytestmark = pytest.mark.slow  # real training or simulation: make test runs it, make test-fast not


def _run(flags):
    return launch(load_config(None, [], flags))


@pytest.mark.parametrize("mixture", [
    dict(zero=0, lora=0, lr=0.001),
    dict(zero=0, lora=8),
    dict(zero=0, lora=8, gc=True),
    dict(zero=0, lora=8, attn="eager"),
    dict(zero=0, lora=8, lora_targets="all-linear"),
], ids=["full", "lora", "lora-gc", "lora-eager", "lora-all-linear"])
def test_family(tiny, mixture, request):
    record = _run(tiny(**mixture))
    pinned_curve(request.node.callspec.id, record)
    m = record["mixture"]
    spec = spec_from_hf_config(dict(TINY, model_type="llama", tie_word_embeddings=True))
    expected = trainable_params(spec, Mixture(**m))
    assert record["engine"]["trainable_params"] == expected
    assert record["engine"]["name"] == "torch" and record["engine"]["zero_stage"] == 0
    assert record["attn_implementation"] == m["attn"]
    meas = record["measured"]
    assert meas["steps"] == 6 and len(meas["loss_curve"]) == 6 and len(meas["step_times_s"]) == 6
    assert meas["median_step_s"] > 0 and meas["tokens_per_s"] > 0 and meas["peak_cpu_hwm_gb"] > 0.1
    assert meas["grad_accum"] == 4 and record["data"]["used"] == 16
    assert record["predicted"]["peak_gb"] > 0 and record["versions"]["torch"].startswith("2.13")
    assert json.loads((Path(record["config"]["output_dir"]) / "run.json").read_text())["label"] == record["label"]
    # on CPU the run takes a GPU's precision (bf16) so that the device-memory twin counts a GPU's bytes;
    # PEFT keeps the adapters in fp32 without DeepSpeed, and full fine-tuning keeps fp32 weights
    assert m["precision"] == "bf16" and record["engine"]["dtype"] == "torch.float32"
    twin = meas["twin"]
    assert twin["device_peak_bytes"] > 0 and twin["device_peak_at"]["phase"] in ("forward", "backward", "optimizer step")
    assert twin["host_peak_bytes"] < 0.01 * twin["device_peak_bytes"]  # no offload: next to nothing on the host


def test_kernels_and_gc_do_not_change_the_math(tiny, tmp_path):
    fp32 = dict(zero=0, lora=8, precision="fp32")  # bf16 rounds differently in each kernel
    base = _run(tiny(**fp32))["measured"]["loss_curve"]
    eager = _run(dict(tiny(**fp32, attn="eager"), output_dir=str(tmp_path / "e")))["measured"]["loss_curve"]
    gc = _run(dict(tiny(**fp32, gc=True), output_dir=str(tmp_path / "g")))["measured"]["loss_curve"]
    assert [round(x, 4) for _, x in base] == [round(x, 4) for _, x in eager] == [round(x, 4) for _, x in gc]


def test_fa2_on_cpu_falls_back_and_says_so(tiny):
    record = _run(tiny(zero=0, lora=8, attn="fa2", max_steps=2))
    assert record["attn_implementation"] == "sdpa" and "fa2" in record["notes"][0]


def test_deepspeed_single_process_matches_plain(tiny, tmp_path):
    # fp32: without DeepSpeed PEFT's adapters stay fp32 while DeepSpeed casts them to bf16
    plain = _run(tiny(zero=0, lora=8, precision="fp32"))
    ds = _run(dict(tiny(zero=2, offload="none", lora=8, precision="fp32"), output_dir=str(tmp_path / "ds")))
    assert ds["engine"]["name"] == "deepspeed" and ds["engine"]["zero_stage"] == 2
    assert ds["engine"]["trainable_params"] == plain["engine"]["trainable_params"]
    assert [round(x, 4) for _, x in ds["measured"]["loss_curve"]] == [round(x, 4) for _, x in plain["measured"]["loss_curve"]]


def test_packing_and_data_report(tiny):
    record = _run(tiny(zero=0, lora=8, packing=True, max_steps=2))
    assert record["data"]["sequences"] < record["data"]["used"]


def test_pure_bf16_trains_with_16_bit_states(tiny):
    """bf16-true: adapters, gradients and AdamW moments in bf16, no master (the twin counts them)."""
    record = _run(tiny(zero=0, lora=8, precision="bf16-true"))
    pinned_curve("lora-bf16-true", record)
    assert record["engine"]["dtype"] == "torch.bfloat16"
    trainable = record["engine"]["trainable_params"]
    comp = record["comparison_components"]["optimizer states (fp32 master + moments)"]
    # two bf16 moments per parameter, plus fused AdamW's 4-byte step counter per tensor (8 here)
    assert comp["predicted"] == 4 * trainable and comp["measured"] == 4 * trainable + 4 * 8
