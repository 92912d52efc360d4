"""Hypothesis: memory never rises with a higher ZeRO stage, more GPUs, GC, LoRA or sdpa-for-eager;
never falls with longer sequences or bigger batches. For every catalog model, both methods."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ftmix.catalog import load_model, model_names
from ftmix.estimate import estimate
from ftmix.estimate.states import trainable_params
from ftmix.mixture import Mixture

models = st.sampled_from(model_names())
methods = st.sampled_from(["analytic", "paper"])


@st.composite
def mixtures(draw):
    zero = draw(st.integers(0, 3))
    offload = "none" if zero == 0 else draw(st.sampled_from(["none", "optimizer"] + (["all"] if zero == 3 else [])))
    return Mixture(zero=zero, offload=offload, lora=draw(st.sampled_from([0, 8, 64])),
                   lora_targets=draw(st.sampled_from(["q_proj,v_proj", "all-linear"])), gc=draw(st.booleans()),
                   attn=draw(st.sampled_from(["eager", "sdpa", "fa2"])), precision=draw(st.sampled_from(["bf16", "fp16"])),
                   micro_batch=draw(st.integers(1, 8)), seq_len=draw(st.integers(2, 2048)),
                   gpus=draw(st.integers(1, 8)), nodes=draw(st.integers(1, 4)))


def peak(name, m, method):
    return estimate(load_model(name), m, method=method).peak


EPS = 1 + 1e-12
FIT_NOISE = 1.005  # an architecture fit (calibrate-arch) is exact to 0.5% of a simulation, not to the byte


def tol(name, method, *ms):
    """EPS, or the fits' noise where a fitted correction applies to one of the mixtures compared."""
    fitted = method == "analytic" and any(
        any(n.startswith("architecture fit") for n in estimate(load_model(name), m).notes) for m in ms)
    return FIT_NOISE if fitted else EPS


STATES = ("parameters", "gradients", "optimizer")


def states(name, m, method):
    return sum(v for k, v in estimate(load_model(name), m, method=method).breakdown.items() if k in STATES)


@settings(max_examples=300, deadline=None)
@given(models, mixtures(), methods)
def test_higher_stage_never_costs_more(name, m, method):
    """What ZeRO partitions never rises with the stage. The whole peak does not either once the
    partitioning pays for DeepSpeed's fixed buffers (reduce bucket, ZeRO-3's gathered module and
    prefetch bucket): on one GPU, or for a 135M model, a higher stage only adds them, as it does on
    real hardware (docs/estimate.md). With LoRA, ZeRO-3's own linear saves every frozen layer's
    input (measured), so at long contexts stage 3 can hold more activations than stage 2 saves."""
    if m.zero == 3 or m.offload == "all":
        return
    higher = m.with_(zero=m.zero + 1)
    # on one GPU stage 2 partitions nothing, and a tied output head's gradient waits whole for the
    # embedding's backward (measured by the twin): it adds bytes there
    if not (m.world == 1 and higher.zero == 2 and not m.lora and load_model(name).tied_embeddings):
        assert states(name, higher, method) <= states(name, m, method) * tol(name, method, higher, m)
    lora_to_stage3 = method == "analytic" and m.lora and higher.zero == 3
    if method == "paper" or (m.world >= 4 and load_model(name).total_params >= 1e9 and not lora_to_stage3):
        assert peak(name, higher, method) <= peak(name, m, method) * tol(name, method, higher, m)


@settings(max_examples=300, deadline=None)
@given(models, mixtures(), methods)
def test_more_gpus_never_cost_more(name, m, method):
    # ZeRO-3 on one GPU gathers nothing (a partition is the whole parameter); from two GPUs on it
    # gathers the output head and a layer; plain DDP adds its gradient buckets from two GPUs on
    # (both measured by the twin: 2 ranks hold more than 1), so the property holds from two GPUs up
    if m.zero in (0, 3) and m.world == 1 and method == "analytic":
        m = m.with_(gpus=2)
    assert peak(name, m.with_(gpus=m.gpus + 1), method) <= peak(name, m, method) * tol(name, method, m)
    assert peak(name, m.with_(nodes=m.nodes + 1), method) <= peak(name, m, method) * tol(name, method, m)


@settings(max_examples=300, deadline=None)
@given(models, mixtures(), methods)
# found by CI: at 64 tokens eager's attention peak is below the MLP's, which it has too
@example("llama-2-13b", Mixture(zero=3, lora=8, gc=True, attn="eager", seq_len=64, gpus=1, nodes=2), "analytic")
def test_gc_lora_and_kernel_never_cost_more(name, m, method):
    assert peak(name, m.with_(gc=True), method) <= peak(name, m.with_(gc=False), method) * tol(
        name, method, m.with_(gc=True), m.with_(gc=False))
    # LoRA cuts model states; its r-wide intermediates (fp32 at most), PEFT's fp32 copy of each
    # wrapped layer's input (fp32 adapters without DeepSpeed) and, where full fine-tuning keeps no
    # gradient or optimizer state on the GPU (offload), the adapters' own weights are all it can add
    spec = load_model(name)
    lora = m.with_(lora=64)
    per_token = sum(4 * (64 + lin.d_in) for lin in spec.linears)
    adapters = spec.layers * m.tokens * per_token + 4 * trainable_params(spec, lora)
    assert peak(name, lora, method) <= peak(name, m.with_(lora=0), method) * tol(name, method, lora, m.with_(lora=0)) \
        + adapters
    # Below ~43 tokens eager's s x s scores are smaller than the output + log-sum-exp SDPA keeps
    # (measured, tests/estimate/test_activations_measured.py); fine-tuning runs far longer.
    if m.seq_len >= 64:
        assert peak(name, m.with_(attn="sdpa"), method) <= peak(name, m.with_(attn="eager"), method) * tol(
            name, method, m.with_(attn="sdpa"), m.with_(attn="eager"))


@settings(max_examples=300, deadline=None)
@given(models, mixtures(), methods, st.integers(1, 1024), st.integers(1, 4))
def test_longer_and_bigger_never_cost_less(name, m, method, more_tokens, more_rows):
    longer = m.with_(seq_len=min(m.seq_len + more_tokens, load_model(name).max_positions))
    bigger = m.with_(micro_batch=m.micro_batch + more_rows)
    assert peak(name, longer, method) * tol(name, method, longer, m) >= peak(name, m, method)
    assert peak(name, bigger, method) * tol(name, method, bigger, m) >= peak(name, m, method)
