"""ftmix's predictions against every published measurement it can represent.

Reads ``benchmarks/data/published-rows.jsonl`` (or --rows), maps each row to ftmix inputs
(``ftmix.study.published``), predicts the figure its source measured (allocated peak, reserved
peak or device total, in the source's unit) and the per-micro-step time or tokens/s, and writes
``benchmarks/results/published.json`` and ``.md``: per row predicted vs measured and the error,
median and worst per source and overall, OOM rows checked as "does not fit", and the rows ftmix
cannot represent with the missing feature (the roadmap).

    PYTHONPATH=src python benchmarks/published.py [--rows FILE] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from ftmix.catalog import load_gpu
from ftmix.errors import FtmixError
from ftmix.estimate import estimate
from ftmix.plan.context import longest_context
from ftmix.plan.runtime import step_time
from ftmix.study.published import NotRepresented, load_rows, model_states_floor, represent

HERE = Path(__file__).resolve().parent
DEFAULT_ROWS = HERE / "data" / "published-rows.jsonl"
GOAL_TRUST = ("high", "medium")
CONTEXT_GRANULARITY = 64  # tokens: the longest-context search's step


def predict(row) -> dict:
    if row.row_type == "max_context_at_budget":
        return predict_context(row)
    est = estimate(row.spec, row.mixture, row.gpu, grad_accum=row.grad_accum)
    out = {"id": row.id, "source": row.source, "trust": row.trust, "row_type": row.row_type,
           "label": row.mixture.label, "precision": row.mixture.precision, "seq_len": row.mixture.seq_len,
           "micro_batch": row.mixture.micro_batch, "grad_accum": row.grad_accum,
           "gpu": row.gpu.name if row.gpu else None, "notes": row.notes, "quantize": row.mixture.quantize,
           "optimizer": row.mixture.optimizer, "sharding": row.mixture.sharding, "model": row.spec.name,
           "peak_at": est.notes[0] if est.notes else None}
    if row.row_type == "oom":
        out["oom"] = {"predicted_fits": est.fits, "device_total_gb": round(est.device_total / 1e9, 3),
                      "ok": est.fits is False}
    if row.memory_bytes is not None:
        predicted = {"allocated": est.peak, "reserved": est.reserved, "device_total": est.device_total}[row.memory_what]
        out["memory"] = {"what": row.memory_what, "measured_gb": round(row.memory_bytes / 1e9, 3),
                         "predicted_gb": round(predicted / 1e9, 3), "error": round(predicted / row.memory_bytes - 1, 4)}
        # the parameters, gradients and optimizer states the stated setup must hold at once at its
        # optimizer step: a figure below them measured some other setup than the row states
        floor = model_states_floor(row)
        if row.memory_bytes < floor:
            out["memory"]["below_model_states_gb"] = round(floor / 1e9, 3)
    if row.speed is not None and row.gpu is not None:
        kind, value = row.speed
        micro = step_time(row.spec, row.gpu, row.mixture, effective_batch=row.mixture.micro_batch * row.mixture.world)
        if kind == "s_per_micro_step":
            predicted = micro.total
        else:
            predicted = row.mixture.tokens / micro.total
        out["runtime"] = {"what": kind, "measured": value, "predicted": round(predicted, 4),
                          "error": round(predicted / value - 1, 4)}
    return out


def predict_context(row) -> dict:
    """A longest-context row: ``plan --max-seq-len`` for the row's mixture on a GPU of the budget's
    size (the row's GPU where it names one, else an A100's rates: only the memory matters here)."""
    gpu = dataclasses.replace(row.gpu or load_gpu("a100-80gb"), name=f"{row.budget_bytes / 2**30:g} GiB budget",
                              memory_bytes=int(row.budget_bytes))
    reach = longest_context(row.spec, gpu, row.mixture, CONTEXT_GRANULARITY, effective_batch=row.effective_batch)
    predicted = reach.max_seq_len or 0
    return {"id": row.id, "source": row.source, "trust": row.trust, "row_type": row.row_type,
            "label": row.mixture.label, "precision": row.mixture.precision, "seq_len": row.max_seq_len,
            "micro_batch": row.mixture.micro_batch, "gpu": gpu.name, "notes": row.notes,
            "quantize": row.mixture.quantize, "optimizer": row.mixture.optimizer,
            "sharding": row.mixture.sharding,
            "max_context": {"budget_gib": round(row.budget_bytes / 2**30, 2), "measured": row.max_seq_len,
                            "predicted": predicted, "granularity": CONTEXT_GRANULARITY,
                            "error": round(predicted / row.max_seq_len - 1, 4)}}


TIE = 0.03  # measured times within 3% of each other: a tie, as plan treats predictions (plan.search.TIE)


def seconds_per_token(r: dict, which: str) -> float:
    """A row's time per token on one GPU, measured or predicted, from either unit it was given in."""
    value = r["runtime"][which]
    if r["runtime"]["what"] == "s_per_micro_step":
        return value / (r["seq_len"] * r["micro_batch"])
    return 1 / value


