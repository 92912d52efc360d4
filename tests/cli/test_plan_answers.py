"""Right answers from plan, matrix and estimate (issue 9: items 12, 14, 15, 16)."""

import json


def test_plan_respects_host_ram(ftmix):
    # 70B full fine-tuning on one 80 GB GPU "fits" only with parameter offload, which needs >1 TB of RAM
    code, out, err = ftmix("plan", "--model", "llama-2-70b", "--gpu", "a100-80gb", "--lora", "0", "--json",
                           "--cpu-ram", "none")
    free = json.loads(out)
    assert code == 0, err
    assert free["best"]["mixture"]["offload"] == "all" and free["best"]["cpu_gb"] > 1000
    code, out, err = ftmix("plan", "--model", "llama-2-70b", "--gpu", "a100-80gb", "--lora", "0", "--json",
                           "--cpu-ram", "512")
    capped = json.loads(out)
    assert code == 3 and capped["best"] is None
    assert all(c["cpu_gb"] > 512 or not c["fits_gpu"] for c in capped["candidates"])
    assert "CPU RAM" in capped["message"]


def test_every_plan_and_matrix_result_carries_cpu_gb(ftmix):
    code, out, err = ftmix("plan", "--model", "llama-2-7b", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert all("cpu_gb" in c for c in plan["candidates"]) and plan["best"]["cpu_gb"] >= 0
    code, out, err = ftmix("matrix", "--models", "llama-2-7b", "--seq-lens", "256", "--json")
    assert json.loads(out)["cells"][0]["best"]["cpu_gb"] >= 0


def test_plan_exit_code_when_nothing_fits(ftmix):
    code, out, err = ftmix("plan", "--model", "llama-2-70b", "--gpu", "t4-16gb", "--lora", "0", "--zero", "0")
    assert code == 3 and "nothing fits" in out
    code, _, _ = ftmix("plan", "--model", "llama-2-7b")
    assert code == 0


def test_safety_margin_applies_to_the_paper_method(ftmix):
    args = ("estimate", "--gpu", "a100-80gb", "--method", "paper", "--json")
    tight = json.loads(ftmix(*args, "--safety-margin", "0.5")[1])
    loose = json.loads(ftmix(*args, "--safety-margin", "0.0")[1])
    assert tight["safety_margin"] == 0.5 and loose["safety_margin"] == 0.0


def test_effective_batch_is_never_exceeded_silently(ftmix):
    code, out, err = ftmix("plan", "--gpus", "8", "--micro-batch", "4", "--effective-batch", "8")
    assert code == 2 and "32 samples" in err and "effective batch 8" in err
    code, out, err = ftmix("plan", "--gpus", "3", "--effective-batch", "8")
    assert code == 2 and "not a multiple" in err
    code, out, err = ftmix("plan", "--gpus", "4", "--micro-batch", "2", "--effective-batch", "8", "--json")
    assert code == 0, err
    assert json.loads(out)["best"]["time"]["samples_per_step"] == 8
