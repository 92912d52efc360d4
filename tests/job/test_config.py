import pytest

from ftmix.errors import FtmixError
from ftmix.mixture.engine import deepspeed_config
from ftmix.mixture import Mixture
from ftmix.job.config import load_config


def test_defaults_are_the_studys_setup():
    c = load_config()
    assert (c.lr, c.beta1, c.beta2, c.scheduler, c.effective_batch, c.epochs) == (4e-4, 0.9, 0.99, "linear", 8, 1.0)
    flags = c.mixture_flags()
    assert all(flags[k] is None for k in ("zero", "offload", "lora", "gc", "seq_len"))  # the Mixture defaults apply


def test_yaml_then_overrides_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("zero: 3\ngc: true\nlr: 0.001\nmodel_overrides:\n  hidden_size: 64\n")
    c = load_config(str(path), ["lr=2e-4", "offload=all"], {"gc": False})
    assert (c.zero, c.offload, c.lr, c.gc, c.model_overrides) == (3, "all", 2e-4, False, {"hidden_size": 64})


@pytest.mark.parametrize("override", ["bogus=1", "lr=-1", "effective_batch=0", "nproc=zero", "noequals"])
def test_bad_overrides(override):
    with pytest.raises(FtmixError):
        load_config(None, [override])


def test_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(FtmixError):
        load_config(str(path))


def test_offload_config_builds_ds_cpu_adam_section():
    cfg = deepspeed_config(Mixture(zero=2, offload="optimizer"), 1000)
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "optimizer" not in deepspeed_config(Mixture(zero=2, offload="none"), 1000)


def test_flags_as_the_ecosystem_spells_them(capsys):
    """Issue 19: train takes --gpus (--nproc kept), --learning-rate, --epochs, --max-steps as flags."""
    from ftmix.cli import main

    for args, needle in ((["--learning-rate", "-1"], "lr: Input should be greater than 0"),
                         (["--epochs", "0"], "epochs: Input should be greater than 0"),
                         (["--gpus", "0"], "nproc: Input should be greater than 0"),
                         (["--nproc", "0"], "nproc: Input should be greater than 0"),
                         (["--max-steps", "0"], "max_steps")):
        try:
            main(["train", *args])
        except SystemExit as exc:
            assert exc.code == 2
        assert needle in capsys.readouterr().err
