"""`ftmix study calibrate`: constants recovered from trials they generated; held-back split; the
calibration file used by estimate, plan, matrix, scoped to its GPU types (issue 11: calibration)."""

import json
from dataclasses import replace

import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.estimate import estimate
from ftmix.estimate.overheads import MemoryOverheads, with_overheads
from ftmix.mixture import Mixture
from ftmix.plan.constants import DEFAULT
from ftmix.plan.runtime import step_time
from ftmix.study.calibrate import calibrate
from ftmix.study.predict import inputs_of, model_config
from tests.study.conftest import as_json, study

TRUE = replace(DEFAULT, mfu_max=0.36, step_overhead_s=0.04, exposed_comm_zero12=0.55)
TRUE_MEMORY = MemoryOverheads(allocator_slack=0.12)


def synthetic_rows(gpu_name="a100-80gb") -> list[dict]:
    """Trials whose 'measurements' are ftmix's own model under known constants."""
    gpu = load_gpu(gpu_name)
    rows = []
    for i, (model, s, lora, zero, gpus, gc) in enumerate(
            (m, s, lora, zero, gpus, gc) for m in ("llama-2-7b", "llama-2-13b") for s in (256, 1024, 4096)
            for lora in (0, 64) for zero, gpus in ((0, 1), (2, 8), (3, 8)) for gc in (False, True)):
        m = Mixture(zero=zero, offload="none", lora=lora, gc=gc, attn="fa2", seq_len=s, gpus=gpus)
        spec = load_model(model)
        est = estimate(spec, m, gpu)
        what = "reserved" if i % 2 else "allocated"
        peak = with_overheads(est, TRUE_MEMORY).reserved if what == "reserved" else est.peak
        rows.append({"id": f"t{i}", "status": "ok", "source": "run", "trial_key": f"t{i}",
                     "inputs": inputs_of(model_config({"model": model}), m, gpu, 8, what),
                     "peak_gb": peak / 1e9, "peak_what": what, "step_s": step_time(spec, gpu, m, 8, TRUE).total})
    return rows


def test_calibration_recovers_the_constants_that_generated_the_trials():
    rows = synthetic_rows()
    report = calibrate(rows, every=4, prior=1e-4)
    fitted = report["per_gpu"]["a100-80gb"]["constants"]
    assert fitted["mfu_max"] == pytest.approx(0.36, rel=0.03)
    assert fitted["step_overhead_s"] == pytest.approx(0.04, rel=0.05)
    assert fitted["exposed_comm_zero12"] == pytest.approx(0.55, rel=0.05)
    assert report["memory"]["allocator_slack"] == pytest.approx(0.12, abs=0.003)
    held = report["errors"]["held_back"]
    assert held["before"]["time"]["median"] > 0.1 and held["after"]["time"]["median"] < 0.01
    assert held["after"]["memory"]["worst"] < 0.005 < held["before"]["memory"]["worst"]
    n = len(rows)
    assert report["trials"]["held_back"] == n // 4 and report["trials"]["fitted"] == n - n // 4
    assert [r["id"] for r in report["rows"] if r["held_back"]] == [f"t{i}" for i in range(3, n, 4)]


def test_the_file_is_used_by_plan_estimate_and_matrix_for_its_gpu_only(tmp_path, monkeypatch):
    from ftmix.plan.constants import calibration_for

    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibrate(synthetic_rows(), every=4, prior=1e-4)))
    cal = calibration_for(str(path), "a100-80gb")
    assert cal.runtime.mfu_max == pytest.approx(0.36, rel=0.03) and cal.memory.allocator_slack == pytest.approx(0.12, abs=0.003)
    base = as_json(study_cli("plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--json"))
    tuned = as_json(study_cli("plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--calibration", path, "--json"))
    assert tuned["best"]["step_time_s"] > base["best"]["step_time_s"] and tuned["calibration"]
    est = as_json(study_cli("estimate", "--gpu", "a100-80gb", "--calibration", path, "--json"))
    plain = as_json(study_cli("estimate", "--gpu", "a100-80gb", "--json"))
    assert est["peak_gb"] == plain["peak_gb"] and est["reserved_gb"] > plain["reserved_gb"]
    other = study_cli("plan", "--model", "llama-2-7b", "--gpu", "v100-32gb", "--calibration", path)
    assert other.returncode == 2 and "--calibration-any-gpu" in other.stderr
    anyway = as_json(study_cli("matrix", "--gpu", "v100-32gb", "--models", "llama-2-7b", "--seq-lens", "256",
                               "--calibration", path, "--calibration-any-gpu", "--json"))
    assert anyway["calibration"] == [f"calibrated by {path}"]
    from_env = as_json(study_cli("plan", "--model", "llama-2-7b", "--gpu", "v100-32gb", "--json",
                                 env={"FTMIX_CALIBRATION": str(path)}))
    assert "not used" in from_env["calibration"][0]


