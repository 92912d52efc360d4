"""The engines behind one interface: which one a mixture runs under, what each hands HF Trainer,
and the twin's attribution read from them."""

import pytest

from ftmix.engines import FSDP2, DeepSpeed, TorchDDP, engine_for, twin_rules
from ftmix.measure import twin
from ftmix.mixture import Mixture
from ftmix.mixture.engine import deepspeed_config


@pytest.mark.parametrize("m,user,expected", [
    (Mixture(zero=0, offload="none"), None, TorchDDP),
    (Mixture(zero=1, offload="none"), None, DeepSpeed),
    (Mixture(zero=3, offload="all"), None, DeepSpeed),
    (Mixture(zero=0, offload="none"), {"zero_optimization": {"stage": 0}}, DeepSpeed),  # the user's JSON
])
def test_the_mixture_picks_its_engine(m, user, expected):
    engine = engine_for(m, user)
    assert type(engine) is expected


def test_what_each_engine_hands_the_trainer():
    m = Mixture(zero=2, offload="optimizer", lora=8)
    ds = DeepSpeed()
    config = ds.config(m, 12_345)
    assert config == deepspeed_config(m, 12_345) and ds.offloads(config)
    assert ds.config(m, 12_345, {"zero_optimization": {"stage": 1}}) == {"zero_optimization": {"stage": 1}}
    assert ds.trainer_args(config, "cpu", 2) == {"deepspeed": config, "ddp_backend": "gloo"}
    plain = TorchDDP()
    assert plain.config(m.with_(zero=0, offload="none"), 12_345) is None and not plain.offloads(None)
    assert plain.trainer_args(None, "cuda", 8) == {"deepspeed": None, "ddp_backend": None}
    assert plain.trainer_args(None, "cpu", 2)["ddp_backend"] == "gloo"
    assert not ds.offloads(deepspeed_config(m.with_(offload="none"), 1))


def test_the_twin_attributes_through_the_engines_rules():
    rules = twin_rules()
    assert rules == (DeepSpeed.twin, FSDP2.twin, TorchDDP.twin)
    # DeepSpeed's Adam states before its other buffers, FSDP2's reduce buckets; gathered parameters
    assert twin._SITE_ROLES[:2] == (("deepspeed/ops/adam", "optimizer state"), ("deepspeed/", "deepspeed buffer"))
    assert ("torch/distributed/fsdp/_fsdp_collectives.py:foreach_reduce", "bucket") in twin._SITE_ROLES
    assert "accelerate/accelerator.py:prepare_model" in twin._BUCKET_FUNCTIONS  # torch DDP's reducer
    assert DeepSpeed.twin.attribute_role("single_partition_of_fp32_groups") == "fp32 master"
    assert DeepSpeed.twin.attribute_role("ipg_buffer") == "bucket"
    assert DeepSpeed.twin.attribute_role("averaged_gradients") == "gradient"
    assert DeepSpeed.twin.attribute_role("bit16_groups_flat") == "parameter"
    assert "param_groups_fp16_flat_cpu_memory" in twin._HOST_ATTRIBUTES
