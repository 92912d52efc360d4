"""Does ftmix train cost anything over a plain HF Trainer + PEFT script? Same mixture, same data,
same model shape (SmolLM2-135M, random init), each in its own process; prints the step-time ratio
(plain / ftmix, goal >= 1.0) and both peak memories. Writes benchmarks/results/train_overhead.json.

    .venv/bin/python benchmarks/train_overhead.py [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ, EFFECTIVE, RANK = 256, 8, 64

PLAIN = r'''
import json, sys, time, statistics
import torch, transformers
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments, TrainerCallback, default_data_collator
from datasets import Dataset
from ftmix.job.data import load_records, tokenize, train_tokenizer
from ftmix.train.measure import reset_cpu_peak, cpu_peak_bytes
steps, out = int(sys.argv[1]), sys.argv[2]
transformers.set_seed(42)
rows = load_records("builtin")
tok = train_tokenizer(rows, vocab_size=1024)
seqs, _ = tokenize(rows, tok, %(seq)d, "Summarize the dialogue.\n{dialogue}\nSummary: ")
cfg = json.loads(open(%(cfg)r).read())["config"]
cfg = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(r=%(rank)d, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
class T(TrainerCallback):
    times = []
    def on_train_begin(self, *a, **k): reset_cpu_peak()
    def on_step_begin(self, *a, **k): self.t = time.perf_counter()
    def on_step_end(self, *a, **k): self.times.append(time.perf_counter() - self.t)
args = TrainingArguments(output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=%(eff)d,
    learning_rate=4e-4, adam_beta1=0.9, adam_beta2=0.99, lr_scheduler_type="linear", max_steps=steps,
    logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, optim="adamw_torch",
    remove_unused_columns=False, seed=42, data_seed=42)
cb = T()
Trainer(model=model, args=args, train_dataset=Dataset.from_list(seqs), data_collator=default_data_collator, callbacks=[cb]).train()
print(json.dumps({"median_step_s": statistics.median(cb.times[1:]), "peak_cpu_hwm_gb": cpu_peak_bytes() / 1e9}))
'''


def run_plain(steps: int, tmp: Path) -> dict:
    import ftmix.catalog

    cfg = Path(ftmix.catalog.__file__).parent / "data/models/smollm2-135m.json"
    script = tmp / "plain.py"
    script.write_text(PLAIN % dict(seq=SEQ, cfg=str(cfg), rank=RANK, eff=EFFECTIVE))
    proc = subprocess.run([sys.executable, str(script), str(steps), str(tmp / "plain")], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_ftmix(steps: int, tmp: Path) -> dict:
    out = tmp / "ftmix"
    args = [sys.executable, "-m", "ftmix", "train", "model=smollm2-135m", "random_init=true", "zero=0", f"lora={RANK}",
            f"seq_len={SEQ}", f"effective_batch={EFFECTIVE}", f"max_steps={steps}", f"output_dir={out}", "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    record = json.loads((out / "run.json").read_text())
    return {"median_step_s": record["measured"]["median_step_s"], "peak_cpu_hwm_gb": record["measured"]["peak_cpu_hwm_gb"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
            plain.append(run_plain(args.steps, Path(tmp)))
            ours.append(run_ftmix(args.steps, Path(tmp)))
    p = statistics.median(r["median_step_s"] for r in plain)
    f = statistics.median(r["median_step_s"] for r in ours)
    result = {
        "mixture": f"DDP (HF Trainer) + LoRA r{RANK} q,v + SDPA, fp32 on CPU", "model": "smollm2-135m shape, random init",
        "seq_len": SEQ, "effective_batch": EFFECTIVE, "steps": args.steps, "repeats": args.repeats,
        "plain_median_step_s": round(p, 4), "ftmix_median_step_s": round(f, 4),
        "step_time_ratio_plain_over_ftmix": round(p / f, 3), "goal": ">= 1.0 (no overhead)",
        "plain_peak_cpu_gb": round(max(r["peak_cpu_hwm_gb"] for r in plain), 3),
        "ftmix_peak_cpu_gb": round(max(r["peak_cpu_hwm_gb"] for r in ours), 3),
        "runs": {"plain": plain, "ftmix": ours}, "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    (Path(__file__).parent / "results" / "train_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
