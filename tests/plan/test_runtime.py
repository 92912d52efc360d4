import json

import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.errors import FtmixError
from ftmix.mixture import mixture_from_flags
from ftmix.plan import DEFAULT, load_calibration, step_time
from ftmix.plan.runtime import flops_per_token, grad_accum_steps, matmul_params

A100, V100 = load_gpu("a100-80gb"), load_gpu("v100-32gb")
LLAMA7 = load_model("llama-2-7b")


def t(model=LLAMA7, gpu=A100, effective_batch=8, **flags):
    return step_time(model, gpu, mixture_from_flags(gpu, **flags), effective_batch)


def test_flops_per_token():
    n = matmul_params(LLAMA7)
    assert n == LLAMA7.total_params - LLAMA7.vocab * LLAMA7.hidden - 65 * LLAMA7.hidden  # no lookup, no norms
    full, _ = flops_per_token(LLAMA7, mixture_from_flags(A100, lora=0))
    lora, _ = flops_per_token(LLAMA7, mixture_from_flags(A100))
    gc, _ = flops_per_token(LLAMA7, mixture_from_flags(A100, lora=0, gc=True))
    assert full == 6 * n and gc == 8 * n
    assert lora == pytest.approx(4 * n, rel=0.01)


def test_causal_kernels_halve_attention_flops():
    _, flash = flops_per_token(LLAMA7, mixture_from_flags(A100, seq_len=4096))
    _, eager = flops_per_token(LLAMA7, mixture_from_flags(A100, seq_len=4096, attn="eager"))
    assert eager == 2 * flash


def test_the_step_time_counts_the_kernel_lists_flops_and_reports_mfu():
    from ftmix.plan.kernels import step_flops
    from ftmix.plan.runtime import micro_step_flops

    m = mixture_from_flags(A100, lora=0, gc=True, seq_len=2048, attn="sdpa")
    gemm, attention, useful = micro_step_flops(LLAMA7, m)
    counted = step_flops(LLAMA7, m)  # torch's count: attention without the causal discount
    attention_counted = counted - gemm
    assert attention == pytest.approx(attention_counted / 2)
    # GC's recompute is in the time but not in MFU's numerator: each layer's forward but its MLP output
    # projection, about a fifth of full fine-tuning's step
    from ftmix.plan.kernels import step_kernels

    recompute = sum(k.total_flops * (0.5 if k.kind == "attention" else 1) for k in step_kernels(LLAMA7, m)
                    if k.phase == "recompute")
    assert gemm + attention - useful == pytest.approx(recompute)
    assert 0.18 < recompute / (gemm + attention) < 0.23
    step = step_time(LLAMA7, A100, m, 8)
    assert step.flops == pytest.approx(8 * useful) and 0.1 < step.mfu < 0.55
    assert step.to_json()["mfu"] == round(step.mfu, 4)
    # what the kernel list does not model falls back to the per-token estimate, said nowhere else
    dora = mixture_from_flags(A100, lora=8, dora=True)
    assert micro_step_flops(LLAMA7, dora)[0] == pytest.approx(flops_per_token(LLAMA7, dora)[0] * dora.tokens)


def test_the_studys_orderings():
    # "Without LoRA/GC/FA2, memory falls and runtime rises from stage 1 to 2 to 3"
    full = [t(zero=z, lora=0, offload="none", gpus=8, attn="sdpa").total for z in (1, 2, 3)]
    assert full[0] <= full[1] < full[2]
    # GC costs about one more forward: 20-40% on a compute-bound step
    base, gc = t(gpus=8, offload="none").total, t(gpus=8, offload="none", gc=True).total
    assert 1.15 < gc / base < 1.45
    # "Turning CPU offload off is fastest"
    assert t(gpus=8, offload="none").total < t(gpus=8, offload="optimizer").total
    # FA2 faster than eager, most at long context
    short = t(seq_len=256, attn="eager").total / t(seq_len=256).total
    long = t(seq_len=4096, attn="eager").total / t(seq_len=4096).total
    assert 1 < short < long


def test_more_gpus_fewer_accumulation_steps():
    assert grad_accum_steps(mixture_from_flags(A100, gpus=1), 8) == 8
    assert grad_accum_steps(mixture_from_flags(A100, gpus=8), 8) == 1
    assert t(gpus=8, offload="none").total < t(gpus=1, offload="none").total


def test_multi_node_is_slower_for_zero3():
    # per micro step: at a fixed effective batch two nodes take half the micro steps
    one = t(model=load_model("llama-2-70b"), zero=3, gpus=8, nodes=1, offload="none", effective_batch=16)
    two = t(model=load_model("llama-2-70b"), zero=3, gpus=8, nodes=2, offload="none", effective_batch=16)
    assert two.communication / two.grad_accum > one.communication / one.grad_accum


def test_calibration_overrides(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"constants": {"mfu_max": 0.275}}))
    consts = load_calibration(path)
    assert consts.mfu_max == 0.275 and consts.sdpa_efficiency == DEFAULT.sdpa_efficiency
    m = mixture_from_flags(A100, gpus=8, offload="none")
    assert step_time(LLAMA7, A100, m, c=consts).compute == pytest.approx(2 * step_time(LLAMA7, A100, m).compute)
    path.write_text(json.dumps({"warp_speed": 9}))
    with pytest.raises(FtmixError, match="unknown constants"):
        load_calibration(path)
    path.write_text("[1, 2]")
    with pytest.raises(FtmixError):
        load_calibration(path)


