"""litgpt's QLoRA step, simulated at full size under fake tensors and counted by the device-memory
twin, with bitsandbytes' current ``MatMul4Bit`` and with the one line the resource tables' version
(0.41.1) differed by: it kept each quantized layer's input for the backward (``ctx.tensors = (A, B)``;
0.50.2 keeps ``(None, B)``). The measured reason why ftmix (HF transformers + PEFT + bitsandbytes
0.50.2) and litgpt's published QLoRA rows differ (issue 20).

The step is ``benchmarks/litgpt_twin.py``'s (litgpt's own LoRA GPT in bf16-true, ``lm_head_chunk_size=128``,
chunked cross-entropy, the loop's logits kept), with every ``nn.Linear`` turned into bitsandbytes'
4-bit linear as Lightning's ``BitsandbytesPrecision`` does (the head's too), the default dtype bf16
during the forward (its ``forward_context``), bitsandbytes' PagedAdamW (litgpt's
``instantiate_bnb_optimizer``). lit-gpt at the resource tables' commit (Oct 2023) had no
``StableEmbedding``; it is left out. Rows: the resource tables' Llama 2 QLoRA rows (Phi-1.5's
litgpt config does not build under fake tensors here).

    PYTHONPATH=.litgpt .venv/bin/python benchmarks/litgpt_qlora_twin.py   # see litgpt_twin.py to install litgpt

Writes benchmarks/results/litgpt_qlora_twin.json.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
ROWS = ("litgpt-rt-12", "litgpt-rt-13", "litgpt-rt-17", "litgpt-rt-18")


def quantize_all_linears(model, scheme: str):
    """Lightning's conversion: every ``nn.Linear`` a bitsandbytes 4-bit linear computing in bf16,
    quantized by bitsandbytes' ``quantize_4bit`` (fake-tensor safe, as ``model.build.quantize_in_place``)."""
    import bitsandbytes as bnb
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    from ftmix.mixture import Mixture
    from ftmix.model.build import quantization_config

    m = Mixture(quantize=scheme)
    old = {n: mod for n, mod in model.named_modules() if type(mod) is torch.nn.Linear}
    with unset_fake_temporarily():
        bnb.functional.name2qmap.setdefault("dynamic", bnb.functional.create_dynamic_map())
        model = replace_with_bnb_linear(model, [], quantization_config(m))
    for name, linear in old.items():
        new = model.get_submodule(name)
        packed, state = bnb.functional.quantize_4bit(linear.weight.data.contiguous(), blocksize=64,
                                                     compress_statistics=m.double_quant, quant_type="nf4",
                                                     quant_storage=torch.uint8)
        weight = torch.nn.Parameter(packed, requires_grad=False)
        weight.quant_state = state
        new.weight = weight
    return model


@contextlib.contextmanager
def bitsandbytes_0_41():
    """``MatMul4Bit.forward`` keeping its input, as bitsandbytes did up to the tables' 0.41.1."""
    from bitsandbytes.autograd import _functions

    original = _functions.MatMul4Bit.forward

    def forward(ctx, A, B, out=None, bias=None, quant_state=None):
        result = original(ctx, A, B, out, bias, quant_state)
        if any(ctx.needs_input_grad[:2]):
            ctx.tensors = (A, B)
        return result

    _functions.MatMul4Bit.forward = staticmethod(forward)
    try:
        yield
    finally:
        _functions.MatMul4Bit.forward = original


def simulate(row: dict) -> float:
    import torch
    from litgpt.lora import GPT, mark_only_lora_as_trainable
    from litgpt.utils import chunked_cross_entropy

    import litgpt_twin
    from framework_twin import micro_steps, twin_steps
    from ftmix.mixture import Mixture
    from ftmix.model.build import optimizer_for_mixture
    from ftmix.study.published import _quantize

    config = litgpt_twin.litgpt_config(dict(row, method="lora"))
    scheme, seq, batch = _quantize(row), row["seq_len"], row["micro_batch"]

    def make():
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # Fabric's init_module under bf16-true
        try:
            model = GPT(config)
        finally:
            torch.set_default_dtype(default)
        model = quantize_all_linears(model, scheme)
        model.max_seq_length = seq
        mark_only_lora_as_trainable(model)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, optimizer_for_mixture(trainable, Mixture(optimizer="paged_adamw_32bit"), lr=2e-4)

    def forward_loss(model, loop):
        ids = torch.zeros(batch, seq, dtype=torch.long)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # BitsandbytesPrecision.forward_context
        try:
            loop["logits"] = model(ids, lm_head_chunk_size=128)
        finally:
            torch.set_default_dtype(default)
        loop["logits"][-1] = loop["logits"][-1][..., :-1, :]
        return chunked_cross_entropy(loop["logits"], ids[..., 1:])

    # built in 16 bits, then quantized: litgpt loads the checkpoint into the quantized layers
    return twin_steps(make, forward_loss, micro_steps(row), reset_after_make=True)["device_peak_bytes"] / 1e9


def main() -> None:
    published = {r["id"]: r for r in json.loads((ROOT / "benchmarks/results/published.json").read_text())["rows"]}
    rows = {json.loads(line)["id"]: json.loads(line)
            for line in (ROOT / "benchmarks/data/published-rows.jsonl").read_text().splitlines() if line}
    results = []
    for rid in ROWS:
        row, start = rows[rid], time.time()
        now = simulate(row)
        with bitsandbytes_0_41():
            old = simulate(row)
        measured = published[rid]["memory"]["measured_gb"]
        results.append({"id": rid, "model": row["model"], "seq_len": row["seq_len"], "measured_gb": measured,
                        "ftmix_gb": published[rid]["memory"]["predicted_gb"],
                        "litgpt_bnb_0_50_gb": round(now, 3), "litgpt_bnb_0_41_gb": round(old, 3),
                        "litgpt_bnb_0_50_error": round(now / measured - 1, 4),
                        "litgpt_bnb_0_41_error": round(old / measured - 1, 4),
                        "seconds": round(time.time() - start, 1)})
        print(json.dumps(results[-1]), flush=True)
    (ROOT / "benchmarks/results/litgpt_qlora_twin.json").write_text(json.dumps({"rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
