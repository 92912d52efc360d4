"""Published rows become ftmix inputs, or a named reason why not; units and counters as published."""

import json

import pytest

from ftmix.errors import FtmixError
from ftmix.study.published import NotRepresented, load_rows, represent

LITGPT = {"id": "r1", "source_group": "litgpt/config_hub", "trust": "high", "row_type": "measured_run",
          "model": "meta-llama/Llama-2-7b-hf",
          "model_shape": {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32, "intermediate": 11008,
                          "vocab": 32000},
          "method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_targets": ["query", "value"], "quantization": None,
          "engine": "none (single GPU)", "n_gpus": 1, "gpu": "NVIDIA A100-SXM4-40GB", "seq_len": 512, "micro_batch": 4,
          "global_batch": 128, "gradient_checkpointing": "no", "attention": "sdpa",
          "precision": "bf16-true (weights, grads, optimizer state in bf16; no fp32 master copy)",
          "optimizer": "torch.optim.AdamW", "special_kernels": None,
          "measured": {"peak_memory": {"value": 16.0, "unit": "GB", "what": "torch.cuda.max_memory_allocated()/1e9",
                                       "scope": "per_gpu"},
                       "speed": {"value": 1.62, "unit": "min per 1000 iterations"}}}


def test_a_litgpt_row_maps_to_ftmix_flags():
    row = represent(LITGPT)
    m = row.mixture
    assert (m.zero, m.lora, m.lora_targets, m.precision, m.seq_len, m.micro_batch) == (0, 8, "q_proj,v_proj", "bf16-true", 512, 4)
    assert row.spec.total_params == 6_738_415_616 and row.gpu.name == "a100-40gb"
    assert row.memory_what == "allocated" and row.memory_bytes == 16.0e9  # litgpt's GB is 1e9
    assert row.speed == ("s_per_micro_step", pytest.approx(0.0972))


@pytest.mark.parametrize("change, mixture", [
    (dict(method="qlora", quantization="bitsandbytes NF4 + double quantization, bf16 compute",
          optimizer="bitsandbytes PagedAdamW"), dict(quantize="bnb.nf4-dq", optimizer="paged_adamw_32bit")),
    (dict(method="qlora", quantization="bitsandbytes 4-bit (axolotl qlora: nf4, double quant)"),
     dict(quantize="bnb.nf4-dq")),
    (dict(method="lora", quantization="bitsandbytes LLM.int8 8-bit base (load_in_8bit: true)", optimizer="adamw_8bit"),
     dict(quantize="bnb.int8", optimizer="adamw_8bit")),
    (dict(method_detail="LoRA use_dora"), dict(dora=True)),
])
def test_quantized_rows_map_to_the_mixture_switches(change, mixture):
    m = represent(dict(LITGPT, **change)).mixture
    assert {k: getattr(m, k) for k in mixture} == mixture


@pytest.mark.parametrize("change,why", [
    (dict(method="qlora", quantization="torchao NF4"), "torchao NF4"),
    (dict(method="qlora", quantization="4-bit"), "quantization '4-bit'"),
    (dict(engine="thunder fsdp (zero3)"), "lightning-thunder"),
    (dict(optimizer="torchao adamw_torch_8bit"), "torchao 8-bit"),
    (dict(model="stabilityai/stablelm-base-alpha-3b"), "not modelled"),
    (dict(special_kernels="Liger (RMSNorm, RoPE)"), "fused kernels"),
    (dict(row_type="max_context_at_budget"), "longest-context row without a budget"),
    (dict(lora_targets=["query", "lm_head"]), "output head"),
    (dict(precision="bf16-mixed (fp32 weights)"), "fp32 base"),
    (dict(method_detail="LoRA optimizer lora-fa", optimizer="lora-fa {'r': 32}"), "LoRA-FA"),
    (dict(method_detail="LoRA bd-lora"), "BD-LoRA"),
])
def test_what_ftmix_cannot_represent_is_named(change, why):
    with pytest.raises(NotRepresented, match=why):
        represent(dict(LITGPT, **change))


@pytest.mark.parametrize("engine, zero, offload, fsdp1", [
    ("fsdp (FULL_SHARD, auto_wrap=Block, activation checkpointing per Block)", 3, "none", True),
    ("fsdp (Lightning FSDPStrategy: FULL_SHARD default, cpu_offload=False)", 3, "none", True),
    ("fsdp (FSDP2 FULL_SHARD) with CPU offload of params/grads/optimizer (fsdp_cpu_offload=True)", 3, "all", False),
    ("fsdp2 with offload_params=true", 3, "all", False),
    ("fsdp (SHARD_GRAD_OP)", 2, "none", True),
])
def test_fsdp_rows_map_to_the_fsdp2_engine(engine, zero, offload, fsdp1):
    """Issue 21: FSDP rows are FSDP2 mixtures (pure bf16 kept: FSDP has no master copy of its own);
    FSDP1's are modelled as FSDP2 and say so."""
    row = represent(dict(LITGPT, engine=engine, n_gpus=2))
    m = row.mixture
    assert (m.sharding, m.zero, m.offload, m.precision, m.gpus) == ("fsdp2", zero, offload, "bf16-true", 2)
    assert any("FSDP1" in n for n in row.notes) == fsdp1


