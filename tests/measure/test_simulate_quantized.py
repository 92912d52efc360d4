"""bitsandbytes' quantized modules under fake tensors (issue 20): the simulation meets the twin of
the real CPU runs (benchmarks/results/conformance_qlora.json) and, at full size, the analytic
method (benchmarks/results/simulate_qlora.json, with each simulation's time and RAM)."""

import json
import sys
from pathlib import Path

import pytest

from ftmix.catalog import load_model
from ftmix.estimate import estimate
from ftmix.mixture import mixture_from_flags

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import simulate_qlora  # noqa: E402 - the benchmark's cases, from benchmarks/

COMMITTED = json.loads((BENCH / "results" / "simulate_qlora.json").read_text())
# the one simulation outside 0.5%: a 16-bit (not quantized) base with a trained 16-bit head copy,
# where the simulated loop holds one more head-sized gradient than HF Trainer (docs/estimate.md)
KNOWN = {"gqa-untied z0-none lora sdpa 1rank +lm_head"}


def test_the_committed_simulations_meet_their_goals():
    for row in COMMITTED["tiny"]:
        assert abs(row["error"]) <= (0.06 if row["name"] in KNOWN else 0.005), row
    for row in COMMITTED["full_size"]:
        assert abs(row["error"]) <= 0.005 and row["seconds"] < 60 and row["max_rss_gb"] < 2, row


@pytest.mark.parametrize("model, flags", simulate_qlora.FULL, ids=[f"{m} {f}" for m, f in simulate_qlora.FULL])
def test_the_analytic_method_still_gives_the_committed_full_size_figures(model, flags):
    row = next(r for r in COMMITTED["full_size"] if r["model"] == model and r["flags"] == flags)
    m = mixture_from_flags(None, zero=0, **flags)
    assert round(estimate(load_model(model), m).peak / 1e9, 3) == row["analytic_gb"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["gqa-untied z0-none lora gc sdpa 1rank bnb.nf4-dq r8",
                                  "mha-tied z0-none lora sdpa 1rank bnb.int8 r8",
                                  "gqa-untied z0-none lora sdpa 1rank bnb.nf4 r8 dora"])
def test_simulating_a_tiny_quantized_run_gives_its_measured_peak(name):
    row = next(r for r in simulate_qlora.tiny_cases() if r["name"] == name)
    again = simulate_qlora.simulate_tiny(row)
    committed = next(r for r in COMMITTED["tiny"] if r["name"] == name)
    assert again["simulated_bytes"] == committed["simulated_bytes"]
    assert abs(again["error"]) <= 0.005
