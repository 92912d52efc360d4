"""calibrate-gpu's fit (issue 22): the step time's constants from a sweep's measurements."""

import pytest

from ftmix.catalog import load_gpu
from ftmix.errors import FtmixError
from ftmix.plan.constants import DEFAULT
from ftmix.plan.gpu_fit import fit, fit_gemm, gemm_efficiency

A100, H100 = load_gpu("a100-80gb"), load_gpu("h100-80gb")


def _sweep(top=0.6, half=300.0, gpu=A100, **extra):
    gemm = [{"tokens": t, "flops_per_s": gemm_efficiency(t, top, half) * gpu.peak_flops_16bit}
            for t in (128, 256, 512, 1024, 2048, 4096)]
    return dict({"device": "test", "gemm": gemm, "attention": [], "skipped": []}, **extra)


def test_the_gemm_curve_is_recovered_from_its_own_points():
    top, half = fit_gemm([(t, gemm_efficiency(t, 0.62, 410.0)) for t in (64, 256, 1024, 4096)])
    assert top == pytest.approx(0.62) and half == pytest.approx(410.0)
    result = fit(_sweep(), A100)
    assert result["constants"]["mfu_max"] == pytest.approx(0.6)
    assert result["fit"]["gemm_residual_worst"] < 1e-9 and result["gpu"] == "a100-80gb"


def test_attention_bandwidth_copies_and_collectives_scale_their_constants():
    sweep = _sweep(attention=[{"kernel": "sdpa", "tokens": 1024, "flops_per_s": 0.5 * gemm_efficiency(1024, 0.6, 300)
                               * A100.peak_flops_16bit}],
                   memory_bytes_per_s=A100.memory_bandwidth / 2, host_copy_bytes_per_s=22e9,
                   allreduce_busbw=0.7 * A100.intra_node_bandwidth)
    c = fit(sweep, A100)["constants"]
    assert c["sdpa_efficiency"] == pytest.approx(0.5)
    assert c["elementwise_passes"] == pytest.approx(2 * DEFAULT.elementwise_passes)  # half the bandwidth: twice the time
    assert c["pcie_gen4"] == 22e9 and c["link_efficiency"] == pytest.approx(0.7)
    assert "pcie_gen5" in fit(_sweep(gpu=H100, host_copy_bytes_per_s=50e9), H100)["constants"]


def test_what_leaves_the_physical_range_is_held_and_said():
    result = fit(_sweep(memory_bytes_per_s=A100.memory_bandwidth / 1e4), A100)
    assert result["constants"]["elementwise_passes"] == 1e3 and "elementwise_passes" in result["clamped_to_their_range"]
    with pytest.raises(FtmixError, match="fewer than two GEMM"):
        fit(dict(_sweep(), gemm=_sweep()["gemm"][:1]), A100)
