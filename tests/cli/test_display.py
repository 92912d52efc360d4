"""What a person reads (issue 19, defect 16): names whole in 80 columns or a pipe, figures in units
that fit them, grammar, readable heatmap text."""

import subprocess
import sys

import pytest

from ftmix.units import human_bytes, human_seconds


def test_models_are_whole_when_piped_in_80_columns():
    import os

    from ftmix.catalog import model_names

    env = dict(os.environ, COLUMNS="80")
    out = subprocess.run([sys.executable, "-m", "ftmix", "models"], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    for name in model_names():
        assert f"│{name} " in out or f"│{name}│" in out or f" {name} " in out


@pytest.mark.parametrize("value,text", [(0.0, "0 B"), (6.873e-05 * 1e9, "68.7 KB"), (2.629e6, "2.63 MB"),
                                        (1.16e9, "1.16 GB"), (154.63e9, "155 GB")])
def test_bytes_in_a_unit_that_fits(value, text):
    assert human_bytes(value) == text


@pytest.mark.parametrize("value,text", [(132.01176, "2 min 12 s"), (0.00512, "5.12 ms"), (3.5, "3.50 s"),
                                        (4000, "1 h 6 min")])
def test_seconds_in_a_unit_that_fits(value, text):
    assert human_seconds(value) == text


def test_a_tiny_model_is_shown_in_mb_not_as_zeros(capsys):
    from ftmix.cli import main

    try:
        main(["estimate", "--model", "smollm2-135m", "--gpu", "a100-80gb"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "MB per GPU" in out and "0.00 GB" not in out and "e-0" not in out


def test_one_key_varies():
    from ftmix.errors import FtmixError
    from ftmix.study.spec import load_spec, merge_base

    with pytest.raises(FtmixError, match="zero varies in the study's grid; edit the spec to change it"):
        merge_base(load_spec("mixtures", "cpu"), {"zero": 1})


def test_heatmap_text_is_white_on_dark_cells():
    from ftmix.study.report import text_colour

    assert text_colour("#000000") == "white" and text_colour("#440154") == "white"  # viridis' darkest
    assert text_colour("#fde725") == "black" and text_colour("#dddddd") == "black"
