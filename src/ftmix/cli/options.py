"""Mixture flags shared by estimate, plan, matrix and train: declared once, as Annotated types.

Every flag defaults to None ("not given"): estimate and train fill the study's defaults, plan
searches the dimensions left open.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Zero = Annotated[Optional[int], typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3 (0 = plain data parallel). Default 2.")]
Offload = Annotated[Optional[str], typer.Option("--offload", help="none | optimizer | all (all = optimizer + parameters, stage 3). Default optimizer.")]
Lora = Annotated[Optional[int], typer.Option("--lora", help="LoRA rank; 0 = full fine-tuning. Default 64.")]
LoraAlpha = Annotated[Optional[float], typer.Option("--lora-alpha", help="LoRA alpha (scaling = alpha / rank). Default 32.")]
LoraTargets = Annotated[Optional[str], typer.Option("--lora-targets", help="Comma list of module names, or all-linear. Default q_proj,v_proj.")]
Gc = Annotated[Optional[bool], typer.Option("--gc/--no-gc", help="Gradient checkpointing (non-reentrant). Default off.")]
Attn = Annotated[Optional[str], typer.Option("--attn", help="eager | sdpa | fa2. Default fa2 where the GPU supports it, else sdpa.")]
Precision = Annotated[Optional[str], typer.Option("--precision", help="bf16 | fp16 (mixed: fp32 master weights) | bf16-true | fp16-true (pure 16-bit, --zero 0) | fp32. Default bf16 where supported, else fp16.")]
MicroBatch = Annotated[Optional[int], typer.Option("--micro-batch", help="Micro batch per GPU. Default 1.")]
SeqLen = Annotated[Optional[int], typer.Option("--seq-len", help="Sequence length in tokens. Default 256.")]
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="GPUs per node. Default 1.")]
Nodes = Annotated[Optional[int], typer.Option("--nodes", help="Nodes. Default 1.")]
Packing = Annotated[Optional[bool], typer.Option("--packing/--padding", help="Packed rows (no padding mask) or rows padded to --seq-len. Default padding.")]
DeepSpeed = Annotated[Optional[str], typer.Option("--deepspeed", help="Your DeepSpeed JSON: its stage, offload, precision and bucket sizes (HF \"auto\" values too) drive the estimate.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Model = Annotated[str, typer.Option("--model", help="Catalog name (see `ftmix models`), a config.json path or a hub id.")]
Gpu = Annotated[Optional[str], typer.Option("--gpu", help="Catalog GPU (see `ftmix gpus`).")]

