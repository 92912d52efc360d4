"""`ftmix calibrate-gpu` (issue 22): the sweep runs on any torch device, so here on the CPU; the
fit reproduces what was measured, and plan reads the file for that GPU type only."""

import json

import pytest

from ftmix.catalog import load_gpu
from ftmix.plan.gpu_fit import fit, gemm_efficiency
from tests.cli.conftest import run_cli


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    proc = run_cli("calibrate-gpu", "--device", "cpu", "--gpu", "a100-80gb", "--hidden", "256", "--seconds", "30",
                   "--out", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "kernels" not in proc.stderr  # bitsandbytes' start-up note goes nowhere near the screen
    return path, json.loads(proc.stdout)


def test_the_sweep_measures_and_the_fit_reproduces_it(calibration):
    path, result = calibration
    assert json.loads(path.read_text())["constants"] == result["constants"]
    sweep = result["measurements"]
    assert len(sweep["gemm"]) == 6 and {p["kernel"] for p in sweep["attention"]} == {"sdpa"}
    assert sweep["memory_bytes_per_s"] > 0 and "cpu" in result["device"]
    # the file is the fit of these measurements (the fit recovers a curve exactly from its own points:
    # tests/plan/test_gpu_fit.py); its residuals are the measurements'. How well a CPU's timings, taken
    # beside other tests, follow a GPU's efficiency curve is not asserted: timing belongs in benchmarks
    again = fit(sweep, load_gpu("a100-80gb"))
    assert again["constants"] == result["constants"] and again["fit"] == result["fit"]
    peak, c = load_gpu("a100-80gb").peak_flops_16bit, result["constants"]
    residuals = sorted(abs(gemm_efficiency(p["tokens"], c["mfu_max"], c["mfu_half_tokens"])
                           / (p["flops_per_s"] / peak) - 1) for p in sweep["gemm"])
    assert result["fit"]["gemm_points"] == 6 and result["fit"]["gemm_residual_worst"] == pytest.approx(residuals[-1])
    # the host's time per operation of a real step, measured in the sweep, is the file's constant
    assert 1e-7 < sweep["host_seconds_per_op"] < 1e-3 and c["host_seconds_per_op"] == sweep["host_seconds_per_op"]
    assert any("host-device" in s for s in result["skipped"]) and any("collectives" in s for s in result["skipped"])


def test_plan_reads_it_for_its_gpu_and_refuses_it_for_another(calibration):
    path, result = calibration
    default = run_cli("plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--lora", "16", "--zero", "0", "--json",
                      check_json=True)
    calibrated = run_cli("plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--lora", "16", "--zero", "0",
                         "--calibration", str(path), "--json", check_json=True)
    # a CPU's GEMMs are thousands of times slower than an A100's datasheet
    assert calibrated["best"]["step_time_s"] > 10 * default["best"]["step_time_s"]
    proc = run_cli("plan", "--model", "llama-2-7b", "--gpu", "h100-80gb", "--calibration", str(path))
    assert proc.returncode == 2 and "fitted on a100-80gb" in proc.stderr


@pytest.mark.parametrize("args, says", [
    (["--seconds", "0"], "--seconds must be in"), (["--hidden", "100"], "--hidden must be a multiple of 64"),
    (["--device", "tpu"], "--device must be auto, cuda or cpu"), (["--device", "cpu"], "needs --gpu NAME"),
    (["--gpu", "b300"], "unknown GPU"),
])
def test_bad_input_is_one_line(tmp_path, args, says):
    proc = run_cli("calibrate-gpu", "--out", str(tmp_path / "c.json"), *args)
    err = proc.stderr
    assert proc.returncode == 2 and err.startswith("error:") and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.json").exists()
