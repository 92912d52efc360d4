"""The GPU ground-truth script runs its whole grid on CPU with tiny shapes: same code path."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_grid_on_cpu(tmp_path):
    import gpu_groundtruth

    rows = gpu_groundtruth.main(["--device", "cpu", "--tiny", "--steps", "2", "--out", str(tmp_path)])
    assert len(rows) == len(gpu_groundtruth.grid()) == 20
    assert all(r["status"] == "ok" for r in rows)
    from ftmix.mixture import KEYS

    keys = set(KEYS)  # every declared mixture key, quantized ones included (issue 20)
    for r in rows:
        assert set(r["mixture"]) == keys
        # CPU figures are RSS: the high-water mark restarts from RSS at the reset, a little under "after build"
        assert r["max_allocated"] > 0.9 * r["memory_after_build"] > 0 and r["median_step_s"] > 0
        assert r["flops_per_step"] > 0 and r["achieved_tflops"] > 0 and r["tokens_per_s"] > 0
        assert r["trainable_params"] > 0
    full = [r for r in rows if r["mixture"]["lora"] == 0]
    assert {r["variant"] for r in full} == {"fp32-master+autocast", "pure-bf16"}
    lora_qv = next(r for r in rows if r["model"] == "llama-2-7b" and r["mixture"]["lora"] and not r["mixture"]["gc"])
    qwen = next(r for r in rows if r["model"] == "qwen2.5-7b")
    assert qwen["trainable_params"] > lora_qv["trainable_params"]  # all-linear wraps more layers
    lines = (tmp_path / "gpu_groundtruth_cpu-tiny.jsonl").read_text().splitlines()
    assert "environment" in json.loads(lines[0]) and len(lines) == 21
    table = (tmp_path / "gpu_groundtruth_cpu-tiny.md").read_text()
    assert table.count("\n| ") == 21 and "VmHWM" in table  # header + 20 rows
