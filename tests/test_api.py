"""The Python API (issue 19): ``import ftmix`` gives the CLI's own functions, returning the objects
its --json is made from."""

import json
import subprocess
import sys

import pytest

import ftmix
from ftmix.cli import main


def _cli_json(capsys, *args) -> dict:
    try:
        main([*args, "--json"])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_import_loads_no_torch():
    code = "import sys, ftmix; ftmix.estimate('llama-2-7b'); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_estimate_is_the_clis(capsys):
    est = ftmix.estimate("llama-2-13b", "v100-32gb", zero=3, gpus=8, gc=True, seq_len=1024, lora=16)
    cli = _cli_json(capsys, "estimate", "--model", "llama-2-13b", "--gpu", "v100-32gb", "--zero", "3", "--gpus", "8",
                    "--gc", "--seq-len", "1024", "--lora", "16")
    time = ftmix.api.estimate_time(est, "llama-2-13b", "v100-32gb")  # where the step time goes, on that GPU
    assert dict(est.to_json(), time=time, calibration=[]) == cli
    assert est.peak > 1e9 and est.fits is True and time["step_time_s"] > 0


def test_plan_and_matrix_are_the_clis(capsys):
    result = ftmix.plan("llama-2-7b", "a100-80gb", gpus=8, offload="optimizer")
    cli = _cli_json(capsys, "plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--gpus", "8", "--offload", "optimizer")
    assert dict(result.to_json(), calibration=[]) == cli and result.best is not None
    cells = ftmix.matrix(["llama-2-7b", "llama-2-70b"], "v100-32gb", [512, 4096], gpus=8)
    grid = _cli_json(capsys, "matrix", "--models", "llama-2-7b,llama-2-70b", "--gpu", "v100-32gb", "--seq-lens",
                     "512,4096", "--gpus", "8")
    assert [c.to_json() for c in cells] == grid["cells"] and len(cells) == 4


def test_bad_input_is_the_clis_error():
    with pytest.raises(ftmix.FtmixError, match="unknown model"):
        ftmix.estimate("no-such-model")
    with pytest.raises(ftmix.FtmixError, match="not a mixture key"):
        ftmix.plan("llama-2-7b", zeroo=3)
    with pytest.raises(ftmix.FtmixError, match="zero"):
        ftmix.estimate("llama-2-7b", zero=7)


def test_subpackages_stay_importable_beside_the_functions():
    from ftmix.plan import host  # noqa: F401 - the subpackage, not the function
    import ftmix.estimate.activations  # noqa: F401

    assert callable(ftmix.plan) and callable(ftmix.estimate) and callable(ftmix.train)


@pytest.mark.slow
def test_train_returns_the_run_record(tmp_path):
    from tests.train.conftest import tiny_flags

    record = ftmix.train(**tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2))
    assert record == json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["measured"]["steps"] == 2 and record["data"]["format"] == "dialogue"
    with pytest.raises(ftmix.FtmixError, match="holds an earlier run"):
        ftmix.train(**tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2))
    cfg = ftmix.train_config(tiny_flags(tmp_path / "other", zero=0, lora=8), learning_rate=0.02, gpus=1)
    assert cfg.lr == 0.02 and cfg.nproc == 1
