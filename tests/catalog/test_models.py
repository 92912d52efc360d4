"""Parameter counts come from shapes; they must equal what transformers builds (meta device)."""

import json

import pytest
import torch
import transformers

from ftmix.catalog import load_model, model_names, spec_from_hf_config
from ftmix.catalog.models import parse_size
from ftmix.errors import FtmixError

# Published totals (model cards / HF safetensors metadata).
PUBLISHED = {"llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-3-8b": 8_030_261_248,
             "mistral-7b": 7_241_732_096, "qwen2.5-7b": 7_615_616_512, "phi-2": 2_779_683_840,
             "phi-3-mini": 3_821_079_552, "smollm2-135m": 134_515_008}


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_published_totals(name, count):
    assert load_model(name).total_params == count


SMALL = [n for n in model_names() if n not in ("llama-2-70b", "llama-3-70b", "falcon-180b")]


@pytest.mark.parametrize("name", SMALL)
def test_counts_match_transformers_on_meta_device(name):
    spec = load_model(name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(_hf_config(name))
    assert spec.total_params == sum(p.numel() for p in model.parameters())  # tied weights counted once
    layer = model.model.layers[0]
    assert spec.layer_params == sum(p.numel() for p in layer.parameters())
    linears = {n.split(".")[-1] for n, mod in layer.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert linears == set(spec.linear_names)


@pytest.mark.parametrize("name", ["llama-2-70b", "llama-3-70b", "falcon-180b"])  # 2 layers keep it quick
def test_large_models_per_layer(name):
    spec = load_model(name)
    cfg = _hf_config(name, num_hidden_layers=2)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    counted = sum(p.numel() for p in model.parameters())
    two_layer = spec.total_params - (spec.layers - 2) * spec.layer_params
    assert two_layer == counted


def _hf_config(name, **overrides):
    from importlib import resources

    entry = json.loads(resources.files("ftmix.catalog").joinpath(f"data/models/{name}.json").read_text())
    cfg = dict(entry["config"], **overrides)
    return transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def test_any_config_json_path(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load_model(str(tmp_path))
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    assert spec.kv_heads == 2 and spec.max_positions == 512 and spec.nominal_params is None


def test_nominal_sizes():
    assert load_model("llama-2-7b").nominal_params == 7e9
    assert load_model("falcon-180b").nominal_params == 180e9
    assert parse_size("135M") == 135e6
    with pytest.raises(FtmixError):
        parse_size("seven")


@pytest.mark.parametrize("bad", [{"hidden_size": 0}, {"num_attention_heads": 3}, {"vocab_size": "x"}])
def test_bad_configs_raise(bad):
    cfg = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 1000}
    cfg.update(bad)
    with pytest.raises(FtmixError):
        spec_from_hf_config(cfg)


def test_unknown_model_offline():
    with pytest.raises(FtmixError, match="unknown model"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(FtmixError, match="unknown model"):
        load_model("gpt-17")