def rankings(results: list[dict]) -> dict:
    """Every pair of measured mixtures of the same job (source, model, GPU, sequence length): does
    the predicted order of their time per token per GPU agree with the measured one? Measured ties
    (within TIE) are left out."""
    jobs = defaultdict(list)
    for r in results:
        if "runtime" in r:
            jobs[(r["source"], r["model"], r["gpu"], r["seq_len"])].append(r)
    right, wrong, ties = [], [], 0
    for rows in jobs.values():
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                ma, mb = seconds_per_token(a, "measured"), seconds_per_token(b, "measured")
                if abs(ma / mb - 1) <= TIE:
                    ties += 1
                    continue
                pa, pb = seconds_per_token(a, "predicted"), seconds_per_token(b, "predicted")
                pair = {"faster_measured": a["id"] if ma < mb else b["id"], "slower_measured": b["id"] if ma < mb else a["id"],
                        "measured_ratio": round(max(ma, mb) / min(ma, mb), 3),
                        "predicted_ratio": round((pb / pa) if ma < mb else (pa / pb), 3)}
                (right if (ma < mb) == (pa < pb) else wrong).append(pair)
    n = len(right) + len(wrong)
    return {"pairs": n, "right": len(right), "share_right": round(len(right) / n, 4) if n else None,
            "ties_left_out": ties, "target": 0.9, "wrong": wrong}


