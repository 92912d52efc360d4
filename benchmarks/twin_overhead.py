"""What the device-memory twin costs: the same `ftmix train` run with the twin on and off, each in
its own process, on a SmolLM2-135M-shaped model cut to a few layers (random init); prints the
median step time of both and their ratio, and checks that the losses are the same. Writes
benchmarks/results/twin_overhead.json.

    .venv/bin/python benchmarks/twin_overhead.py [--steps 8] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIXTURES = {"ZeRO-0 + LoRA r64 (bf16)": ["--zero", "0"],
            "ZeRO-2 + offload opt + LoRA r64 (bf16)": ["--zero", "2", "--offload", "optimizer"],
            "ZeRO-0 + full FT (bf16)": ["--zero", "0", "--lora", "0"]}


def run(args: list[str], twin: bool, steps: int, layers: int, out: Path) -> dict:
    overrides = json.dumps({"num_hidden_layers": layers})
    cmd = [sys.executable, "-m", "ftmix", "train", "--random-init", f"model_overrides={overrides}", "max_rows=48",
           "--seq-len", "256", "effective_batch=1", "--max-steps", str(steps), "--output-dir", str(out), "--precision", "bf16",
           f"twin={'true' if twin else 'false'}", "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    record = json.loads((out / "run.json").read_text())
    meas = record["measured"]
    return {"median_step_s": meas["median_step_s"], "losses": [round(x, 4) for _, x in meas["loss_curve"]],
            "twin_device_peak_gb": (meas.get("twin") or {}).get("device_peak_gb")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in MIXTURES.items():
            on = run(flags, True, args.steps, args.layers, Path(tmp) / "on")
            off = run(flags, False, args.steps, args.layers, Path(tmp) / "off")
            rows.append({"mixture": name, "twin_on_s": on["median_step_s"], "twin_off_s": off["median_step_s"],
                         "ratio": round(on["median_step_s"] / off["median_step_s"], 3),
                         "same_losses": on["losses"] == off["losses"], "twin_device_peak_gb": on["twin_device_peak_gb"]})
            print(f"{name}: twin on {on['median_step_s']:.3f} s/step, off {off['median_step_s']:.3f} s/step, "
                  f"x{rows[-1]['ratio']}, same losses: {rows[-1]['same_losses']}")
    result = {"model": f"smollm2-135m shape, {args.layers} layers, random init, s = 256, b = 1, CPU (2 cores)",
              "steps": args.steps, "rows": rows}
    out = Path(__file__).resolve().parent / "results" / "twin_overhead.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
