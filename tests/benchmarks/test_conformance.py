"""The estimate against the real engines, measured by the device-memory twin.

Every committed twin measurement of the conformance grids (benchmarks/results/conformance.json:
80 cases; conformance_full.json: 256; conformance_qlora.json: 34; conformance_fsdp2.json: 28) is
predicted anew by the current estimate, as ``ftmix train``
predicts it, in seconds and without torch: the prediction must be the committed one to the byte
(a change to the estimate re-runs ``benchmarks/conformance.py --repredict`` and commits what
moved), and the committed accuracy must hold: each peak within 1% and each component holding 1%
of the peak within 2%, but for the cases docs/groundtruth.md explains one by one.

A few real runs (no DeepSpeed on one rank, ZeRO-3 with parameter offload on two, and the quantized
setups) check that the engines still do what was committed: the twin's peak of a fresh run is the
committed one.
"""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import conformance  # noqa: E402 - the benchmark's own code, from benchmarks/

GRIDS = {name: json.loads((BENCH / "results" / f"{name}.json").read_text())["rows"]
         for name in ("conformance", "conformance_full", "conformance_qlora", "conformance_fsdp2")}
ROWS = [(grid, row) for grid, rows in GRIDS.items() for row in rows]

# docs/groundtruth.md, "The four peaks outside 1%": gloo's timing, a first-step-only moment
PEAKS_OUTSIDE = {"gqa-untied z2-none full gc sdpa 2rank", "gqa-untied z2-none full gc eager 2rank",
                 "gqa-untied z2-optimizer full gc sdpa 2rank", "mha-tied z3-optimizer full gc eager 1rank",
                 # issue 21 (docs/estimate.md, FSDP2): the layer backward's fresh MLP gradient, a larger share of
                 # this tiny offloaded row's device peak (+1.2%) than at full size
                 "gqa-untied fsdp2-full-offload full gc sdpa 2rank"}


def sizeable(row: dict):
    return [(name, c) for name, c in row["components"].items() if c["measured"] >= 0.01 * row["measured_bytes"]]


@pytest.mark.parametrize("grid,row", ROWS, ids=[f"{g}:{r['name']}" for g, r in ROWS])
def test_the_estimate_still_predicts_every_committed_measurement(grid, row):
    again = conformance.repredict(row)
    assert again["predicted_bytes"] == row["predicted_bytes"], "the estimate moved: run conformance.py --repredict"
    assert {k: c["predicted"] for k, c in again["components"].items()} == \
        {k: c["predicted"] for k, c in row["components"].items()}
    if row["name"] not in PEAKS_OUTSIDE:
        assert abs(again["error"]) <= 0.01, (row["measured_bytes"], again["predicted_bytes"])


def test_the_components_outside_2_percent_are_the_documented_ones():
    """docs/groundtruth.md: all components outside 2% are full fine-tuning + GC, where the twin's
    peak and the estimate's fall at two moments close in size (27 in the full grid, 2 in the
    standard one)."""
    outside = {grid: [(r["name"], name) for r in rows for name, c in sizeable(r) if abs(c["error"]) > 0.02]
               for grid, rows in GRIDS.items()}
    assert len(outside["conformance_full"]) == 27 and len(outside["conformance"]) == 2
    # issue 20: one quantized row's parameters: ZeRO-3 + GC peaks in the first step, before Adam's
    # moments exist, with the recompute's gathered weights held (docs/estimate.md, "QLoRA")
    assert outside["conformance_qlora"] == [("gqa-untied z3-none lora gc sdpa 1rank bnb.nf4-dq r8", "parameters")]
    # issue 21: FSDP2 on real gloo ranks; full fine-tuning + GC's activations and temporaries at
    # +2.0% to +2.6% on these tiny shapes (the layer backward's moment, where the MLP output
    # projection's fresh gradient the full-size simulation holds is a larger share than here)
    assert sorted(outside["conformance_fsdp2"]) == sorted(
        [(f"{shape} fsdp2-{strategy} full gc sdpa 2rank", "activations and temporaries")
         for shape in ("gqa-untied", "mha-tied") for strategy in ("full", "grad")]
        + [("gqa-untied fsdp2-full-offload full gc sdpa 2rank", "activations and temporaries")])
    for grid in ("conformance", "conformance_full"):
        assert all(" full gc " in case for case, _ in outside[grid]), outside[grid]


