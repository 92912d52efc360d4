"""The run folder (issue 19, defects 1, 3 and 4): an earlier run's files are never mixed into a new
run, bad output paths fail in one line before work, and a resume under another mixture is refused
before the engine's loader can fail on (or delete) anything."""

import json
import os

import pytest

from tests.train.conftest import tiny_flags, yaml_args


def _train(*args) -> int:
    from ftmix.cli import main

    try:
        main(["train", *args])
        return 0
    except SystemExit as exc:
        return exc.code


def _one_error(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.slow
def test_a_used_output_dir_is_refused_and_overwrite_clears_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(*yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=1)), "--json") == 0
    assert (out / "final" / "adapter_config.json").is_file()
    (out / "eval.json").write_text("[]")  # as `ftmix eval` leaves it
    capsys.readouterr()

    # full fine-tuning into the same folder: refused, nothing touched
    full = yaml_args(tiny_flags(out, zero=0, lora=0, max_steps=1))
    assert _train(*full) == 2
    line = _one_error(capsys)
    assert "holds an earlier run" in line and "--overwrite" in line and "--resume" in line
    assert (out / "final" / "adapter_config.json").is_file()

    assert _train(*full, "--overwrite", "--json") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["mixture"]["lora"] == 0
    assert not (out / "final" / "adapter_config.json").exists()  # the old adapter's files are gone
    assert not (out / "eval.json").exists()
    assert (out / "final" / "config.json").is_file()


def test_overwrite_never_clears_a_folder_ftmix_did_not_fill(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _train(*yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=1)), "--overwrite") == 2
    assert "thesis.tex" in _one_error(capsys) and (out / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("make", ["file", "under_file", "unwritable"])
def test_bad_output_dir_is_one_line(tmp_path, capsys, make):
    blocker = tmp_path / "blocker"
    if make == "file":
        blocker.write_text("x")
        out = blocker
    elif make == "under_file":
        blocker.write_text("x")
        out = blocker / "run"
    elif os.geteuid() == 0:  # root writes through permissions: a read-only file system stops it
        out = __import__("pathlib").Path("/proc/ftmix-run")
    else:
        blocker.mkdir(mode=0o500)
        out = blocker / "run"
    assert _train(*yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=1))) == 2
    line = _one_error(capsys)
    assert "--output-dir" in line and ("is a file" in line or "not writable" in line)


def _checkpoint(out, **saved):
    from ftmix.mixture import mixture_from_flags
    from ftmix.job.config import load_config
    from ftmix.job.checkpoints import CHECKPOINT_MIXTURE, checkpoint_record

    folder = out / "checkpoint-4"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    cfg = load_config(None, [], tiny_flags(out, **saved))
    m = mixture_from_flags(None, **dict(cfg.mixture_flags(), precision="bf16"))
    (folder / CHECKPOINT_MIXTURE).write_text(json.dumps(checkpoint_record(cfg, m)))
    (out / "train.log").write_text("the first run's log\n")
    (out / "ranks").mkdir()
    (out / "ranks" / "rank0.json").write_text("{}")


@pytest.mark.parametrize("asked,named", [(["--zero", "3", "--lora", "8"], "zero=2"),
                                         (["--zero", "2", "--lora", "16"], "lora=8"),
                                         (["--zero", "2", "--lora", "8", "--gpus", "2"], "world=1")])
def test_resume_under_another_mixture_is_refused_before_anything_loads(tmp_path, capsys, asked, named):
    out = tmp_path / "run"
    _checkpoint(out, zero=2, lora=8)
    flags = yaml_args(tiny_flags(out, max_steps=8))
    assert _train(*flags, *asked, "--resume") == 2
    line = _one_error(capsys)
    assert "checkpoint-4 was saved with" in line and named in line
    # nothing of the first run was touched
    assert (out / "train.log").read_text() == "the first run's log\n" and (out / "ranks" / "rank0.json").is_file()


def test_resume_and_overwrite_together_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _checkpoint(out, zero=2, lora=8)
    assert _train(*yaml_args(tiny_flags(out, zero=2, lora=8)), "--resume", "--overwrite") == 2
    assert "choose one" in _one_error(capsys)
