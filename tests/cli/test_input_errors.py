"""Bad input of every kind is one `error:` line on stderr and exit code 2, never a traceback
(issue 9: items 1-4, 8, 20, 21, 24, 25)."""

import json

import pytest


def _one_error(code, out, err):
    assert code == 2, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_matrix_png_into_a_missing_folder_is_caught_before_the_work(ftmix, tmp_path):
    line = _one_error(*ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "256", "--png",
                             str(tmp_path / "nope" / "m.png")))
    assert "folder" in line and "nope" in line


def test_matrix_png_with_an_unsupported_extension(ftmix, tmp_path):
    line = _one_error(*ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "256", "--png",
                             str(tmp_path / "m.bmpq")))
    assert ".bmpq" in line and "png" in line


def test_matrix_png_without_extension_reports_the_file_it_wrote(ftmix, tmp_path):
    code, out, err = ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "256", "--png", str(tmp_path / "m"),
                           "--json")
    assert code == 0, err
    assert json.loads(out)["png"] == str(tmp_path / "m.png") and (tmp_path / "m.png").stat().st_size > 1000


@pytest.mark.parametrize("value", ["0", "NaN", "Infinity", "1e400", "50", "-1"])
def test_calibration_constants_must_be_finite_and_physical(ftmix, tmp_path, value):
    path = tmp_path / "cal.json"
    path.write_text('{"mfu_max": %s}' % value)
    line = _one_error(*ftmix("plan", "--model", "llama-2-7b", "--calibration", str(path), "--json"))
    assert "mfu_max" in line or "not valid JSON" in line


def test_a_rate_of_zero_is_refused(ftmix, tmp_path):
    path = tmp_path / "cal.json"
    path.write_text('{"pcie_gen4": 0}')
    assert "pcie_gen4" in _one_error(*ftmix("plan", "--model", "llama-2-7b", "--calibration", str(path)))


@pytest.mark.parametrize("what,args", [
    ("config", lambda p: ("estimate", "--model", str(p))),
    ("calibration", lambda p: ("plan", "--calibration", str(p))),
    ("deepspeed", lambda p: ("estimate", "--deepspeed", str(p))),
    ("yaml", lambda p: ("train", str(p))),
])
def test_files_that_are_not_utf8(ftmix, tmp_path, what, args):
    path = tmp_path / ("c.yaml" if what == "yaml" else "config.json")
    path.write_bytes(b'{"hidden_size": "\xff\xfe"}')
    assert "UTF-8" in _one_error(*ftmix(*args(path)))


@pytest.mark.parametrize("patch,needle", [
    ({"head_dim": "abc"}, "head_dim"),
    ({"head_dim": -8}, "head_dim"),
    ({"hidden_size": 4096.7}, "hidden_size"),
    ({"num_hidden_layers": True}, "num_hidden_layers"),
])
def test_config_sizes_are_positive_integers(ftmix, tmp_path, patch, needle):
    cfg = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 512, "vocab_size": 1000}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg, **patch}))
    assert needle in _one_error(*ftmix("estimate", "--model", str(path)))


def test_config_size_out_of_range(ftmix, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "hidden_size": 1e400, "num_hidden_layers": 2, '
                    '"num_attention_heads": 4, "vocab_size": 1000}')
    _one_error(*ftmix("estimate", "--model", str(path)))


def test_a_whole_number_written_as_a_float_is_fine(ftmix, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 256.0, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "intermediate_size": 512, "vocab_size": 1000}))
    code, out, err = ftmix("estimate", "--model", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["total_params"] > 0


def test_multimodal_config_uses_its_text_config(ftmix, tmp_path):
    text = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 512, "vocab_size": 1000}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llava", "text_config": text, "vision_config": {"hidden_size": 64}}))
    code, out, err = ftmix("estimate", "--model", str(path), "--json")
    assert code == 0, err
    path2 = tmp_path / "plain.json"
    path2.write_text(json.dumps(text))
    code2, out2, _ = ftmix("estimate", "--model", str(path2), "--json")
    assert json.loads(out)["total_params"] == json.loads(out2)["total_params"]


def test_folder_without_config_json(ftmix, tmp_path):
    line = _one_error(*ftmix("estimate", "--model", str(tmp_path)))
    assert "config.json" in line and "hub" not in line


def test_catalog_models_by_their_hub_id_offline(ftmix):
    code, out, err = ftmix("estimate", "--model", "meta-llama/Llama-2-7b-hf", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "llama-2-7b"


def test_architecture_the_analytic_model_does_not_know_is_refused(ftmix, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 256, "n_layer": 2, "n_head": 4, "vocab_size": 1000}))
    line = _one_error(*ftmix("estimate", "--model", str(path)))
    assert "gpt2" in line and "llama" in line


def test_lora_targets_with_full_fine_tuning_are_refused(ftmix):
    line = _one_error(*ftmix("estimate", "--lora", "0", "--lora-targets", "all-linear"))
    assert "--lora-targets" in line


def test_lora_rank_above_the_hidden_size(ftmix):
    assert "rank" in _one_error(*ftmix("estimate", "--model", "smollm2-135m", "--lora", "100000"))


def test_lora_alpha_may_be_a_float(ftmix):
    code, out, err = ftmix("estimate", "--lora-alpha", "16.5", "--json")
    assert code == 0, err
    assert json.loads(out)["mixture"]["lora_alpha"] == 16.5


@pytest.mark.parametrize("flag,value", [("--attn", "FA2"), ("--offload", "NONE"), ("--precision", "BF16"),
                                        ("--gpu", "A100-80GB"), ("--model", "LLAMA-2-7B")])