def stats(errors: list[float]) -> dict:
    if not errors:
        return {"median": None, "worst": None, "n": 0}
    absolute = [abs(e) for e in errors]
    return {"median": round(statistics.median(absolute), 4), "worst": round(max(absolute), 4), "n": len(errors)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=str(DEFAULT_ROWS))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    rows = load_rows(args.rows)
    results, missing = [], []
    for raw in rows:
        try:
            results.append(predict(represent(raw)))
        except (NotRepresented, FtmixError) as exc:
            missing.append({"id": raw["id"], "source": raw.get("source_group"), "trust": raw.get("trust"),
                            "why": str(exc)})
    by_source = defaultdict(lambda: {"memory": [], "runtime": [], "oom_ok": 0, "oom_n": 0})
    inconsistent = [r for r in results if "below_model_states_gb" in r.get("memory", {})]
    for r in results:
        s = by_source[r["source"]]
        if "memory" in r and r not in inconsistent:
            s["memory"].append(r["memory"]["error"])
        if "runtime" in r:
            s["runtime"].append(r["runtime"]["error"])
        if "oom" in r:
            s["oom_n"] += 1
            s["oom_ok"] += r["oom"]["ok"]
    compared = [r for r in results if "memory" in r and r not in inconsistent]
    goal = [r["memory"]["error"] for r in compared if r["trust"] in GOAL_TRUST]
    oom_goal = [r for r in results if "oom" in r and r["trust"] in GOAL_TRUST]
    report = {
        "overall": {"memory": stats([r["memory"]["error"] for r in compared]),
                    "runtime": stats([r["runtime"]["error"] for r in results if "runtime" in r])},
        "goal": {"memory_trust_high_medium": stats(goal), "target": {"median": 0.03, "worst": 0.10},
                 "oom_rows_predicted_to_fit": [r["id"] for r in oom_goal if not r["oom"]["ok"]]},
        # issue 20: the quantized rows on their own (goal: median 4%, worst 12%, trust high/medium), and
        # those outside litgpt, whose rows ran bitsandbytes 0.41 (docs/estimate.md, "QLoRA")
        "quantized": {"memory_trust_high_medium": stats([r["memory"]["error"] for r in compared
                                                         if r["trust"] in GOAL_TRUST and r["quantize"] != "none"]),
                      "memory_trust_high_medium_not_litgpt": stats(
                          [r["memory"]["error"] for r in compared if r["trust"] in GOAL_TRUST
                           and r["quantize"] != "none" and not r["source"].startswith("litgpt")]),
                      "rows": sum(r["quantize"] != "none" for r in results), "target": {"median": 0.04, "worst": 0.12}},
        # issue 21: the FSDP rows (goal: median 5%, worst 12%, trust high/medium) and the longest-context rows
        "fsdp": {"memory_trust_high_medium": stats([r["memory"]["error"] for r in compared if r["trust"] in GOAL_TRUST
                                                    and r["sharding"] == "fsdp2"]),
                 "memory_all": stats([r["memory"]["error"] for r in compared if r["sharding"] == "fsdp2"]),
                 "rows": sum(r["sharding"] == "fsdp2" for r in results), "target": {"median": 0.05, "worst": 0.12},
                 "oom_rows_predicted_to_fit": [r["id"] for r in results if "oom" in r and r["sharding"] == "fsdp2"
                                               and not r["oom"]["ok"]]},
        "max_context": stats([r["max_context"]["error"] for r in results if "max_context" in r]),
        # issue 22: the order of two measured mixtures of one job, as plan would rank them
        "rankings": rankings(results),
        "represented": {"rows": len(results), "of": len(rows), "share": round(len(results) / len(rows), 4),
                        "target": 0.75},
        "by_source": {k: {"memory": stats(v["memory"]), "runtime": stats(v["runtime"]),
                          "oom_checked": v["oom_n"], "oom_predicted_not_to_fit": v["oom_ok"]}
                      for k, v in sorted(by_source.items())},
        "rows": results,
        "below_model_states": [{"id": r["id"], "measured_gb": r["memory"]["measured_gb"],
                                "model_states_gb": r["memory"]["below_model_states_gb"]} for r in inconsistent],
        "not_represented": missing,
        "not_represented_by_feature": dict(Counter(m["why"] for m in missing).most_common()),
        "rows_total": len(rows),
        "measured_reasons": measured_reasons(Path(args.out)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "published.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "published.md").write_text(markdown(report))
    print(markdown_head(report))
    return report


def measured_reasons(out: Path) -> dict:
    """Why a source misses, measured: its own framework's code simulated at the row's setup
    (benchmarks/litgpt_twin.py and torchtune_twin.py; run apart, each needs its framework installed)."""
    found = {}
    for framework in ("litgpt", "torchtune"):
        path = out / f"{framework}_twin.json"
        if path.is_file():
            found[framework] = json.loads(path.read_text())
    return found


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown_head(report: dict) -> str:
    o, g = report["overall"], report["goal"]
    return (f"published rows: {report['rows_total']}, represented {len(report['rows'])}, "
            f"not represented {len(report['not_represented'])}\n"
            f"memory: median {_pct(o['memory']['median'])}, worst {_pct(o['memory']['worst'])} (n={o['memory']['n']}); "
            f"trust high/medium: median {_pct(g['memory_trust_high_medium']['median'])}, worst "
            f"{_pct(g['memory_trust_high_medium']['worst'])} (n={g['memory_trust_high_medium']['n']}; goal 3% / 10%)\n"
            f"runtime: median {_pct(o['runtime']['median'])}, worst {_pct(o['runtime']['worst'])} (n={o['runtime']['n']})\n"
            f"quantized rows ({report['quantized']['rows']}), trust high/medium: median "
            f"{_pct(report['quantized']['memory_trust_high_medium']['median'])}, worst "
            f"{_pct(report['quantized']['memory_trust_high_medium']['worst'])} "
            f"(n={report['quantized']['memory_trust_high_medium']['n']}; goal 4% / 12%); outside litgpt: median "
            f"{_pct(report['quantized']['memory_trust_high_medium_not_litgpt']['median'])} "
            f"(n={report['quantized']['memory_trust_high_medium_not_litgpt']['n']})\n"
            f"FSDP rows ({report['fsdp']['rows']}), trust high/medium: median "
            f"{_pct(report['fsdp']['memory_trust_high_medium']['median'])}, worst "
            f"{_pct(report['fsdp']['memory_trust_high_medium']['worst'])} "
            f"(n={report['fsdp']['memory_trust_high_medium']['n']}; goal 5% / 12%); all: median "
            f"{_pct(report['fsdp']['memory_all']['median'])}, worst {_pct(report['fsdp']['memory_all']['worst'])} "
            f"(n={report['fsdp']['memory_all']['n']})\n"
            f"runtime rankings: {report['rankings']['right']} of {report['rankings']['pairs']} pairs of one job's "
            f"mixtures ordered as measured ({_pct(report['rankings']['share_right'])}; goal 90%; "
            f"{report['rankings']['ties_left_out']} measured ties left out)\n"
            f"longest context at a budget: median {_pct(report['max_context']['median'])}, worst "
            f"{_pct(report['max_context']['worst'])} (n={report['max_context']['n']})\n"
            f"represented: {report['represented']['rows']} of {report['represented']['of']} rows "
            f"({_pct(report['represented']['share'])}; goal above 75%)\n"
            f"OOM rows (trust high/medium) predicted to fit: {g['oom_rows_predicted_to_fit'] or 'none'}\n"
            f"rows left out of the statistics, measured below the model states their setup must hold: "
            f"{[r['id'] for r in report['below_model_states']] or 'none'}\n")


def markdown(report: dict) -> str:
    lines = ["# ftmix against published measurements", "",
             "Written by `benchmarks/published.py` from `benchmarks/data/published-rows.jsonl`. Errors are "
             "predicted / measured - 1; medians and worst cases of their absolute values.", "",
             "```", markdown_head(report).rstrip(), "```", "", "## By source", "",
             "| source | memory median | memory worst | n | runtime median | runtime worst | n | OOM rows not fitting |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in report["by_source"].items():
        lines.append(f"| {name} | {_pct(s['memory']['median'])} | {_pct(s['memory']['worst'])} | {s['memory']['n']} | "
                     f"{_pct(s['runtime']['median'])} | {_pct(s['runtime']['worst'])} | {s['runtime']['n']} | "
                     f"{s['oom_predicted_not_to_fit']}/{s['oom_checked']} |")
    lines += ["", "## Rows", "", "| id | trust | mixture | s x b | GPU | memory (what) | measured | predicted | error | runtime error |",
              "| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        mem = r.get("memory") or {}
        ctx = r.get("max_context")
        if ctx:
            mem = {"what": f"longest context in {ctx['budget_gib']} GiB", "measured_gb": ctx["measured"],
                   "predicted_gb": ctx["predicted"], "error": ctx["error"]}
        oom = r.get("oom")
        measured = "OOM" if oom else mem.get("measured_gb", "-")
        predicted = (f"{oom['device_total_gb']} ({'fits' if oom['predicted_fits'] else 'OOM'})" if oom
                     else mem.get("predicted_gb", "-"))
        lines.append(f"| {r['id']} | {r['trust']} | {r['label']} ({r['precision']}) | {r['seq_len']} x {r['micro_batch']} | "
                     f"{r['gpu'] or '-'} | {mem.get('what', '-')} | {measured} | {predicted} | "
                     f"{_pct(mem.get('error'))} | {_pct((r.get('runtime') or {}).get('error'))} |")
    lines += ["", "## Runtime rankings ordered wrong", "",
              "Pairs of measured mixtures of one job (source, model, GPU, sequence length) whose predicted order "
              "of time per token per GPU is the reverse of the measured one (ratios: slower / faster).", "",
              "| faster measured | slower measured | measured ratio | predicted ratio |", "| --- | --- | ---: | ---: |"]
    for w in report["rankings"]["wrong"]:
        lines.append(f"| {w['faster_measured']} | {w['slower_measured']} | {w['measured_ratio']} | {w['predicted_ratio']} |")
    lines += ["", "## Measured below the model states of the stated setup", "",
              "A row's figure cannot be below the parameters, gradients and optimizer states that its stated "
              "setup holds at once (for bf16-true AdamW: 8 bytes per trained parameter). These rows measured "
              "something other than they state, and are left out of the statistics.", "",
              "| id | measured GB | model states GB |", "| --- | ---: | ---: |"]
    for r in report["below_model_states"]:
        lines.append(f"| {r['id']} | {r['measured_gb']} | {r['model_states_gb']} |")
    litgpt = report.get("measured_reasons", {}).get("litgpt")
    if litgpt:
        sm = litgpt["summary"]
        lines += ["", "## Why the litgpt rows miss, measured: litgpt's own code", "",
                  "ftmix models HF transformers + PEFT (+ DeepSpeed). litgpt runs its own model code (`litgpt.lora.GPT`, "
                  "no padding mask, a chunked bf16 head and `chunked_cross_entropy`, its own LoRA). "
                  "`benchmarks/litgpt_twin.py` simulates litgpt 0.5.9's own training step at each row's setup under "
                  "fake tensors with the device-memory twin: it meets the goal where ftmix's HF model cannot "
                  f"(median {_pct(sm['litgpt_median'])}, worst {_pct(sm['litgpt_worst'])}, n={sm['n']}, against ftmix's "
                  f"{_pct(sm['ftmix_median'])} / {_pct(sm['ftmix_worst'])} on the same rows), so the gap is the "
                  "framework, not the memory model (`litgpt_twin.md`).", "",
                  "| id | measured GB | litgpt simulated | error | ftmix (HF) | error |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in litgpt["rows"]:
            if "litgpt_error" in r:
                apart = " (below its model states: not averaged)" if "below_model_states_gb" in r else ""
                lines.append(f"| {r['id']}{apart} | {r['measured_gb']} | {r['litgpt_simulated_gb']} | "
                             f"{_pct(r['litgpt_error'])} | {r['ftmix_gb']} | {_pct(r['ftmix_error'])} |")
            elif r.get("measured_gb") == "OOM":
                lines.append(f"| {r['id']} | OOM on {r['gpu_gb']} GB | {r['litgpt_simulated_gb']} | "
                             f"{'fits (wrong)' if r['litgpt_fits'] else 'does not fit'} | - | "
                             f"{'fits (wrong)' if r['ftmix_fits'] else 'does not fit'} |")
    torchtune = report.get("measured_reasons", {}).get("torchtune")
    if torchtune:
        sm = torchtune["summary"]
        reserved = [r for r in torchtune["rows"] if r["measured_what"] == "reserved"]
        held = [r["measured_gb"] - r["torchtune_allocated_gb"] for r in reserved]
        slack = [r["ftmix_reserved_gb"] - r["ftmix_allocated_gb"] for r in reserved]
        unstated = [f"{r['id']} {_pct(r['measured_over_torchtune_allocated'])}" for r in torchtune["rows"]
                    if r["measured_what"] != "reserved"]
        lines += ["", "## Why the torchtune rows miss, measured: torchtune's own code and the allocator's cache", "",
                  "`benchmarks/torchtune_twin.py` simulates torchtune 0.1.1's own LoRA step (its model code, the "
                  "head's logits cast to fp32 and shifted by a copy, `CrossEntropyLoss`, activation checkpointing) at "
                  "each row's setup under fake tensors with the device-memory twin. ftmix's allocated peak is within "
                  f"{_pct(sm['ftmix_vs_torchtune_allocated_worst'])} of torchtune's own, and lower: torchtune's code "
                  "holds more at its peak (at Llama-2's 32k vocabulary a recomputed layer's feed-forward temporaries, "
                  "at Llama-3's 128k the fp32 logits, their shifted copy and the loss's fp32 gradients; each row's "
                  "peak and top sites are in `torchtune_twin.json`). The rest is the published figure's own. "
                  + (f"The reserved peaks are {', '.join(_pct(r['measured_over_torchtune_allocated']) for r in reserved)} "
                     f"above torchtune's allocated peak: the caching allocator held {min(held):.2f}-{max(held):.2f} GB "
                     "beyond it (no CPU run measures that; the recipe pads each batch to its longest alpaca sample "
                     "and never empties the cache), where ftmix's reserved adds 8% of the churning bytes "
                     f"({max(slack):.2f} GB). " if reserved else "")
                  + (f"Figures whose stat is not stated, over torchtune's allocated peak: {', '.join(unstated)} (the "
                     "April README's and the tutorial's figures are for the same setup). " if unstated else "")
                  + "(`torchtune_twin.md`)",
                  "", "| id | published GB (stat) | torchtune allocated (simulated) | published / allocated | "
                  "ftmix allocated | ftmix predicted | error |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in torchtune["rows"]:
            lines.append(f"| {r['id']} | {r['measured_gb']} ({r['measured_what']}) | {r['torchtune_allocated_gb']} | "
                         f"{_pct(r['measured_over_torchtune_allocated'])} | {r['ftmix_allocated_gb']} | {r['ftmix_gb']} | "
                         f"{_pct(r['ftmix_error'])} |")
    lines += ["", "## Not represented (the roadmap)", "", "| missing feature | rows |", "| --- | ---: |"]
    for why, n in report["not_represented_by_feature"].items():
        lines.append(f"| {why} | {n} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
