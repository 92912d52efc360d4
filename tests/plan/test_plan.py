"""The study's qualitative findings hold in ftmix's choices."""

import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.errors import FtmixError
from ftmix.plan import matrix, plan

A100, V100 = load_gpu("a100-80gb"), load_gpu("v100-32gb")
LLAMA7 = load_model("llama-2-7b")


def test_study_setup_7b_on_8_a100():
    # the study's setup fixed: optimizer offload on; LoRA ZeRO-1 or -2 without GC is fastest
    best = plan(LLAMA7, A100, dict(gpus=8, offload="optimizer")).best.mixture
    assert best.zero in (1, 2) and best.lora == 64 and not best.gc and best.attn == "fa2"


def test_offload_off_when_memory_allows():
    best = plan(LLAMA7, A100, dict(gpus=8)).best
    assert best.mixture.offload == "none"
    with_offload = plan(LLAMA7, A100, dict(gpus=8, offload="optimizer")).best
    assert best.time.total < with_offload.time.total


def test_full_fine_tuning_is_the_users_choice():
    assert plan(LLAMA7, A100, dict(gpus=8)).best.mixture.lora == 64
    full = plan(LLAMA7, A100, dict(gpus=8, lora=0)).best.mixture
    assert full.lora == 0 and full.zero >= 1  # 16 B/param x 6.7B does not fit one 80 GB card unpartitioned


@pytest.mark.parametrize("gpu", ["a100-40gb", "a100-80gb", "h100-80gb", "l4-24gb", "rtx4090-24gb"])
def test_fa2_wherever_supported(gpu):
    g = load_gpu(gpu)
    for s in (256, 1024, 4096):
        result = plan(LLAMA7, g, dict(gpus=8, seq_len=s))
        if result.best is not None:
            assert result.best.mixture.attn == "fa2"


def test_fixed_flags_are_kept():
    best = plan(LLAMA7, A100, dict(gpus=8, zero=3, gc=True, attn="eager")).best.mixture
    assert (best.zero, best.gc, best.attn) == (3, True, "eager")


def _level(cell):
    m = cell.best.mixture
    return (m.gc, m.zero)


def test_v100_matrix_moves_to_more_memory_saving():
    """On 8 x V100 32 GB (the study's setup, offload on), GC and higher stages as size or context grows."""
    models = [load_model(n) for n in ("llama-2-7b", "llama-2-13b", "llama-2-70b")]
    seqs = [256, 512, 1024, 2048, 4096]
    cells = matrix(models, V100, seqs, dict(gpus=8, offload="optimizer"))
    grid = {(c.model, c.seq_len): c for c in cells}
    assert all(c.best is not None for c in cells)
    assert not grid[("llama-2-7b", 256)].best.mixture.gc and grid[("llama-2-7b", 256)].best.mixture.zero <= 2
    assert _level(grid[("llama-2-70b", 4096)]) == (True, 3)
    for model in models:
        levels = [_level(grid[(model.name, s)]) for s in seqs]
        assert levels == sorted(levels), (model.name, levels)
    for s in seqs:
        levels = [_level(grid[(m.name, s)]) for m in models]
        assert levels == sorted(levels), (s, levels)


def test_180b_on_16_v100():
    falcon = load_model("falcon-180b")
    cells = matrix([falcon], V100, [256, 2048, 4096], dict(gpus=8, nodes=2, offload="optimizer"), effective_batch=16)
    fits_short, longest_in_range, beyond = cells
    assert fits_short.best is not None and fits_short.best.mixture.zero == 3 and fits_short.best.mixture.lora
    assert longest_in_range.best is None and longest_in_range.note is None  # nothing fits
    assert beyond.best is None and "positions" in beyond.note


def test_nothing_fits_names_the_smallest_change():
    result = plan(load_model("falcon-180b"), V100, dict(gpus=8, nodes=2, offload="optimizer", seq_len=2048),
                  effective_batch=16)
    assert result.best is None
    assert "--seq-len" in result.suggestion and "more GPUs" in result.suggestion
    assert result.to_json()["best"] is None


