"""Every constant the memory model uses, with its source. Calibration overrides these, nothing else.

Bytes per element: 16-bit = 2, fp32 = 4. "Per token" means per (sequence position x batch row).
"""

GB = 1e9  # the study's unit

# --- optimizer (mixed-precision Adam; study section 4, Rajbhandari et al. 2020, ZeRO) ---
ADAM_K = 12  # fp32 master weights 4 + momentum 4 + variance 4 bytes per trainable parameter
ADAM_MOMENTS = 8  # momentum + variance, fp32
FP32 = 4
# The master-weight update needs the 16-bit gradient as fp32 (DeepSpeed's
# single_partition_of_fp32_groups[i].grad, stage_1_and_2.py; DeepSpeed's own estimator counts it as
# the "4_grads_32bit" of its 18 bytes): 4 bytes per trainable parameter of the rank's partition.
FP32_GRAD_PARTITION = 4

# --- CUDA runtime and allocator (shared field notes: "Not modelled by any simulation") ---
# CUDA context plus cuBLAS/cuDNN handles: 0.3-2 GB by driver and GPU; 0.5 GiB is typical for
# torch 2.x on A100/H100 with lazy module loading (CUDA_MODULE_LOADING=LAZY, torch's default).
CUDA_CONTEXT_BYTES = 0.5 * 2**30
# cuBLAS workspace: CUBLAS_WORKSPACE_CONFIG default :4096:8 plus :16:8 on Hopper, ~ 32 MiB.
CUBLAS_WORKSPACE_BYTES = 32 * 2**20
# Caching-allocator slack (reserved - allocated at the peak): 5-15% in practice for training
# (PyTorch CUDA caching allocator block rounding to 512 B / 2 MiB / 20 MiB segments). It comes from
# the allocations that churn every step (activations, buffers, temporaries), not from model states
# allocated once at start-up: ftmix applies 8% to that dynamic part.
ALLOCATOR_SLACK = 0.08
# With PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True the allocator grows one segment per stream
# in 2 MiB pages instead of carving fixed segments, which PyTorch's CUDA-semantics notes describe
# as avoiding most fragmentation: ftmix assumes a quarter of the slack remains. An assumption
# until a GPU run calibrates it (benchmarks/gpu_groundtruth.py records both counters).
EXPANDABLE_SLACK_FRACTION = 0.25
# NCCL communicator buffers per process group with >1 rank (NCCL_BUFFSIZE 4 MiB x channels).
NCCL_BUFFER_BYTES = 256 * 2**20
# Fit verdict: device total must stay under (1 - margin) of the GPU's memory. Our device total
# already holds context, workspaces and allocator slack, so the margin covers model error only
# (LLMem reports <= 3% error; Fujii et al. 2024 saw no OOM below 80% for an estimator without them).
SAFETY_MARGIN = 0.05

# --- LoRA (PEFT 0.21 defaults) ---
# PEFT creates adapters in fp32 (LoraLayer.update_layer keeps the base layer's dtype only with
# autocast_adapter_dtype=False); lora_dropout 0.0 is PEFT's default and ftmix's: no dropout masks.
LORA_PARAM_BYTES = 4

# --- CPU RAM for offload (DeepSpeed estimators use 1.5x "additional_buffer_factor") ---
CPU_BUFFER_FACTOR = 1.5
