"""FSDP2 as the second engine in every command (issue 21): one mixture key, --json, the planner's
choice between engines, and the bad input fully_shard cannot take."""

import json

import pytest

from ftmix import api


def _one_error(code, out, err):
    assert code == 2, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_estimate_models_fsdp2_in_milliseconds(ftmix):
    code, out, _ = ftmix("estimate", "--model", "llama-2-7b", "--sharding", "fsdp2", "--gpus", "8", "--lora", "0",
                         "--gc", "--seq-len", "1024", "--json")
    assert code == 0
    est = json.loads(out)
    assert est["method"] == "analytic" and est["sharding"] == "fsdp2"
    assert est["label"].startswith("FSDP2 FULL_SHARD + full FT + GC")
    assert (est["mixture"]["zero"], est["mixture"]["offload"]) == (3, "none")
    again = api.estimate("llama-2-7b", sharding="fsdp2", gpus=8, lora=0, gc=True, seq_len=1024)
    assert est["peak_gb"] == round(again.peak / 1e9, 3)
    code, table, _ = ftmix("estimate", "--model", "llama-2-7b", "--sharding", "fsdp2", "--zero", "2", "--gpus", "8")
    table = " ".join(table.split())  # the table's notes wrap with the console's width
    assert code == 0 and "FSDP2 SHARD_GRAD_OP" in table and "rank 0 of 8" in table


def test_plan_searches_both_engines_and_says_why_one_won(ftmix):
    code, out, _ = ftmix("plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--gpus", "8", "--lora", "0",
                         "--seq-len", "4096", "--json")
    assert code == 0
    plan = json.loads(out)
    engines = {(c["mixture"]["sharding"], c["mixture"]["zero"], c["mixture"]["offload"]) for c in plan["candidates"]}
    assert {("fsdp2", 3, "none"), ("fsdp2", 2, "none"), ("fsdp2", 3, "all"), ("deepspeed", 3, "all")} <= engines
    assert ("fsdp2", 3, "optimizer") not in engines  # CPUOffloadPolicy moves everything or nothing
    assert any(n.startswith("engine: ") for n in plan["notes"])
    code, out, _ = ftmix("plan", "--model", "llama-2-7b", "--gpus", "8", "--lora", "0", "--sharding", "deepspeed",
                         "--json")
    assert code == 0 and {c["mixture"]["sharding"] for c in json.loads(out)["candidates"]} == {"deepspeed"}


def test_matrix_cells_may_be_fsdp2(ftmix):
    code, out, _ = ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "4096", "--gpus", "8", "--lora", "0",
                         "--sharding", "fsdp2", "--json")
    assert code == 0
    cell = json.loads(out)["cells"][0]
    assert cell["best"]["mixture"]["sharding"] == "fsdp2" and cell["best"]["label"].startswith("FSDP2")


@pytest.mark.parametrize("args, says", [
    (["--sharding", "fsdp2", "--zero", "1"], "ZeRO-1 (optimizer states only) is DeepSpeed's"),
    (["--sharding", "fsdp2", "--offload", "optimizer"], "CPUOffloadPolicy"),
    (["--sharding", "fsdp2", "--optimizer", "paged_adamw_8bit"], "DTensor shards"),
    (["--sharding", "fsdp2", "--method", "paper"], "study's ZeRO formulas"),
    (["--sharding", "megatron"], "sharding must be one of deepspeed, fsdp2"),
])
def test_bad_fsdp2_mixtures_are_one_line(ftmix, args, says):
    assert says in _one_error(*ftmix("estimate", "--model", "llama-2-7b", "--gpus", "2", *args, "--json"))


def test_a_deepspeed_json_is_not_fsdp2(ftmix, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    for command in ("estimate", "plan"):
        line = _one_error(*ftmix(command, "--model", "llama-2-7b", "--sharding", "fsdp2", "--deepspeed", str(ds)))
        assert "--sharding fsdp2 takes no DeepSpeed config" in line
    line = _one_error(*ftmix("train", "sharding=fsdp2", f"deepspeed_config={ds}", "--max-steps", "1"))
    assert "--sharding fsdp2 takes no DeepSpeed config" in line


def test_train_refuses_a_batch_the_ranks_cannot_split(ftmix):
    line = _one_error(*ftmix("train", "sharding=fsdp2", "effective_batch=3", "--nproc", "2", "--max-steps", "1"))
    assert "not a multiple" in line
