"""`ftmix study run`: isolated trials, outcomes, time limits, resume after SIGKILL, the store's
guard against foreign files, the slurm launcher with stand-in executables (issue 11: runs)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.study.conftest import TINY_BASE, as_json, rows, study


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_each_outcome_is_recorded_and_the_sweep_goes_on(spec_file, tmp_path):
    csv = tmp_path / "other.csv"
    csv.write_text("body,label\nhello,1\n")
    spec = spec_file(name="outcomes", linked=[{"tag": ["oom", "error", "good"], "memory_limit_gb": [0.001, None, None],
                                                "data": ["builtin", str(csv), "builtin"]}])
    db = tmp_path / "s.sqlite"
    result = as_json(study("run", spec, "--db", db, "--json"))
    by_tag = {r["tag"]: r for r in rows(db)}
    assert result["by_status"] == {"oom": 1, "error": 1, "ok": 1}
    assert "out of memory" in by_tag["oom"]["error"] and by_tag["oom"]["peak_gb"] is None
    assert "body, label" in by_tag["error"]["error"]
    good = by_tag["good"]
    assert good["peak_what"] == "twin_device" and 0 < good["peak_gb"] < 0.01
    assert abs(good["predicted_peak_gb"] / good["peak_gb"] - 1) < 0.05  # the tiny model's estimate, as in train
    assert good["step_s"] > 0 and good["tokens_per_s"] > 0 and good["final_loss"] > 0
    assert good["versions"]["torch"].startswith("2.13") and good["hardware"]["cpus"] == os.cpu_count()
    assert good["record"]["measured"]["steps"] == 2 and good["label"] == "1 GPU + LoRA r8 + SDPA"
    assert good["inputs"]["model_config"]["hidden_size"] == 64


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_hanging_trial_is_stopped_at_its_limit(spec_file, tmp_path):
    spec = spec_file(name="hang", time_limit_s=20, base=dict(TINY_BASE, max_steps=100000, max_rows=16))
    db = tmp_path / "s.sqlite"
    began = time.time()
    result = as_json(study("run", spec, "--db", db, "--json"))
    assert result["by_status"] == {"timeout": 1} and time.time() - began < 120
    (row,) = rows(db)
    assert "time limit of 20 s" in row["error"]
    trial_config = str(tmp_path / "s-trials" / "hang" / row["id"] / "config.yaml")
    alive = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).count(trial_config)]
    assert not alive  # the trial's whole process group is gone


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_of_the_sweep_loses_no_finished_trial_and_a_rerun_resumes(spec_file, tmp_path):
    spec = spec_file(name="resume", grid={"seq_len": [64, 80, 96]})
    db = tmp_path / "s.sqlite"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    sweep = subprocess.Popen([sys.executable, "-m", "ftmix", "study", "run", str(spec), "--db", str(db)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finished():
        if not db.exists():
            return []
        con = sqlite3.connect(db, timeout=30)
        try:
            return con.execute("SELECT id, finished FROM trials WHERE status='ok'").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    deadline = time.time() + 600
    while not finished() and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    before = dict(finished())
    assert 1 <= len(before) < 3
    result = as_json(study("run", spec, "--db", db, "--json"))
    assert result["by_status"] == {"ok": 3}
    after = {r["id"]: r for r in rows(db)}
    for trial_id, when in before.items():  # finished trials were not run again
        assert after[trial_id]["finished"] == when and after[trial_id]["runs"] == 1


def test_a_corrupt_or_foreign_database_is_refused_and_left_alone(tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE customers (name TEXT)")
    con.commit()
    con.close()
    for db, needle in ((corrupt, "not an SQLite database"), (foreign, "something else")):
        before = db.read_bytes()
        proc = study("run", "context:gpu", "--db", db, "--predict-only")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
        assert db.read_bytes() == before
    broken = tmp_path / "broken.sqlite"  # an ftmix database whose pages were overwritten
    study("run", "context:gpu", "--db", broken, "--predict-only")
    data = bytearray(broken.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    broken.write_bytes(bytes(data))
    proc = study("run", "context:gpu", "--db", broken, "--predict-only")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_predict_only_gives_every_trial_its_prediction(tmp_path):
    db = tmp_path / "s.sqlite"
    result = as_json(study("run", "matrix:gpu", "--db", db, "--gpu", "v100-32gb", "--predict-only", "--json"))
    assert result["trials"] == 15 and set(result["by_status"]) <= {"predicted", "predicted_oom"}
    assert all(r["predicted_peak_gb"] > 0 and r["predicted_step_s"] > 0 for r in result["rows"])
    seventy = [r for r in result["rows"] if "70b" in r["trial_key"]]
    assert all("ZeRO-3" in r["label"] for r in seventy)  # the study's finding 3, predicted
    assert not (tmp_path / "s-trials").exists()  # nothing ran


def test_only_fitting_records_what_would_not_fit_and_runs_nothing_of_it(spec_file, tmp_path):
    spec = spec_file(name="big", base=dict(model="llama-2-7b", zero=0, lora=0, offload="none", seq_len=256),
                     grid={"micro_batch": [1, 2]})
    db = tmp_path / "s.sqlite"
    result = as_json(study("run", spec, "--db", db, "--gpu", "t4-16gb", "--only-fitting", "--json"))
    assert result["by_status"] == {"predicted_oom": 2}
    assert all(r["predicted_peak_gb"] > 16 for r in result["rows"])
    assert not (tmp_path / "s-trials").exists()


STANDIN = {
    "sbatch": """#!/bin/bash
