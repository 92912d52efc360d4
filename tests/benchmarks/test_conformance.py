"""The estimate against the real engines (device-memory twin), a subset of
benchmarks/conformance.py that covers every ZeRO stage, every offload, LoRA and full fine-tuning,
and two ranks. The goal is 1% on the peak; the bounds below are what the model reaches today on
each case (benchmarks/results/conformance.md), so a change that makes any of them worse fails."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

CASES = [
    # (stage, offload, LoRA rank, ranks, bound on |predicted / measured - 1|)
    (0, "none", 8, 1, 0.05),  # open: PEFT's fp32 adapters under autocast, over by ~4.5%
    (1, "none", 0, 2, 0.01),
    (1, "optimizer", 8, 1, 0.01),
    (2, "none", 0, 2, 0.01),
    (2, "optimizer", 0, 1, 0.01),
    (3, "none", 0, 1, 0.01),
    (3, "all", 8, 2, 0.07),  # open: what ZeRO-3 keeps on the GPU under parameter offload (+5.9%)
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("zero,offload,lora,ranks,bound", CASES,
                         ids=[f"z{c[0]}-{c[1]}-{'lora' if c[2] else 'full'}-{c[3]}rank" for c in CASES])
def test_estimate_matches_the_engine(tmp_path, zero, offload, lora, ranks, bound):
    import conformance

    case = dict(shape="gqa-untied", zero=zero, offload=offload, lora=lora, gc=False, attn="sdpa", ranks=ranks)
    row = conformance.run_case(case, tmp_path)
    assert isinstance(row["error"], float), row["error"]
    assert abs(row["error"]) <= bound, (row["measured_bytes"], row["predicted_bytes"], row["components"])
    # where the peak meets the goal, the parameters and the optimizer states are right to 2%
    for name in ("parameters", "optimizer states (fp32 master + moments)") if bound <= 0.01 else ():
        comp = row["components"][name]
        assert comp["predicted"] == pytest.approx(comp["measured"], rel=0.02, abs=512), (name, comp)
    if offload != "none":
        assert row["host_measured_bytes"] > 0 and row["host_predicted_bytes"] > 0
