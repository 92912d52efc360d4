"""``ftmix calibrate-gpu``'s sweep on the local device (any torch device: a GPU, or this CPU in the
tests): a transformer layer's GEMMs at several token counts, SDPA (and FlashAttention-2 where
installed) at several lengths, a large element-wise kernel, pinned host-device copies, and an
all-reduce across the local GPUs. Each timing is the fastest of five samples after a warm-up,
each sample long enough to dwarf the timer, with the device synchronised; the sweep stops adding shapes once its time budget is spent."""

from __future__ import annotations

import importlib.util
import platform
import time

import torch
import torch.nn.functional as F
from ftmix.measure.host_issue import step_ops_and_seconds
from ftmix.mixture import mixture_from_flags

REPEATS = 5
MIN_SAMPLE_S = 0.02


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    """Seconds per call: the fastest of REPEATS samples, each of as many calls as fill MIN_SAMPLE_S
    (short kernels are timed over many launches; the fastest sample is the least disturbed one)."""
    fn()  # warm-up (allocations, kernel selection)
    _sync(device)
    calls, samples = 1, []
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_SAMPLE_S or calls >= 1 << 16:
            break
        calls *= 2
    samples.append(elapsed / calls)
    for _ in range(REPEATS - 1):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) / calls)
    return min(samples)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sweep(device: str = "cuda", hidden: int = 4096, tokens: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096),
          seq_lens: tuple[int, ...] = (512, 1024, 2048), budget_s: float = 60.0, progress=None) -> dict:
    """Measurements for ``plan.gpu_fit.fit``; ``progress(what)`` is told each step."""
    start, dtype = time.perf_counter(), torch.bfloat16
    out = {"device": device_name(device), "hidden": hidden, "gemm": [], "attention": [], "skipped": []}

    def spent() -> bool:
        return time.perf_counter() - start > budget_s

    inter = hidden * 11 // 4  # a Llama layer's MLP width
    weights = [torch.randn(o, i, device=device, dtype=dtype) for i, o in
               ((hidden, hidden), (hidden, inter), (inter, hidden))]
    for t in tokens:
        if spent():
            out["skipped"].append(f"GEMMs at {t} tokens and more: the {budget_s:g} s budget was spent")
            break
        xs = {w.shape[1]: torch.randn(t, w.shape[1], device=device, dtype=dtype) for w in weights}
        seconds = _timed(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], device)
        flops = sum(2 * t * w.shape[0] * w.shape[1] for w in weights)
        out["gemm"].append({"tokens": t, "seconds": seconds, "flops_per_s": flops / seconds})
        if progress:
            progress(f"GEMMs at {t} tokens")
    heads, head_dim = max(1, hidden // 128), min(128, hidden)
    kernels = ["sdpa"] + (["fa2"] if device.startswith("cuda") and importlib.util.find_spec("flash_attn") else [])
    for kernel in kernels:
        for s in seq_lens:
            if spent():
                out["skipped"].append(f"{kernel} at s={s} and more: the budget was spent")
                break
            q, k, v = (torch.randn(1, heads, s, head_dim, device=device, dtype=dtype) for _ in range(3))
            if kernel == "fa2":
                from flash_attn import flash_attn_func  # lazy: only where FlashAttention-2 is installed

                qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                seconds = _timed(lambda: flash_attn_func(qt, kt, vt, causal=True), device)
            else:
                seconds = _timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device)
            flops = 4 * heads * s * s * head_dim / 2  # causal: half the products
            out["attention"].append({"kernel": kernel, "seq_len": s, "tokens": s, "seconds": seconds,
                                     "flops_per_s": flops / seconds})
            if progress:
                progress(f"{kernel} at s={s}")
    if not spent():
        out["host_seconds_per_op"] = host_seconds_per_op(device)
        if progress:
            progress("host issue time per operation")
    else:
        out["skipped"].append("host issue time: the budget was spent")
    big = torch.randn(64 * 2**20 // 2, device=device, dtype=dtype)  # 64 MiB
    seconds = _timed(lambda: big.mul(1.0001), device)
    out["memory_bytes_per_s"] = 2 * big.numel() * big.element_size() / seconds  # read + write
    if progress:
        progress("element-wise bandwidth")
    if device.startswith("cuda"):
        host = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
        seconds = _timed(lambda: host.to(device, non_blocking=True), device)
        out["host_copy_bytes_per_s"] = host.numel() / seconds
    else:
        out["skipped"].append("host-device copies: the device is the host")
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if gpus >= 2:
        # one process drives every local GPU: NCCL's all-reduce over a tensor on each (nccl-tests' way
        # of counting: bus bandwidth = 2 (n - 1) / n x bytes / time)
        tensors = [torch.ones(64 * 2**20, device=f"cuda:{i}", dtype=dtype) for i in range(gpus)]

        def allreduce():
            torch.cuda.nccl.all_reduce(tensors)
            for i in range(gpus):
                torch.cuda.synchronize(i)

        seconds = _timed(allreduce, device)
        size = tensors[0].numel() * tensors[0].element_size()
        out["allreduce_busbw"] = 2 * (gpus - 1) / gpus * size / seconds
        out["gpus"] = gpus
        if progress:
            progress(f"all-reduce across {gpus} GPUs")
    else:
        out["skipped"].append("collectives: fewer than two GPUs here")
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def host_seconds_per_op(device: str, layers: int = 8) -> float:
    """The host's time to issue one operation of a real training step (HF Llama + PEFT LoRA, forward,
    backward, foreach AdamW) at tiny width, where the device's kernels take next to nothing: the
    step's time over the operations it dispatched (benchmarks/host_overhead.py's measurement)."""
    config = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
                  tie_word_embeddings=False)
    m = mixture_from_flags(None, zero=0, lora=16, seq_len=16, micro_batch=1, attn="sdpa", precision="bf16-true")
    ops, seconds = step_ops_and_seconds(config, m, device, _timed)
    return seconds / ops
