"""`ftmix train --quantize`: QLoRA for real on CPU with bitsandbytes (issue 20): the twin counts what
the estimate predicts, eval works, and export --merge folds the adapter into the de-quantized base
and says so."""

import json

import pytest

from tests.cli.conftest import run_cli
from tests.train.conftest import pinned_curve, run_train_cli, tiny_flags, yaml_args

pytestmark = pytest.mark.slow  # real training: make test runs it, make test-fast not


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "run"
    flags = tiny_flags(out, zero=0, lora=8, max_steps=3, lr=0.05, quantize="bnb.nf4-dq", gc=True,
                       optimizer="adamw_8bit", modules_to_save="lm_head", max_rows=12)
    proc = run_train_cli(yaml_args(flags), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernels" not in proc.stderr  # bitsandbytes' start-up line goes to the log, not the screen
    return out


def test_the_run_is_qlora_and_the_twin_meets_the_estimate(qlora_run):
    record = json.loads((qlora_run / "run.json").read_text())
    m = record["mixture"]
    assert (m["quantize"], m["optimizer"], m["modules_to_save"], m["gc"]) == ("bnb.nf4-dq", "adamw_8bit", "lm_head", True)
    assert record["label"].startswith("1 GPU + QLoRA r8") and any("bitsandbytes" in n for n in record["notes"])
    peak = record["comparison"]["device peak per GPU, twin (GB)"]
    assert abs(peak["error"]) <= 0.01, peak
    pinned_curve("qlora nf4-dq gc adamw_8bit +lm_head", record)


@pytest.mark.timeout(900)
def test_merge_folds_the_adapter_into_the_dequantized_base(qlora_run, tmp_path):
    import torch
    import transformers
    from peft import PeftModel

    from ftmix.job.record import read_record
    from ftmix.train.export import rebuild_base

    result = run_cli("export", "--run", str(qlora_run), "--merge", "--dtype", "fp32", "--out", str(tmp_path / "e"),
                     "--json", check_json=True)
    assert "de-quantized base" in result["note"] and "bnb.nf4-dq" in result["note"]
    merged = transformers.AutoModelForCausalLM.from_pretrained(result["merged"]).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # a plain 16/32-bit model, no 4-bit codes
    record = read_record(qlora_run)
    base = rebuild_base(record)
    assert not getattr(base, "is_quantized", False)
    wrapped = PeftModel.from_pretrained(base.float(), result["adapter"]).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 300]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, wrapped(ids).logits, atol=1e-4)


def test_eval_scores_the_qlora_run(qlora_run):
    result = run_cli("eval", "--run", str(qlora_run), "--rows", "2", "--json", check_json=True)
    assert result["model"] == "fine-tuned" and result["rows"] == 2 and result["eval_loss"] > 0