def test_a_longest_context_row_carries_its_budget_and_context():
    row = represent(dict(LITGPT, row_type="max_context_at_budget", seq_len=2972,
                         measured={"peak_memory": {"value": 8, "unit": "GB (VRAM budget, not a measurement)",
                                                   "scope": "per_gpu"}, "max_seq_len_fitting": 2972}))
    assert row.budget_bytes == 8 * 2**30 and row.max_seq_len == 2972 and row.memory_bytes is None


def test_lora_variants_that_train_the_same_tensors_stay_represented():
    for detail in ("LoRA use_rslora", "LoRA MiCA init/variant (experiment name)", "LoRA plain"):
        assert represent(dict(LITGPT, method_detail=detail)).mixture.lora == 8


def test_units_and_counters_as_published():
    reserved = dict(LITGPT, source_group="axolotl/examples",
                    measured={"peak_memory": {"value": 20, "unit": "GiB", "what": "max_memory_reserved", "scope": "per_gpu"}})
    row = represent(reserved)
    assert row.memory_what == "reserved" and row.memory_bytes == 20 * 2**30
    smi = dict(LITGPT, measured={"peak_memory": {"value": 7000, "unit": "MB", "what": "not stated", "scope": "per_gpu"}})
    row = represent(smi)
    assert row.memory_what == "device_total" and row.memory_bytes == 7000 * 2**20


def test_hf_trainer_token_counts_are_the_jobs_and_become_per_gpu():
    """HF Trainer's num_input_tokens_seen is gathered over the ranks, so a tokens/s made from it
    (Liger's EfficiencyCallback) is the job's: ftmix compares per GPU."""
    speed = {"value": 8000.0, "unit": "tokens/s", "what": "EfficiencyCallback avg tokens/s via num_input_tokens_seen"}
    four = dict(LITGPT, n_gpus=4, engine="fsdp (FULL_SHARD)", global_batch=16,
                measured=dict(LITGPT["measured"], speed=speed))
    row = represent(four)
    assert row.speed == ("tokens_per_s_per_gpu", 2000.0) and any("/ 4 GPUs" in n for n in row.notes)
    chart = dict(four, source_group="Liger-Kernel/examples (chart-read)",
                 measured=dict(LITGPT["measured"], speed={"value": 8000.0, "unit": "tokens/s", "what": "chart estimate"}))
    assert represent(chart).speed == ("tokens_per_s_per_gpu", 2000.0)
    other = dict(four, measured=dict(LITGPT["measured"], speed={"value": 8000.0, "unit": "tokens/s", "what": "per GPU"}))
    assert represent(other).speed == ("tokens_per_s_per_gpu", 8000.0)


def test_malformed_files_are_one_clear_error(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps(LITGPT) + "\n{not json\n")
    with pytest.raises(FtmixError, match="rows.jsonl:2"):
        load_rows(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(FtmixError, match="cannot read"):
        load_rows(bad)


def test_a_figure_below_the_model_states_is_set_apart():
    """A row whose measured memory is below the parameters, gradients and AdamW states its stated
    setup holds at once cannot be met by any model of that setup: it is listed, not averaged
    (litgpt's Phi-3-mini full fine-tuning row reports 17.01 GB for 3.8B bf16-true AdamW)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import published as bench

    phi3 = dict(LITGPT, model="microsoft/Phi-3-mini-4k-instruct", method="full", lora_r=None, lora_alpha=None,
                lora_targets=None, gpu="NVIDIA A10G (24 GB)", micro_batch=4,
                model_shape={"layers": 32, "hidden": 3072, "heads": 32, "kv_heads": 32, "intermediate": 8192,
                             "vocab": 32064})
    phi3["measured"] = {"peak_memory": dict(LITGPT["measured"]["peak_memory"], value=17.01)}
    row = represent(phi3)
    out = bench.predict(row)
    assert out["memory"]["below_model_states_gb"] == round(8 * row.spec.total_params / 1e9, 3) > 17.01
    plausible = dict(phi3, measured={"peak_memory": dict(LITGPT["measured"]["peak_memory"], value=40.0)})
    assert "below_model_states_gb" not in bench.predict(represent(plausible))["memory"]


@pytest.mark.parametrize("value,expected", [(1, 1), (16, 16), (None, None), (0, None), ("4", None), (True, None)])
def test_the_rows_gradient_accumulation_reaches_the_estimate(value, expected):
    """PEFT's MetaMathQA loop runs one micro step per optimizer step (zero_grad first): its full
    fine-tuning row is predicted without gradients in the forward. A row that does not say (or
    says nonsense) keeps the larger peak, gradients kept between micro steps."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import published as bench

    full = dict(LITGPT, method="full", lora_r=None, lora_alpha=None, lora_targets=None, grad_accum=value,
                measured={"peak_memory": dict(LITGPT["measured"]["peak_memory"], value=120.0)})
    row = represent(full)
    assert row.grad_accum == expected
    out = bench.predict(row)
    assert out["grad_accum"] == expected
    kept = bench.predict(represent(dict(full, grad_accum=None)))["memory"]["predicted_gb"]
    if expected == 1:  # most of the 2 bytes per parameter of bf16-true gradients not there yet
        grads = 2 * row.spec.total_params / 1e9
        assert 0.9 * grads < kept - out["memory"]["predicted_gb"] <= grads + 0.01
    else:
        assert out["memory"]["predicted_gb"] == kept
    # the model states floor counts the gradients whatever the accumulation: they exist at the step
    assert "below_model_states_gb" not in out["memory"]
