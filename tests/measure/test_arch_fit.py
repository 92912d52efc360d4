"""`ftmix calibrate-arch`: the analytic method's activation terms fitted per architecture from
simulations at two and three layers, so `--method analytic` covers architectures it does not
model term by term (issue 10)."""

import json
from pathlib import Path

import pytest

from ftmix.catalog import spec_from_hf_config
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.estimate.analytic import analytic_estimate
from ftmix.estimate.arch_fits import fingerprint
from ftmix.measure.arch_fit import fit_class
from ftmix.mixture import mixture_from_flags
from tests.cli.conftest import run_cli
from tests.measure.test_simulate import CONFIGS



def _mixture(lora, gc, attn, s):
    return mixture_from_flags(None, zero=0, precision="bf16", micro_batch=1, lora=lora, gc=gc, attn=attn, seq_len=s)


COMMITTED = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "arch_fit_tiny.json")
                       .read_text())


@pytest.mark.parametrize("arch", ["qwen3", "gemma2"])
def test_a_fit_makes_the_analytic_method_meet_the_simulation(tmp_path, monkeypatch, arch):
    """benchmarks/arch_fit_tiny.py: fitted at 2-3 layers and s <= 256, checked at 5 layers and
    s = 512 (outside the fit) against simulations. The committed fit, applied by the current
    estimate, gives the committed peaks to the byte, within 3% of the simulation where the
    unfitted analytic terms are not."""
    result = COMMITTED[arch]
    fits = tmp_path / "fits.json"
    fits.write_text(json.dumps({"fits": {result["fingerprint"]: result["fit"]}}))
    monkeypatch.setenv("FTMIX_ARCH_FITS", str(fits))
    spec = spec_from_hf_config(dict(result["config"], num_hidden_layers=result["check_layers"]), arch)
    assert result["fingerprint"] == fingerprint(spec)
    worst_before, worst_after = 0.0, 0.0
    for check in result["checks"]:
        m = _mixture(check["lora"], check["gc"], "eager", result["check_seq"])
        analytic, fitted = analytic_estimate(spec, m), estimate(spec, m)
        assert (round(analytic.peak), round(fitted.peak)) == (check["analytic"], check["fitted"])
        assert any(n.startswith("architecture fit") for n in fitted.notes) or fitted.peak == analytic.peak
        worst_before = max(worst_before, abs(analytic.peak / check["simulated"] - 1))
        worst_after = max(worst_after, abs(fitted.peak / check["simulated"] - 1))
    assert worst_after <= 0.03 < worst_before, (worst_before, worst_after)


def test_a_fitted_architecture_without_a_fit_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("FTMIX_ARCH_FITS", str(tmp_path / "none.json"))
    spec = spec_from_hf_config(CONFIGS["gemma2"], "gemma2")
    with pytest.raises(FtmixError, match="calibrate-arch"):
        estimate(spec, _mixture(8, False, "eager", 128))
    # its parameters are counted exactly all the same (transformers' own count of this config)
    assert spec.total_params == 558_208


def test_nothing_is_fitted_where_the_analytic_terms_already_agree():
    exact = [(2, 256, 1000.0, 1001.0), (3, 256, 1100.0, 1100.5), (2, 512, 1500.0, 1500.0)]
    assert fit_class(exact) == {"layer": [0.0, 0.0], "base": [0.0, 0.0]}
    # a missing 8 bytes per token per layer is recovered from noisy-free points
    points = [(layers, s, 1e6 + 8.0 * layers * s, 1e6) for layers in (2, 3) for s in (256, 512, 1024)]
    fit = fit_class(points)
    assert fit["layer"][0] == pytest.approx(8.0, rel=1e-6) and abs(fit["base"][0]) < 1e-6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_calibrate_arch_through_the_cli(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(CONFIGS["qwen3"], max_position_embeddings=4096)))
    fits = tmp_path / "fits.json"
    out = run_cli("calibrate-arch", "--model", str(path), "--out", str(fits), "--seq-lens", "64,128", "--json",
                  check_json=True, timeout=600)
    assert out["fingerprint"].startswith("qwen3:h128") and out["worst_error_before_fit"] > 0.03
    assert set(out["classes"]) == {f"{t}-{g}-{a}" for t in ("lora", "full") for g in ("gc", "nogc")
                                   for a in ("sdpa", "eager")}
    assert json.loads(fits.read_text())["fits"][out["fingerprint"]]["name"] == str(path)
    import os

    env_before = os.environ.get("FTMIX_ARCH_FITS")
    os.environ["FTMIX_ARCH_FITS"] = str(fits)
    try:
        est = run_cli("estimate", "--model", str(path), "--zero", "0", "--lora", "8", "--seq-len", "512",
                      "--json", check_json=True)
    finally:
        os.environ.pop("FTMIX_ARCH_FITS") if env_before is None else os.environ.update(FTMIX_ARCH_FITS=env_before)
    assert any(n.startswith("architecture fit") for n in est["notes"])


@pytest.mark.parametrize("args,needle", [
    (("--seq-lens", "256"), "two or more different lengths"),
    (("--seq-lens", "256,abc"), "is not an integer"),
    (("--model", "no-such-model"), "neither"),
])
def test_calibrate_arch_bad_input(tmp_path, args, needle):
    proc = run_cli("calibrate-arch", "--out", str(tmp_path / "f.json"), *args)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert needle in proc.stderr


def test_a_malformed_fits_file_is_one_error_line(tmp_path):
    bad = tmp_path / "fits.json"
    bad.write_text("{not json")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIGS["qwen3"]))
    proc = run_cli("calibrate-arch", "--model", str(config), "--out", str(bad))  # before any simulation
    assert proc.returncode == 2 and "architecture fits" in proc.stderr and proc.stderr.count("\n") == 1
    import os
    import subprocess
    import sys

    env = dict(os.environ, FTMIX_ARCH_FITS=str(bad), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "ftmix", "estimate", "--model", "llama-2-7b"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "architecture fits" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_an_op_fake_tensors_cannot_run_is_one_error_line(tmp_path):
    """Mixtral's grouped experts in fp32 (mixed-precision full fine-tuning) have no meta kernel."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIGS["mixtral"]))
    proc = run_cli("estimate", "--model", str(path), "--zero", "0", "--lora", "0", "--method", "simulate",
                   "--seq-len", "64")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot be simulated" in proc.stderr


def test_calibrate_arch_writes_the_shared_fits_only_when_told(tmp_path):
    """Issue 19, defect 16: it wrote the fits file every estimate reads by default."""
    proc = run_cli("calibrate-arch", "--model", "phi-2")
    assert proc.returncode == 2 and "--save" in proc.stderr and "--out FILE" in proc.stderr
    proc = run_cli("calibrate-arch", "--model", "phi-2", "--save", "--out", str(tmp_path / "f.json"))
    assert proc.returncode == 2 and "choose one" in proc.stderr