QLORA_REAL = ["gqa-untied z0-none lora gc sdpa 1rank bnb.nf4-dq r8", "mha-tied z0-none lora sdpa 1rank bnb.int8 r8",
              "gqa-untied z0-none lora sdpa 1rank bnb.nf4 r8 dora"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", QLORA_REAL)
def test_a_fresh_quantized_run_measures_what_was_committed(tmp_path, name):
    """Issue 20: bitsandbytes on CPU (4-bit with double quantization + GC, LLM.int8 on the GPU's
    path, DoRA) measured again; the twin's bytes are the committed ones, the estimate within 1%."""
    committed = next(r for r in GRIDS["conformance_qlora"] if r["name"] == name)
    case = {k: committed[k] for k in ("shape", "zero", "offload", "lora", "gc", "attn", "ranks")}
    case.update({k: committed.get(k, v) for k, v in conformance.QLORA_KEYS.items()})
    row = conformance.run_case(case, tmp_path)
    assert isinstance(row["error"], float), row["error"]
    assert row["measured_bytes"] == pytest.approx(committed["measured_bytes"], abs=64)
    assert row["predicted_bytes"] == committed["predicted_bytes"] and abs(row["error"]) <= 0.01
    for comp_name, comp in sizeable(row):
        assert comp["predicted"] == pytest.approx(comp["measured"], rel=0.02, abs=512), (comp_name, comp)


# (stage, offload, LoRA rank, ranks, GC, attention): no DeepSpeed and ZeRO-3 with parameter offload on two
# ranks, the engines' two ends; the stages between and full fine-tuning run for real in tests/train
# (test_train_distributed.py, test_train_single.py), and every committed row is re-predicted above
REAL = [(0, "none", 8, 1, False, "sdpa"), (3, "all", 8, 2, False, "sdpa")]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("zero,offload,lora,ranks,gc,attn", REAL,
                         ids=[f"z{c[0]}-{c[1]}-{'lora' if c[2] else 'full'}{'-gc' if c[4] else ''}-{c[3]}rank"
                              for c in REAL])
def test_a_fresh_run_measures_what_was_committed(tmp_path, zero, offload, lora, ranks, gc, attn):
    shape = "gqa-untied" if ranks == 1 else "mha-tied"
    case = dict(shape=shape, zero=zero, offload=offload, lora=lora, gc=gc, attn=attn, ranks=ranks)
    committed = next(r for rows in GRIDS.values() for r in rows if r["name"] == conformance.case_name(**case))
    row = conformance.run_case(case, tmp_path)
    assert isinstance(row["error"], float), row["error"]
    assert row["measured_bytes"] == committed["measured_bytes"]
    assert row["predicted_bytes"] == committed["predicted_bytes"]
    assert abs(row["error"]) <= 0.01
    for name, comp in sizeable(row):
        assert comp["predicted"] == pytest.approx(comp["measured"], rel=0.02, abs=512), (name, comp)
    if offload != "none":
        assert row["host_measured_bytes"] > 0 and row["host_predicted_bytes"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deepspeed_default_buckets(tmp_path):
    """A user's DeepSpeed JSON that leaves the buckets to DeepSpeed: 5e8-element reduce buckets
    (1 GB of bf16 whatever the model), two with overlap_comm on stage 2, arrive at the first
    gradient. The estimate reads the same defaults."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                              "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
                              "zero_optimization": {"stage": 2, "overlap_comm": True}}))
    case = dict(shape="gqa-untied", zero=2, offload="none", lora=8, gc=False, attn="sdpa", ranks=1)
    row = conformance.run_case(case, tmp_path, deepspeed_config=str(ds))
    assert isinstance(row["error"], float), row["error"]
    buffers = row["components"]["gradients and DeepSpeed buffers"]
    assert buffers["predicted"] == pytest.approx(2 * 2 * 500_000_000, rel=0.001)
    assert buffers["measured"] == pytest.approx(buffers["predicted"], rel=0.001)
    assert abs(row["error"]) <= 0.01


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shape,gc,attn,where", [
    ("gqa-untied", False, "sdpa", "backward of the loss head"),
    ("mha-tied", True, "sdpa", "end of the backward (the tied embedding"),
    ("gqa-untied", True, "eager", "backward of the bottom decoder layer"),
])
def test_without_accumulation_the_estimate_matches_the_trainer(tmp_path, shape, gc, attn, where):
    """One micro step per optimizer step (effective batch = micro batch): HF Trainer sets the
    gradients to None after each step, so the forward and the loss head's backward hold none; the
    estimate (grad_accum=1, as `ftmix train` asks for it) equals the twin within 1%."""
    case = dict(shape=shape, zero=0, offload="none", lora=0, gc=gc, attn=attn, ranks=1)
    row = conformance.run_case(case, tmp_path, effective_batch=1)
    assert isinstance(row["error"], float), row["error"]
    assert abs(row["error"]) <= 0.01, (row["measured_bytes"], row["predicted_bytes"], row["components"])
    assert row["predicted_peak_at"][0].startswith(f"peak at: {where}"), row["predicted_peak_at"]
    grads = row["components"]["gradients and DeepSpeed buffers"]
    if where == "backward of the loss head":
        assert grads["measured"] == 0 and grads["predicted"] == 0
