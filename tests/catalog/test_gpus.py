import pytest

from ftmix.catalog import gpu_names, load_gpu, match_gpu
from ftmix.errors import FtmixError

REQUIRED = ["v100-16gb", "v100-32gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb", "l4-24gb",
            "a10g-24gb", "rtx4090-24gb", "t4-16gb"]


def test_required_gpus_present():
    assert set(REQUIRED) <= set(gpu_names())


@pytest.mark.parametrize("name", REQUIRED)
def test_fa2_and_bf16_only_on_ampere_or_newer(name):
    g = load_gpu(name)
    newer = g.architecture in ("ampere", "ada", "hopper")
    assert g.flash_attention_2 == newer and g.bf16 == newer


def test_capacities_are_binary():
    # "32 GB" V100 reports 32510 MiB; an 80 GB A100 exactly 80 GiB
    assert load_gpu("v100-32gb").memory_bytes == 32510 * 2**20
    assert load_gpu("a100-80gb").memory_bytes == 80 * 2**30
    assert load_gpu("H200-141GB").memory_gb > 150  # 143771 MiB = 150.8 GB (1e9)


def test_unknown_gpu():
    with pytest.raises(FtmixError, match="unknown GPU"):
        load_gpu("gtx-480")


@pytest.mark.parametrize("device,mib,expected", [
    ("NVIDIA H200", 143771, "h200-141gb"),
    ("NVIDIA H100 80GB HBM3", 81559, "h100-80gb"),
    ("NVIDIA A100-SXM4-80GB", 81920, "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", 40960, "a100-40gb"),
    ("Tesla V100-SXM2-32GB", 32510, "v100-32gb"),
    ("NVIDIA GeForce RTX 4090", 24564, "rtx4090-24gb"),
    ("NVIDIA A10G", 23028, "a10g-24gb"),
    ("NVIDIA L4", 23034, "l4-24gb"),
    ("NVIDIA L40S", 46068, "l40s-48gb"),
    ("NVIDIA L40", 46068, None),  # an L4 by name, not by memory
    ("NVIDIA B200", 183359, None),
])
def test_match_cuda_device(device, mib, expected):
    found = match_gpu(device, mib * 2**20)
    assert (found.name if found else None) == expected
