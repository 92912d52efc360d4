"""The quantized switches in every command, --json, and their bad input (issue 20)."""

import json

import pytest


def _one_error(code, out, err):
    assert code == 2, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["--quantize", "bnb.nf4", "--lora", "0"], "needs LoRA"),
    (["--quantize", "bnb.nf9"], "quantize must be one of"),
    (["--quantize", "bnb.int8", "--zero", "3", "--offload", "none"], "cannot be partitioned"),
    (["--quantize", "bnb.nf4", "--zero", "3", "--offload", "all"], "--offload all"),
    (["--optimizer", "adamw_8bit", "--zero", "2", "--offload", "optimizer"], "own CPU Adam"),
    (["--optimizer", "sgd"], "optimizer must be one of"),
    (["--modules-to-save", "norm"], "modules-to-save norm"),
    (["--dora", "--lora", "0"], "needs LoRA"),
    (["--quantize", "bnb.nf4", "--precision", "fp32"], "16 bits"),
    (["--quantize", "bnb.int8", "--method", "simulate", "--sharding", "fsdp2", "--gpus", "2"], "FSDP2 shards floating"),
    (["--quantize", "bnb.int8", "--sharding", "fsdp2", "--zero", "2", "--gpus", "2"], "FSDP2 shards floating"),
])
def test_bad_quantized_mixtures_are_one_line(ftmix, args, says):
    line = _one_error(*ftmix("estimate", "--model", "llama-2-7b", *args, "--json"))
    assert says in line


def test_bnb_on_a_gptq_checkpoint_is_refused(ftmix, tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 1000,
           "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    line = _one_error(*ftmix("estimate", "--model", str(tmp_path / "config.json"), "--quantize", "bnb.nf4"))
    assert "GPTQ-quantized checkpoint, already at 4 bits" in line
    line = _one_error(*ftmix("estimate", "--model", str(tmp_path / "config.json"), "--lora", "0"))
    assert "only LoRA adapters beside them" in line
    code, out, err = ftmix("estimate", "--model", str(tmp_path / "config.json"), "--zero", "0", "--json")
    assert code == 0, err
    assert any("GPTQ checkpoint" in n for n in json.loads(out)["notes"])


def test_the_switch_in_estimate_plan_and_matrix(ftmix):
    code, out, err = ftmix("estimate", "--model", "llama-2-7b", "--gpu", "rtx4090-24gb", "--quantize", "bnb.nf4-dq",
                           "--zero", "0", "--gc", "--optimizer", "paged_adamw_8bit", "--json")
    assert code == 0, err
    est = json.loads(out)
    assert est["mixture"]["quantize"] == "bnb.nf4-dq" and est["mixture"]["optimizer"] == "paged_adamw_8bit"
    assert est["fits"]
    code, out, err = ftmix("plan", "--model", "llama-2-13b", "--gpu", "rtx4090-24gb", "--compare-quantize", "bnb.nf4",
                           "--seq-len", "1024", "--json")
    assert code == 0, err
    both = json.loads(out)
    without, with_ = both["without"]["best"], both["with"]["best"]
    # a 16-bit 13B fits one 24 GB card only with everything offloaded to the host; 4-bit needs no offload
    assert without["mixture"]["quantize"] == "none" and without["mixture"]["offload"] == "all"
    assert with_["mixture"]["quantize"] == "bnb.nf4" and with_["mixture"]["offload"] == "none"
    assert with_["cpu_gb"] < without["cpu_gb"]
    code, out, err = ftmix("plan", "--model", "llama-2-13b", "--gpu", "rtx4090-24gb", "--seq-len", "1024", "--json")
    assert code == 0 and json.loads(out)["best"]["mixture"]["quantize"] == "none"  # plan never quantizes by itself
    code, out, err = ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "512", "--gpu", "rtx4090-24gb",
                           "--quantize", "bnb.nf4", "--json")
    assert code == 0, err
    assert json.loads(out)["cells"][0]["best"]["mixture"]["quantize"] == "bnb.nf4"


def test_train_refuses_before_anything_loads(ftmix, tmp_path):
    line = _one_error(*ftmix("train", "--quantize", "bnb.nf4", "--lora", "0", "--output-dir", str(tmp_path / "a")))
    assert "needs LoRA" in line
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 1000,
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    (tmp_path / "awq").mkdir()
    (tmp_path / "awq" / "config.json").write_text(json.dumps(cfg))
    line = _one_error(*ftmix("train", "--model", str(tmp_path / "awq"), "--random-init", "--output-dir",
                             str(tmp_path / "b")))
    assert "AWQ-quantized checkpoint" in line and "bitsandbytes" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