def test_choices_ignore_case(ftmix, flag, value):
    code, out, err = ftmix("estimate", flag, value, "--json")
    assert code == 0, err


def test_version_and_help_that_explains(ftmix):
    code, out, _ = ftmix("--version")
    assert code == 0 and out.startswith("ftmix ")
    code, out, _ = ftmix("estimate", "--help")
    assert "scaled_dot_product_attention" in out and "FlashAttention-2" in out and "TEXT" not in out
    code, out, _ = ftmix("train", "--help")
    assert "Default smollm2-135m" in out and "keep_last" in out and "runs/ftmix" in out
    # every command the help points to exists (it once named `study` and `report` before they did)
    import re

    named = set(re.findall(r"`ftmix (\w[\w-]*)", out))
    assert "study" in named
    for command in named:
        assert ftmix(command, "--help")[0] == 0, command


def test_plan_and_matrix_share_the_gpu_default(ftmix):
    plan = json.loads(ftmix("plan", "--json")[1])
    cells = json.loads(ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "256", "--json")[1])
    assert plan["gpu"] == cells["gpu"] == "a100-80gb"


def test_estimate_table_shows_offloaded_rows_and_a_whole_title(ftmix):
    code, out, _ = ftmix("estimate", "--zero", "3", "--offload", "all", "--gpu", "a100-80gb")
    assert code == 0
    rows = {line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 3}
    assert {"parameters", "gradients", "optimizer"} <= rows
    assert any(line.startswith("llama-2-7b · ZeRO-3 + offload all") and "method analytic" in line
               for line in out.splitlines())


def test_zero0_full_fine_tuning_says_what_it_models(ftmix):
    notes = json.loads(ftmix("estimate", "--zero", "0", "--lora", "0", "--json")[1])["notes"]
    assert any("HF Trainer" in n and "16 B per parameter" in n for n in notes)


def test_matrix_folds_long_config_paths_and_explains_its_labels(ftmix, tmp_path):
    folder = tmp_path / "a" / "rather" / "long" / "path" / "to" / "my" / "fine-tuned" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "intermediate_size": 512,
                                                    "vocab_size": 1000}))
    code, out, _ = ftmix("matrix", "--models", str(folder / "config.json"), "--seq-lens", "256", "--offload", "optimizer")
    assert code == 0
    joined = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 3)
    assert str(folder / "config.json") in joined  # folded over lines, never cut with an ellipsis
    assert "off-opt: optimizer states offloaded" in " ".join(out.split())


@pytest.mark.slow
def test_an_unknown_architecture_takes_its_own_layer_names_as_lora_targets(cli, tmp_path):
    """Issue 9, item 20: GPT-2's fused c_attn (not Llama's q_proj/v_proj) through the simulation."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 1000,
                                "n_positions": 512}))
    args = ("estimate", "--model", str(path), "--method", "simulate", "--zero", "0", "--lora", "8", "--seq-len", "128",
            "--json")
    named = cli(*args, "--lora-targets", "c_attn", check_json=True)
    assert named["trainable_params"] == 2 * 8 * (64 + 3 * 64)  # A (r x 64) and B (192 x r) in each layer's c_attn
    assert cli(*args, check_json=True)["trainable_params"] == named["trainable_params"]  # PEFT's default for gpt2
    wrong = cli(*args, "--lora-targets", "q_proj")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: ") and wrong.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["export", "report", "calibrate"])
def test_an_output_path_under_a_file_is_one_line_before_work(ftmix, tmp_path, command):
    """Issue 19, defect 3: export --out, study report --out, study calibrate --out under a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "final").mkdir()
    (run / "final" / "adapter_config.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"config": {}, "mixture": {"lora": 8}}))
    db = tmp_path / "s.sqlite"
    from ftmix.study.store import Store

    Store(str(db)).close()
    args = {"export": ("export", "--run", str(run), "--out", str(blocker / "e")),
            "report": ("study", "report", "--db", str(db), "--out", str(blocker / "r")),
            "calibrate": ("study", "calibrate", "--db", str(db), "--out", str(blocker / "cal.json"))}[command]
    line = _one_error(*ftmix(*args))
    assert "--out" in line and "is a file" in line


@pytest.mark.parametrize("args,needle", [(("estimate", "--gpus", "100000"), "at most 16 GPUs"),
                                         (("plan", "--seq-len", "1"), "too short"),
                                         (("train", "--max-steps", "0"), "max_steps"),
                                         (("train", "--max-steps", "-3"), "max_steps"),
                                         (("eval", "--run", ".", "--rows", "0"), "--rows must be at least 1"),
                                         (("train", "--model", "/missing/config.json"), "no such file or folder"),
                                         (("train", "--model", "someone/not-cached", "--output-dir", "/tmp/ftmix-x"),
                                          "not in the local hub cache")])
def test_validation_found_by_a_new_user(ftmix, args, needle):
    """Issue 19, defect 14."""
    import time

    start = time.perf_counter()
    line = _one_error(*ftmix(*args))
    assert needle in line and time.perf_counter() - start < 10


def test_simulate_says_what_it_covers_for_an_unmodelled_architecture(ftmix, tmp_path):
    """Issue 19, defect 5: a user who passed --method simulate was told "--method simulate runs it"."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 1000,
                                  "n_positions": 512}))
    line = _one_error(*ftmix("estimate", "--model", str(config), "--method", "simulate", "--zero", "2"))
    assert "--zero 0 --gpus 1" in line and "--sharding fsdp2" in line and "under --zero 2" in line
    assert "runs it" not in line
