"""Sweep specs and presets (issue 11: spec and presets)."""

import pytest

from ftmix.errors import FtmixError
from ftmix.study.spec import PRESETS, expand, load_spec
from tests.study.conftest import study


def test_grid_times_linked_times_repeats(spec_file):
    spec = load_spec(str(spec_file(name="s", grid={"seq_len": [64, 128], "gc": [False, True]},
                                   linked=[{"tag": ["x", "y", "z"], "lora": [0, 8, 16], "zero": [0, 1, 2]}],
                                   repeats=2)))
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 3 * 2 and len({t.id for t in trials}) == 24
    linked = {(t.tag, t.config["lora"], t.config["zero"]) for t in trials}
    assert linked == {("x", 0, 0), ("y", 8, 1), ("z", 16, 2)}  # varied together, never crossed
    assert all("tag" not in t.config for t in trials)
    assert trials[0].key.startswith("x, seq_len=64 gc=False")
    # the same spec gives the same ids: a re-run finds its trials
    assert [t.id for t in expand(spec)] == [t.id for t in trials]


def test_a_sweep_can_vary_the_quantization_and_the_optimizer(spec_file):
    """Issue 20: the quantized switches are train keys like the others, so studies sweep them."""
    spec = load_spec(str(spec_file(name="q", grid={"quantize": ["none", "bnb.nf4", "bnb.nf4-dq", "bnb.int8"],
                                                    "optimizer": ["adamw_torch", "paged_adamw_8bit"]})))
    trials = expand(spec)
    assert len(trials) == 8
    assert ("bnb.int8", "paged_adamw_8bit") in {(t.config["quantize"], t.config["optimizer"]) for t in trials}


@pytest.mark.parametrize("spec, needle", [
    (dict(grid={"bogus": [1]}), "unknown key 'bogus'"),
    (dict(grid={"output_dir": ["x"]}), "the study sets it per trial"),
    (dict(linked=[{"lora": [0, 8], "zero": [1]}]), "same number of values"),
    (dict(grid={"zero": [1], "lora": []}), "grid.lora is an empty list"),
    (dict(grid={"zero": [7]}), "zero"),
    (dict(grid={"lr": [-1]}), "lr"),
    (dict(repeats=0), "repeats"),
    (dict(grid={"quantize": ["bnb.nf4"], "lora": [0]}), "needs LoRA"),
    (dict(grid={"optimizer": ["adamw_9bit"]}), "optimizer must be one of"),
])
def test_a_bad_spec_is_one_error_line(spec_file, tmp_path, spec, needle):
    proc = study("run", spec_file(**spec), "--db", tmp_path / "s.sqlite", "--predict-only")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert needle in proc.stderr, proc.stderr


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [1, 2\n")
    proc = study("run", bad, "--db", tmp_path / "s.sqlite")
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot read study spec")
    proc = study("run", tmp_path / "nope.yaml", "--db", tmp_path / "s.sqlite")
    assert proc.returncode == 2 and "not a preset" in proc.stderr


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_has_a_gpu_and_a_cpu_form(name):
    gpu, cpu = expand(load_spec(f"{name}:gpu")), expand(load_spec(f"{name}:cpu"))
    assert len(gpu) == len(cpu) >= 6 or name == "matrix"
    assert all(t.config.get("device") == "cpu" and t.config.get("random_init") for t in cpu)
    assert not any(t.config.get("random_init") for t in gpu)


def test_the_mixtures_preset_is_the_studys_a_to_e_times_zero_1_to_3():
    trials = expand(load_spec("mixtures:gpu"))
    assert sorted({(t.tag, t.config["zero"]) for t in trials}) == [(tag, z) for tag in "abcde" for z in (1, 2, 3)]
    by_tag = {t.tag: t.config for t in trials if t.config["zero"] == 2}
    a = by_tag["a"]
    assert (a["lora"], a["gc"], a["attn"], a["offload"]) == (0, False, "eager", "optimizer")
    assert by_tag["b"]["gc"] and by_tag["c"]["lora"] == 64 and by_tag["d"]["attn"] == "fa2"
    assert by_tag["e"]["offload"] == "none" and a["model"] == "llama-2-7b" and a["nproc"] == 8


def test_a_key_value_override_changes_the_base_not_the_grid(tmp_path):
    from ftmix.study.spec import merge_base

    spec = load_spec("context:cpu")
    assert all(t.config["max_steps"] == 5 for t in expand(merge_base(spec, {"max_steps": 5})))
    with pytest.raises(FtmixError, match="seq_len varies"):
        merge_base(spec, {"seq_len": 64})


def test_the_form_follows_the_machine_unless_named(monkeypatch):
    from ftmix.plan import host
    from ftmix.study.spec import resolve_form

    monkeypatch.setattr(host, "has_nvidia_gpu", lambda: True)
    assert resolve_form("auto") == "gpu" and load_spec("context").name == "context"
    monkeypatch.setattr(host, "has_nvidia_gpu", lambda: False)
    assert resolve_form("auto") == "cpu" and load_spec("context").name == "context-cpu"
    assert load_spec("context:gpu").name == "context"
    with pytest.raises(FtmixError, match="--form"):
        resolve_form("tpu")


def test_this_machines_gpu_is_read_without_torch(monkeypatch, tmp_path):
    """`study run` without --gpu predicts for the GPU nvidia-smi reports (here a stand-in)."""
    from ftmix.plan import host

    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/bash\necho "NVIDIA H200, 143771"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:" + __import__("os").environ["PATH"])
    monkeypatch.setattr(host, "has_nvidia_gpu", lambda: True)
    assert host.detected_gpu_name() == "h200-141gb"
    smi.write_text('#!/bin/bash\necho "NVIDIA B200, 183359"\n')
    assert host.detected_gpu_name() is None  # not in the catalog: memory-only predictions


def test_a_sweep_can_vary_the_engine(spec_file):
    """Issue 21: DeepSpeed ZeRO-3 against FSDP2 FULL_SHARD, and FSDP2's two strategies."""
    spec = load_spec(str(spec_file(name="e", linked=[{"sharding": ["deepspeed", "fsdp2", "fsdp2"], "zero": [3, 3, 2],
                                                      "offload": ["none", "none", "none"]}])))
    trials = expand(spec)
    assert [(t.config["sharding"], t.config["zero"]) for t in trials] == [("deepspeed", 3), ("fsdp2", 3), ("fsdp2", 2)]
