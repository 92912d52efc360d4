"""FSDP2 per-rank memory simulated with a fake process group (issue 10, data-parallel sharding).

Part 1, the check: tiny models, the simulated rank 0 against real gloo ranks under torchrun (the
device-memory twin of each), bytes apart. Part 2, full size: Llama-2-7B and Llama-2-70B over 8
ranks, simulated here, with the time, the host memory, and the analytic ZeRO-3 estimate beside
(FSDP2's FULL_SHARD shards as ZeRO-3 does; the bytes per parameter differ, see docs/estimate.md, "simulate").

    .venv/bin/python benchmarks/fsdp2_simulation.py [--out benchmarks/results] [--skip-70b]

Each case runs in its own process (peak RSS is the simulation's alone). Writes
benchmarks/results/fsdp2_simulation.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

CHECKS = [("llama", 3, 0, False, "bf16", 2, "sdpa"), ("llama", 3, 8, True, "bf16", 2, "sdpa"),
          ("qwen3", 2, 0, True, "bf16", 2, "sdpa"), ("mistral", 3, 0, False, "bf16-true", 2, "sdpa"),
          ("mixtral", 3, 8, False, "bf16", 2, "sdpa"), ("gemma2", 3, 0, True, "bf16", 2, "eager"),
          ("phi3", 3, 8, True, "bf16", 2, "eager"), ("llama", 3, 0, True, "bf16", 4, "sdpa"),
          ("llama", 2, 8, False, "bf16", 4, "sdpa")]
FULL = [("llama-2-7b", dict(lora=0, gc=True, seq_len=1024)), ("llama-2-7b", dict(lora=64, gc=False, seq_len=1024)),
        ("llama-2-70b", dict(lora=0, gc=True, seq_len=1024))]

ONE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from ftmix.catalog import load_model
from ftmix.estimate import estimate
from ftmix.estimate.sim_input import simulation_config
from ftmix.files import proc_bytes
from ftmix.measure.simulate import simulate
from ftmix.mixture import mixture_from_flags
name, case = sys.argv[1], json.loads(sys.argv[2])
m = mixture_from_flags(None, sharding="fsdp2", zero=3, offload="none", precision="bf16", attn="sdpa", micro_batch=1,
                       gpus=8, **case)
config, _ = simulation_config(name, m)
t0 = time.time()
sim = simulate(config, m, name)
seconds = time.time() - t0
zero3 = estimate(load_model(name), m.with_(sharding="deepspeed"))
print(json.dumps({"model": name, **case, "ranks": 8, "simulate_s": round(seconds, 1),
                  "peak_rss_gb": round(proc_bytes("/proc/self/status", "VmHWM") / 1e9, 3),
                  "fsdp2_peak_gb": round(sim.peak / 1e9, 3), "breakdown_gb": {k: round(v / 1e9, 3) for k, v in sim.breakdown.items()},
                  "peak_at": sim.notes[0], "deepspeed_zero3_analytic_gb": round(zero3.peak / 1e9, 3)}))
"""


def check_rows() -> list[dict]:
    from ftmix.measure.simulate import simulate
    from ftmix.mixture import mixture_from_flags
    from tests.measure.test_simulate import CONFIGS

    rows = []
    for arch, zero, lora, gc, precision, ranks, attn in CHECKS:
        m = mixture_from_flags(None, zero=zero, offload="none", lora=lora, gc=gc, attn=attn, precision=precision,
                               seq_len=128, micro_batch=1, gpus=ranks, sharding="fsdp2")
        label = m.label.replace("FSDP2 ", "")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "c.json").write_text(json.dumps(CONFIGS[arch]))
            Path(tmp, "m.json").write_text(json.dumps(dataclasses.asdict(m)))
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                   str(ranks), "-m", "ftmix.measure.fsdp", f"{tmp}/c.json", f"{tmp}/m.json", tmp],
                                  capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            if proc.returncode != 0:
                rows.append(dict(arch=arch, label=label, ranks=ranks, error=proc.stderr.strip().splitlines()[-1:]))
                continue
            real = [json.loads(Path(tmp, f"rank{r}.json").read_text())["device_peak_bytes"] for r in range(ranks)]
        try:
            sim = simulate(CONFIGS[arch], m, arch).peak
        except Exception as exc:  # noqa: BLE001 - reported as the row's outcome
            rows.append(dict(arch=arch, label=label, ranks=ranks, error=[str(exc)[:200]]))
            continue
        rows.append(dict(arch=arch, label=label, precision=precision, ranks=ranks, real_rank0_bytes=real[0], real_max_bytes=max(real),
                         simulated_bytes=int(sim), difference_bytes=int(sim) - real[0], error=round(sim / real[0] - 1, 6)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def full_rows(skip_70b: bool) -> list[dict]:
    rows = []
    for name, case in FULL:
        if skip_70b and "70b" in name:
            continue
        proc = subprocess.run([sys.executable, "-c", ONE, name, json.dumps(case)], capture_output=True, text=True,
                              timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src")))
        row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else \
            {"model": name, **case, "error": proc.stderr.strip().splitlines()[-1:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--skip-70b", action="store_true")
    args = ap.parse_args()
    checks, full = check_rows(), full_rows(args.skip_70b)
    out = Path(args.out)
    (out / "fsdp2_simulation.json").write_text(json.dumps({"checks": checks, "full_size": full}, indent=1) + "\n")
    lines = ["# FSDP2 per-rank memory, simulated with a fake process group", "",
             "Written by `benchmarks/fsdp2_simulation.py`. Tiny models (hidden 128, 2 layers, s = 128, b = 1): rank 0 "
             "simulated under fake tensors against real gloo ranks under torchrun, both counted by the device-memory "
             "twin.", "", "| model | mixture | ranks | real rank 0 (bytes) | real, largest rank | simulated | difference |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in checks:
        if "real_rank0_bytes" in r:
            lines.append(f"| {r['arch']} | {r['label']} ({r['precision']}) | {r['ranks']} | {r['real_rank0_bytes']:,} | "
                         f"{r['real_max_bytes']:,} | {r['simulated_bytes']:,} | {r['difference_bytes']:+,} B ({100 * r['error']:+.4f}%) |")
        else:
            lines.append(f"| {r['arch']} | {r['label']} | {r['ranks']} | error: {r['error']} | | | |")
    lines += ["", "Full size, 8 ranks, s = 1024, b = 1, mixed bf16, SDPA; simulated on 2 CPU cores:", "",
              "| model | mixture | FSDP2 rank 0 peak GB | DeepSpeed ZeRO-3 analytic GB | simulate s | peak RSS GB | peak at |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in full:
        what = ("full FT" if r.get("lora") == 0 else f"LoRA r{r.get('lora')}") + (" + GC" if r.get("gc") else "")
        if "error" in r:
            lines.append(f"| {r['model']} | {what} | error: {r['error']} | | | | |")
        else:
            lines.append(f"| {r['model']} | {what} | {r['fsdp2_peak_gb']} | {r['deepspeed_zero3_analytic_gb']} | "
                         f"{r['simulate_s']} | {r['peak_rss_gb']} | {r['peak_at'].removeprefix('peak at: ')} |")
    (out / "fsdp2_simulation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
