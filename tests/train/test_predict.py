"""What a run records as predicted before it trains: the estimate, and on a named GPU the step time
split by part with its MFU (issue 22), the same figures plan gives that mixture."""

import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.mixture import mixture_from_flags
from ftmix.plan import step_time
from ftmix.train.run import _predict


def test_the_record_carries_where_the_predicted_step_time_goes():
    spec, gpu = load_model("llama-2-7b"), load_gpu("a100-80gb")
    m = mixture_from_flags(gpu, zero=0, lora=16, gc=True)
    predicted = _predict(spec, m, gpu, 8)
    step = step_time(spec, gpu, m, 8)
    assert predicted["step_time_s"] == round(step.total, 5) and predicted["time"] == step.to_json()
    assert predicted["time"]["grad_accum"] == 8 and 0 < predicted["time"]["mfu"] < 0.55
    none = _predict(spec, m, None, 8)
    assert none["step_time_s"] is None and "time" not in none and "no CPU runtime model" in none["note"]
