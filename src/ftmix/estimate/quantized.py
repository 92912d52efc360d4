"""Bytes of quantized base weights and of 8-bit optimizer states (bitsandbytes 0.50.2, PEFT 0.21,
transformers 5.24), counted from the libraries' own code and checked by the device-memory twin.

4-bit (``bitsandbytes.functional.quantize_4bit``, block 64): the packed codes, two per byte
(n / 2 bytes, ``Params4bit`` of dtype uint8), a 16-value fp32 code book per tensor
(``get_4bit_type``), and one fp32 absmax per 64-element block (n / 16 bytes). Double quantization
(``compress_statistics``): the absmax themselves quantized by ``quantize_blockwise`` to uint8
(n / 64 bytes) in blocks of 256 with their own fp32 absmax, a 256-value fp32 code book and an fp32
offset per tensor: about 4.13 bits per weight instead of 4.5.

8-bit (``Int8Params``, LLM.int8): one int8 per weight plus an fp32 scale per output row (``SCB``).

transformers' ``Bnb4BitHfQuantizer``/``Bnb8BitHfQuantizer`` replace every ``nn.Linear`` but the
output head (``get_keys_to_not_convert``); embeddings, norms and the head stay in their 16 bits
until PEFT's ``prepare_model_for_kbit_training`` casts every 16-bit parameter to fp32.

GPTQ/AWQ checkpoints (``quantization_config`` of a config.json): ``bits`` per weight packed in
int32, per group of ``group_size`` input rows a 16-bit scale and packed zero point (auto-gptq's
``QuantLinear``: ``qweight``, ``scales``, ``qzeros``, ``g_idx``; AutoAWQ's ``WQLinear_GEMM``:
``qweight``, ``scales``, ``qzeros``).

8-bit optimizers (``bitsandbytes.optim.optimizer.Optimizer2State.init_state``): two uint8 states
per element and an fp32 absmax per 256-element block of each, for tensors of at least
``min_8bit_size`` = 4096 elements; smaller tensors keep two fp32 states. Paged optimizers
(``get_state_buffer``) put states of 1e5 elements or more in CUDA unified memory: on the device
until the driver evicts them under pressure, so ftmix counts them there (torch's allocator does
not see them; nvidia-smi does).
"""

from __future__ import annotations

import math

from ftmix.mixture import Mixture

BNB_4BIT_BLOCK = 64  # ``Linear4bit``/``Params4bit`` blocksize
BNB_NESTED_BLOCK = 256  # double quantization's blocks of absmax (``quantize_blockwise``)
BNB_4BIT_CODE_BYTES = 16 * 4  # the NF4/FP4 code book, fp32
BNB_DYNAMIC_CODE_BYTES = 256 * 4  # the absmax's 8-bit dynamic code book, fp32
OPTIM_8BIT_MIN = 4096  # ``min_8bit_size``
OPTIM_8BIT_BLOCK = 256


def quantized_bytes(d_in: int, d_out: int, m: Mixture, prequantized: tuple | None = None) -> float:
    """Bytes of one quantized linear weight of ``d_out`` x ``d_in``; ``prequantized``: a GPTQ/AWQ
    checkpoint's (method, bits, group size) (``ModelSpec.quantization``)."""
    n = d_in * d_out
    if prequantized:
        _, bits, group = prequantized
        group = d_in if not group or group <= 0 else group
        groups = math.ceil(d_in / group)
        return n * bits / 8 + groups * d_out * (2 + bits / 8) + 4 * d_in  # codes, scales + zeros, g_idx (int32)
    if m.bits == 8:
        return n + 4 * d_out
    blocks = math.ceil(n / BNB_4BIT_BLOCK)
    packed = math.ceil(n / 2) + BNB_4BIT_CODE_BYTES
    if not m.double_quant:
        return packed + 4 * blocks
    return packed + blocks + 4 * math.ceil(blocks / BNB_NESTED_BLOCK) + BNB_DYNAMIC_CODE_BYTES + 4


def dequantized_copy_bytes(d_in: int, d_out: int, m: Mixture) -> float:
    """The transient full-width weight a quantized matmul makes (16-bit, the compute dtype), with
    the fp32 absmax double quantization expands first (``_gemm_4bit_default_impl``,
    ``MatMul4Bit.backward``: ``F.dequantize_4bit(B, ctx.state).to(grad_output.dtype)``)."""
    n = d_in * d_out
    copy = 2 * n
    if m.bits == 4 and m.double_quant:
        copy += 4 * math.ceil(n / BNB_4BIT_BLOCK)
    return copy


def optimizer_bytes(sizes: list[int], m: Mixture) -> float:
    """Bytes of AdamW's two moments for trainable tensors of ``sizes`` elements (no master copy)."""
    if m.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        return 8.0 * sum(sizes)
    total = 0.0
    for n in sizes:
        if n < OPTIM_8BIT_MIN:
            total += 8 * n
        else:
            total += 2 * n + 2 * 4 * math.ceil(n / OPTIM_8BIT_BLOCK)
    return total


def optimizer_bytes_per_element(m: Mixture) -> float:
    """Moments' bytes per element of a large flat tensor (a ZeRO partition)."""
    return 8.0 if m.optimizer in ("adamw_torch", "paged_adamw_32bit") else 2 + 8 / OPTIM_8BIT_BLOCK
