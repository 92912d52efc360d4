"""Trainable counts equal what PEFT itself reports for the same model and config (meta device)."""

import json
from importlib import resources

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from ftmix.catalog import load_model
from ftmix.estimate.states import trainable_params
from ftmix.mixture import Mixture, resolve_targets


def _meta_model(name, layers=None):
    entry = json.loads(resources.files("ftmix.catalog").joinpath(f"data/models/{name}.json").read_text())
    cfg = dict(entry["config"])
    if layers:
        cfg["num_hidden_layers"] = layers
    cfg = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def _peft_trainable(model, spec, m):
    targets = "all-linear" if m.lora_targets == "all-linear" else list(resolve_targets(m, spec))
    peft_model = get_peft_model(model, LoraConfig(r=m.lora, lora_alpha=m.lora_alpha, target_modules=targets))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    return trainable


def test_study_figure_llama_2_7b():
    assert trainable_params(load_model("llama-2-7b"), Mixture(lora=64)) == 33_554_432  # "33.6M"


@pytest.mark.parametrize("name,targets,layers", [
    ("llama-2-7b", "q_proj,v_proj", None),
    ("llama-2-7b", "all-linear", None),
    ("llama-2-7b", "q_proj,k_proj,v_proj,o_proj", None),
    ("llama-2-70b", "q_proj,v_proj", 2),
    ("qwen2.5-7b", "all-linear", 2),
    ("phi-3-mini", "q_proj,v_proj", 2),  # falls back to PEFT's qkv_proj
    ("phi-2", "q_proj,v_proj,fc1,fc2", 2),
])
def test_matches_peft(name, targets, layers):
    spec = load_model(name)
    m = Mixture(lora=64, lora_targets=targets)
    peft_count = _peft_trainable(_meta_model(name, layers), spec, m)
    ours = trainable_params(spec, m)
    if layers:
        ours = ours // spec.layers * layers
    assert ours == peft_count


def test_llama_2_70b_about_131m():
    count = trainable_params(load_model("llama-2-70b"), Mixture(lora=64))
    assert count == 131_072_000 and 0.0018 < count / load_model("llama-2-70b").total_params < 0.0020