def test_why_lists_faster_misfits():
    result = plan(load_model("llama-2-13b"), V100, dict(gpus=8, offload="optimizer", seq_len=4096))
    assert result.best is not None
    for c in result.faster_misfits:
        assert not c.fits and c.over_gb > 0 and c.time.total < result.best.time.total


def test_search_batch_keeps_effective_batch():
    result = plan(LLAMA7, A100, dict(gpus=2, seq_len=512), search_batch=True, effective_batch=8)
    batches = {c.mixture.micro_batch for c in result.candidates}
    assert batches == {1, 2, 4}
    assert all(c.time.samples == 8 for c in result.candidates)


def test_impossible_fixed_flags():
    with pytest.raises(FtmixError, match="FlashAttention-2"):
        plan(LLAMA7, V100, dict(attn="fa2"))
    with pytest.raises(FtmixError, match="positions"):
        plan(load_model("falcon-180b"), V100, dict(seq_len=4096))


def test_the_plan_estimates_each_candidate_at_its_own_accumulation():
    """An effective batch of one micro batch on one GPU: no accumulation, so full fine-tuning
    without DeepSpeed is estimated without gradients in the forward, as `ftmix train` runs it."""
    from ftmix.estimate import estimate
    from ftmix.plan.search import candidates

    flags = dict(zero=0, offload="none", lora=0, precision="bf16-true", seq_len=2048, micro_batch=4, gc=False,
                 attn="fa2")
    for effective, accum in ((4, 1), (8, 2)):
        (c,) = candidates(LLAMA7, load_gpu("h100-80gb"), flags, effective_batch=effective)
        assert c.memory.grad_accum == accum
        assert c.memory.peak == estimate(LLAMA7, c.mixture, load_gpu("h100-80gb"), grad_accum=accum).peak
    one = candidates(LLAMA7, load_gpu("h100-80gb"), flags, effective_batch=4)[0].memory.peak
    two = candidates(LLAMA7, load_gpu("h100-80gb"), flags, effective_batch=8)[0].memory.peak
    assert two - one == pytest.approx(2 * LLAMA7.total_params, rel=0.01)


def test_ties_go_to_no_deepspeed_on_one_gpu_then_to_less_memory():
    """Issue 19, defect 10: ZeRO-1 won on one GPU by 0.2%, inside the runtime model's resolution."""
    from ftmix.plan.search import TIE

    result = plan(load_model("llama-2-7b"), load_gpu("a100-80gb"), {"gpus": 1})
    fastest = min((c for c in result.candidates if c.fits), key=lambda c: c.time.total)
    assert fastest.mixture.zero >= 1 and result.best.mixture.zero == 0
    assert result.best.time.total <= fastest.time.total * (1 + TIE)
    assert "the tie goes to no DeepSpeed on one GPU" in result.notes[0]
    eight = plan(load_model("llama-2-70b"), load_gpu("a100-40gb"), {"gpus": 8, "lora": 0})
    tied = [c for c in eight.candidates if c.fits and c.time.total <= min(
        x.time.total for x in eight.candidates if x.fits) * (1 + TIE)]
    assert eight.best.memory.device_total == min(c.memory.device_total for c in tied)


def test_host_ram_beyond_any_server_is_said(capsys):
    from ftmix.cli import main

    big = plan(load_model("falcon-180b"), A100, {"gpus": 8, "lora": 0}, cpu_ram=None)
    assert big.best is not None and big.best.mixture.offload != "none" and big.best.memory.cpu_bytes > 2e12
    assert any("more than a GPU server has" in n and "--cpu-ram" in n for n in big.notes)
    within = plan(load_model("llama-2-70b"), A100, {"gpus": 8, "lora": 0, "offload": "optimizer"}, cpu_ram=None)
    assert within.best.memory.cpu_bytes < 2e12 and not any("GPU server" in n for n in within.notes)
    try:
        main(["plan", "--model", "llama-2-70b", "--gpu", "a100-80gb", "--gpus", "8", "--lora", "0", "--offload",
              "optimizer", "--cpu-ram", "none"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "host RAM:" in out and "GB per node for the offloaded optimizer states" in out