def study_cli(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ftmix", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})), timeout=300)


def test_calibrate_on_an_empty_or_missing_store_is_one_error(tmp_path):
    proc = study("calibrate", "--db", tmp_path / "none.sqlite")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    study("run", "context:gpu", "--db", tmp_path / "s.sqlite", "--predict-only")
    proc = study("calibrate", "--db", tmp_path / "s.sqlite", "--out", tmp_path / "c.json")
    assert proc.returncode == 2 and "no measured trial" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_step_time_measured_on_a_cpu_is_not_fitted_to_a_gpu_model():
    from ftmix.study.calibrate import observations

    (row,) = synthetic_rows()[:1]
    cpu = dict(row, id="cpu", device="cpu", step_s=100.0)
    obs, _ = observations([row, cpu])
    assert obs[0].step_s == row["step_s"] and obs[1].step_s is None and obs[1].peak_bytes == obs[0].peak_bytes


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_predicts_with_the_calibration_for_its_gpu(tmp_path):
    from tests.study.conftest import TINY_BASE
    from tests.train.conftest import run_train_cli, yaml_args

    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibrate(synthetic_rows(), every=4, prior=1e-4)))
    flags = yaml_args(dict(TINY_BASE, output_dir=str(tmp_path / "run"), gpu="a100-80gb"))
    wrong = run_train_cli(flags + ["--gpu", "v100-32gb", "--calibration", str(path)], timeout=300)
    assert wrong.returncode == 2 and "--calibration-any-gpu" in wrong.stderr  # refused before anything loads
    proc = run_train_cli(flags + ["--calibration", str(path)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = json.loads((tmp_path / "run" / "run.json").read_text())["predicted"]
    assert predicted["calibration"] == [f"calibrated by {path} (fitted on a100-80gb)"]
    spec_m = json.loads((tmp_path / "run" / "run.json").read_text())["mixture"]
    from ftmix.catalog import load_gpu, spec_from_hf_config
    from ftmix.plan.constants import calibration_for
    from ftmix.study.predict import model_config

    spec = spec_from_hf_config(model_config(dict(TINY_BASE)))
    expected = step_time(spec, load_gpu("a100-80gb"), Mixture(**spec_m), TINY_BASE["effective_batch"],
                         calibration_for(str(path), "a100-80gb").runtime).total
    assert predicted["step_time_s"] == pytest.approx(expected, rel=1e-3)
    assert expected > step_time(spec, load_gpu("a100-80gb"), Mixture(**spec_m), TINY_BASE["effective_batch"]).total


def test_cpu_trials_fit_nothing_and_say_so(tmp_path):
    """Issue 19, defect 8: CPU-only trials wrote fitted_on_gpus, and plan then said "calibrated"
    with its numbers unchanged."""
    # the twin's allocated peaks and CPU step times, predicted for an A100
    rows = [dict(r, device="cpu") for r in synthetic_rows()[:24] if r["peak_what"] == "allocated"]
    report = calibrate(rows, every=3)
    assert report["fitted"] is False and report["fitted_on_gpus"] == [] and report["constants"] == {}
    assert report["notes"][0].startswith("nothing was fitted: no trial has a step time measured on a GPU")
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(report))
    from ftmix.plan.constants import calibration_for

    cal = calibration_for(str(path), "a100-80gb")
    assert cal.source is None and cal.runtime == DEFAULT and "fitted nothing" in cal.notes[0]
    bare = tmp_path / "bare.json"
    bare.write_text('{"constants": {}}')
    assert "changes no constant" in calibration_for(str(bare), None).notes[0]


@pytest.mark.slow
def test_a_fit_stays_inside_what_a_gpu_can_reach():
    """On the published rows a fit across GPUs gave mfu_max 0.907; no GPU reaches 0.75."""
    from ftmix.plan.constants import MFU_CEILING

    fast = replace(DEFAULT, mfu_max=0.95, step_overhead_s=0.0)
    rows = synthetic_rows()
    gpu = load_gpu("a100-80gb")
    for r, m in zip(rows, [Mixture(**r["inputs"]["mixture"]) for r in rows]):
        spec = load_model("llama-2-7b" if r["inputs"]["model_config"]["num_hidden_layers"] == 32 else "llama-2-13b")
        r["step_s"] = step_time(spec, gpu, m, 8, fast).total
    fitted = calibrate(rows, every=4)["per_gpu"]["a100-80gb"]["constants"]
    assert fitted["mfu_max"] <= MFU_CEILING


def test_ordinals_in_the_report():
    from ftmix.cli.study import ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st"]