script="${@: -1}"
n=$(( $(cat "$STANDIN_DIR/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$STANDIN_DIR/next"
echo "$script" >> "$STANDIN_DIR/submitted"
( bash "$script"; echo $? > "$STANDIN_DIR/$n.rc" ) > /dev/null 2>&1 &
echo $! > "$STANDIN_DIR/$n.pid"
echo "$n;cluster"
""",
    "squeue": """#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -j) job=$2; shift;; esac; shift; done
[ -f "$STANDIN_DIR/$job.rc" ] && exit 0
kill -0 $(cat "$STANDIN_DIR/$job.pid") 2>/dev/null && echo RUNNING
exit 0
""",
    "sacct": """#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -j) job=$2; shift;; esac; shift; done
rc=$(cat "$STANDIN_DIR/$job.rc")
if [ "$rc" = 0 ]; then echo "COMPLETED|0:0"; else echo "FAILED|$rc:0"; fi
""",
}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_slurm_launcher_round_trip_with_stand_in_executables(spec_file, tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in STANDIN.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    spec = spec_file(name="cluster", linked=[{"tag": ["fits", "oom"], "memory_limit_gb": [None, 0.001]}])
    db = tmp_path / "s.sqlite"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STANDIN_DIR": str(state)}
    result = as_json(study("run", spec, "--db", db, "--launcher", "slurm", "--poll", "0.5",
                           "--sbatch-arg=--partition=debug", "--json", env_extra=env))
    assert result["by_status"] == {"ok": 1, "oom": 1}
    submitted = (state / "submitted").read_text().split()
    assert len(submitted) == 2
    script = open(submitted[0]).read()
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=" in script and "ftmix train" in script.replace(
        " -m ftmix train", " ftmix train")
    by_tag = {r["tag"]: r for r in rows(db)}
    assert by_tag["fits"]["slurm_job"] == "101" and by_tag["fits"]["peak_gb"] > 0
    assert "out of memory" in by_tag["oom"]["error"]
    again = as_json(study("run", spec, "--db", db, "--launcher", "slurm", "--poll", "0.5", "--json", env_extra=env))
    assert again["by_status"] == {"ok": 1, "oom": 1} and len((state / "submitted").read_text().split()) == 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_sweeps_on_one_database_share_the_trials_and_run_each_once(spec_file, tmp_path):
    spec = spec_file(name="shared", grid={"seq_len": [64, 72, 80, 88]})
    db = tmp_path / "s.sqlite"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "ftmix", "study", "run", str(spec), "--db", str(db), "--json"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in (first, second):
        _, err = proc.communicate(timeout=800)
        assert proc.returncode == 0, err[-2000:]
    trials = rows(db)
    assert [r["status"] for r in trials] == ["ok"] * 4 and all(r["runs"] == 1 for r in trials)
    assert {r["owner"] for r in trials} == {first.pid, second.pid}  # both did some of the work


def test_a_mixture_the_gpu_cannot_take_is_recorded_invalid_and_the_rest_goes_on(tmp_path):
    db = tmp_path / "s.sqlite"
    v100 = as_json(study("run", "context:gpu", "--db", db, "--gpu", "v100-32gb", "--predict-only", "--json"))
    assert v100["by_status"] == {"invalid": 3, "predicted": 3}
    invalid = [r for r in v100["rows"] if r["status"] == "invalid"]
    assert all("FlashAttention-2" in r["error"] and r["predicted_step_s"] is None for r in invalid)
    a100 = as_json(study("run", "context:gpu", "--db", db, "--gpu", "a100-80gb", "--predict-only", "--json"))
    assert a100["by_status"] == {"predicted": 6}  # planned again for the other GPU
    assert {r["id"] for r in a100["rows"]} == {r["id"] for r in v100["rows"]}


def test_predict_only_for_a_named_gpu_is_the_gpu_form_for_that_gpu(tmp_path):
    """Issue 19, defect 6: on a machine without a GPU, `--gpu v100-32gb --predict-only` took the CPU
    form and predicted for the A100 its base names."""
    result = as_json(study("run", "matrix", "--gpu", "v100-32gb", "--predict-only", "--db", tmp_path / "m.sqlite",
                           "--json"))
    assert result["trials"] == 15 and result["by_status"] == {"predicted": 15}
    got = rows(tmp_path / "m.sqlite")
    assert {r["config"]["model"] for r in got} == {"llama-2-7b", "llama-2-13b", "llama-2-70b"}
    assert all(r["inputs"]["gpu"] == "v100-32gb" and "FA2" not in r["label"] for r in got)  # V100: no FA2


def test_predicted_verdicts_honour_the_forms_memory_limit(tmp_path):
    """The CPU form's twin limit (3 MB, a stand-in small GPU) decides its verdicts, not the A100's 80 GB."""
    result = as_json(study("run", "matrix:cpu", "--predict-only", "--db", tmp_path / "c.sqlite", "--json"))
    got = rows(tmp_path / "c.sqlite")
    assert len(got) == 9 and result["by_status"].get("predicted_oom", 0) >= 1
    for r in got:
        limit = r["config"]["memory_limit_gb"]
        if r["predicted_fits"]:
            assert r["predicted_peak_gb"] <= limit
        elif r["predicted_peak_gb"] is not None:
            assert r["predicted_peak_gb"] > limit
