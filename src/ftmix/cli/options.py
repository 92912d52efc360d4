"""Mixture flags shared by estimate, plan, matrix and train: declared once, as Annotated types.

Every flag defaults to None ("not given"): estimate and train fill the study's defaults, plan
searches the dimensions left open.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Zero = Annotated[Optional[int], typer.Option("--zero", metavar="0-3", help="DeepSpeed ZeRO stage 0-3 (0 = no DeepSpeed: one GPU, or torch DDP over several). Default 2.")]
Offload = Annotated[Optional[str], typer.Option("--offload", metavar="none|optimizer|all", help="What DeepSpeed moves to CPU RAM: nothing, the optimizer states, or the optimizer states and parameters (stage 3). Default optimizer with a ZeRO stage, none without.")]
Lora = Annotated[Optional[int], typer.Option("--lora", metavar="RANK", help="LoRA rank; 0 = full fine-tuning. Default 64.")]
LoraAlpha = Annotated[Optional[float], typer.Option("--lora-alpha", metavar="ALPHA", help="LoRA alpha (scaling = alpha / rank). Default 32.")]
LoraTargets = Annotated[Optional[str], typer.Option("--lora-targets", metavar="NAMES", help="Comma list of the model's linear module names, or all-linear. Default q_proj,v_proj (a fused qkv where the model has one).")]
Gc = Annotated[Optional[bool], typer.Option("--gc/--no-gc", help="Gradient checkpointing (non-reentrant). Default off.")]
Attn = Annotated[Optional[str], typer.Option("--attn", metavar="eager|sdpa|fa2", help="Attention kernel: eager (plain PyTorch, stores the s x s scores), sdpa (PyTorch scaled_dot_product_attention), fa2 (FlashAttention-2, Ampere or newer). Default fa2 where the GPU supports it, else sdpa.")]
Precision = Annotated[Optional[str], typer.Option("--precision", metavar="NAME", help="bf16 | fp16 (mixed: fp32 master weights) | bf16-true | fp16-true (pure 16-bit, --zero 0) | fp32. Default bf16 where the GPU supports it, else fp16; train on CPU: bf16 (fp32 with --no-twin).")]
MicroBatch = Annotated[Optional[int], typer.Option("--micro-batch", metavar="N", help="Samples per GPU per micro step. Default 1.")]
SeqLen = Annotated[Optional[int], typer.Option("--seq-len", metavar="TOKENS", help="Sequence length in tokens. Default 256.")]
Gpus = Annotated[Optional[int], typer.Option("--gpus", metavar="N", help="GPUs per node. Default 1.")]
Nodes = Annotated[Optional[int], typer.Option("--nodes", metavar="N", help="Nodes. Default 1.")]
Packing = Annotated[Optional[bool], typer.Option("--packing/--padding", help="Packed rows (no padding mask) or rows padded to --seq-len. Default padding.")]
GradAccum = Annotated[Optional[int], typer.Option("--grad-accum", metavar="N", help="Micro steps per optimizer step. 1 on one GPU without DeepSpeed: the gradients are set to None after each step, so the forward runs without them (full fine-tuning peaks lower). Default: unknown, counted as kept between micro steps.")]
DeepSpeed = Annotated[Optional[str], typer.Option("--deepspeed", metavar="FILE", help="Your DeepSpeed JSON: its stage, offload, precision and bucket sizes (HF \"auto\" values too) drive the estimate.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Model = Annotated[str, typer.Option("--model", metavar="NAME|PATH", help="Catalog name or its hub id (see `ftmix models`), or a config.json (or its folder).")]
Gpu = Annotated[Optional[str], typer.Option("--gpu", metavar="NAME", help="Catalog GPU (see `ftmix gpus`).")]
GPU_DEFAULT = "a100-80gb"  # plan and matrix need a GPU; estimate gives a verdict only when one is named
