"""`plan --max-seq-len` (issue 21, "How long a context fits"): the longest sequence length a mixture
fits, exact to the granularity, for the mixture given or every candidate."""

import pytest

from ftmix.catalog import load_gpu, load_model
from ftmix.mixture import Mixture
from ftmix.plan.context import fits, longest_context, reach_of_candidates


@pytest.mark.parametrize("model, gpu, mixture", [
    ("mistral-7b", "rtx4090-24gb", dict(zero=0, offload="none", quantize="bnb.nf4", gc=True, attn="fa2")),
    ("mistral-7b", "a100-80gb", dict(zero=0, offload="none", gc=False, attn="sdpa")),
    ("llama-3-8b", "l4-24gb", dict(zero=0, offload="none", quantize="bnb.nf4-dq", gc=True, attn="fa2")),
    ("qwen2.5-7b", "a100-40gb", dict(zero=3, offload="optimizer", gc=True, attn="fa2", gpus=4)),
])
def test_the_answer_fits_and_the_next_granule_does_not(model, gpu, mixture):
    spec, g = load_model(model), load_gpu(gpu)
    m = Mixture(**mixture)
    for granularity in (64, 256):
        reach = longest_context(spec, g, m, granularity)
        s = reach.max_seq_len
        assert s is not None and s % granularity == 0 and reach.mixture.seq_len == s
        assert fits(spec, g, m.with_(seq_len=s)) is not None
        if not reach.capped:
            assert fits(spec, g, m.with_(seq_len=s + granularity)) is None
        else:
            assert s + granularity > spec.max_positions


def test_the_peak_never_falls_as_the_context_grows():
    """What the bisection relies on, over a sweep of lengths and mixtures."""
    from ftmix.estimate import estimate

    spec = load_model("mistral-7b")
    for mixture in (dict(zero=0, offload="none"), dict(zero=0, offload="none", gc=True, attn="eager"),
                    dict(zero=2, gpus=8, quantize="bnb.nf4"), dict(zero=3, offload="all", gpus=8, lora=0)):
        peaks = [estimate(spec, Mixture(**mixture, seq_len=s)).peak for s in range(64, 32768, 448)]
        assert all(b >= a for a, b in zip(peaks, peaks[1:])), mixture


def test_candidates_are_sorted_farthest_first_and_gc_reaches_farther():
    reach = reach_of_candidates(load_model("mistral-7b"), load_gpu("rtx4090-24gb"),
                                {"zero": 0, "quantize": "bnb.nf4"})
    lengths = [r.max_seq_len or 0 for r in reach]
    assert lengths == sorted(lengths, reverse=True) and len(reach) == 6  # GC x 3 kernels
    assert reach[0].mixture.gc and not reach[-1].mixture.gc