def test_qlora_pays_a_fixed_dequantization_cost_per_weight_use():
    """Issue 20: each use of a quantized weight (forward, the input gradient, GC's recompute) reads
    it packed and writes and re-reads a 16-bit copy; the cost does not grow with the tokens."""
    from ftmix.catalog import load_gpu, load_model
    from ftmix.mixture import Mixture
    from ftmix.plan.runtime import step_time

    spec, gpu = load_model("llama-2-7b"), load_gpu("a100-80gb")
    linear = spec.layers * sum(lin.d_in * lin.d_out for lin in spec.linears)
    for seq, gc in ((256, False), (4096, True)):
        m = Mixture(zero=0, offload="none", seq_len=seq, gc=gc)
        lora, qlora = step_time(spec, gpu, m), step_time(spec, gpu, m.with_(quantize="bnb.nf4"))
        per_use = (linear * 4.5 / 8 + 2 * 2 * linear) / gpu.memory_bandwidth
        assert qlora.dequantize == pytest.approx(8 * (3 if gc else 2) * per_use, rel=1e-3)  # 8 micro steps
        # and the rest moves only by the memory-bound passes over PEFT's fp32 MLP activations
        assert qlora.total - lora.total == pytest.approx(qlora.dequantize + qlora.memory_bound - lora.memory_bound)
        assert qlora.compute == lora.compute and qlora.memory_bound >= lora.memory_bound
    short = Mixture(zero=0, offload="none", seq_len=256)
    long = short.with_(seq_len=4096)
    overhead = [step_time(spec, gpu, x.with_(quantize="bnb.nf4")).total / step_time(spec, gpu, x).total - 1
                for x in (short, long)]
    assert overhead[0] > 2 * overhead[1] > 0


def test_fsdp2_prices_its_all_gathers_and_reduce_scatters():
    """Issue 21: FULL_SHARD gathers every parameter in bf16 twice per micro step (forward, backward
    with GC's recompute inside it), SHARD_GRAD_OP once; one fp32 reduce-scatter of the trained
    gradients; nothing crosses a link on one GPU; CPUOffloadPolicy adds the shard copies and a CPU step."""
    from ftmix.plan.runtime import communication, offload_time

    model, gpu = load_model("llama-2-7b"), load_gpu("a100-80gb")
    m = mixture_from_flags(gpu, sharding="fsdp2", lora=0, gc=True, gpus=8, seq_len=1024)
    full = communication(model, gpu, m, 1, DEFAULT)
    grad_op = communication(model, gpu, m.with_(zero=2), 1, DEFAULT)
    frac, bw = 7 / 8, gpu.intra_node_bandwidth * DEFAULT.link_efficiency
    assert full == pytest.approx((2 * 2 + 4) * model.total_params * frac / bw * DEFAULT.exposed_comm_zero3)
    assert grad_op == pytest.approx((1 * 2 + 4) * model.total_params * frac / bw * DEFAULT.exposed_comm_zero3)
    assert communication(model, gpu, m.with_(gpus=1), 1, DEFAULT) == 0.0
    # the same bytes as ZeRO-3's all-gathers, without its per-module fetch hooks
    assert full < communication(model, gpu, m.with_(sharding="deepspeed", offload="none"), 1, DEFAULT)
    transfers, cpu_step = offload_time(model, gpu, m.with_(offload="all"), 1, DEFAULT)
    assert transfers > 0 and cpu_step > 0 and offload_time(model, gpu, m, 1, DEFAULT) == (0.0, 0.0)


def test_host_issue_is_the_measured_per_op_time_and_exposed_only_past_the_device():
    """Issue 22: the host's time to issue a step, measured on the real step at tiny width
    (benchmarks/results/host_overhead.json), is exposed when the kernels are shorter than it: a small
    model at a short batch is host-bound, a 7B at 2048 tokens is not."""
    from pathlib import Path

    from ftmix.plan import runtime

    measured = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "host_overhead.json").read_text())
    assert DEFAULT.host_seconds_per_op == pytest.approx(measured["seconds_per_op"], rel=0.01)
    # the count it derives against the real step's at full depth, three families, five classes: within 5%
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import host_overhead

    for row in measured["check_32_layers"]:
        assert host_overhead.predicted_ops(row) == pytest.approx(row["predicted_ops"])
        assert abs(row["predicted_ops"] / row["ops"] - 1) <= 0.05, row
    classes = measured["classes"]
    for gc in (False, True):
        suffix = " gc" if gc else ""
        assert runtime.HOST_OPS_TRAINED_LAYER[gc] == pytest.approx(classes["full" + suffix]["ops_per_layer"], abs=1)
        wrapped = runtime.HOST_OPS_FROZEN_LAYER[gc] + 2 * runtime.HOST_OPS_PER_LORA_LINEAR[gc]
        assert wrapped == pytest.approx(classes["lora q,v" + suffix]["ops_per_layer"], abs=1)
    small = load_model("smollm2-135m")
    m = mixture_from_flags(A100, zero=0, lora=16, seq_len=256)
    issue = runtime.host_ops(small, m) * DEFAULT.host_seconds_per_op
    step = step_time(small, A100, m, 8)
    assert step.overhead / 8 == pytest.approx(DEFAULT.step_overhead_s + issue - (step.compute + step.attention
                                                                                + step.memory_bound) / 8, rel=1e-6)
    assert step.overhead > 0.8 * step.total  # host-bound
    big = step_time(LLAMA7, A100, mixture_from_flags(A100, zero=0, lora=16, seq_len=2048), 8)
    assert big.overhead == pytest.approx(8 * DEFAULT.step_overhead_s)  # the kernels outlast the issuing
    # GC and more adapters issue more operations
    assert runtime.host_ops(small, m.with_(gc=True)) > runtime.host_ops(small, m)
    assert runtime.host_ops(small, m.with_(lora_targets="all-linear")) > runtime.host_ops(small, m)
