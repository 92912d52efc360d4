"""``ftmix eval --run DIR``: how good the fine-tuned model is on rows it did not train on.

Held-out rows: the run's own data past the rows it trained on (``max_rows``), or ``--data`` in any
format training reads (``ftmix.job.formats``). For each row the model generates the response to
the row's prompt, rendered as in training (the chat template, or the plain or dialogue prompt;
greedy by default; the generation settings are flags) and ROUGE-1/2/L F1 is taken against the
row's last response with Google's ``rouge-score`` (Porter stemming, as the SAMSum and DialogSum
papers report it); a dialogue's summary is its first generated line. Plain text rows have no
response: eval loss only. The eval loss is the mean cross-entropy on the response tokens (every
token for text), computed on the same tokenized rows as training (``ftmix.job.data.tokenize``). ``--base`` evaluates the base model without the
fine-tuning, for the before/after comparison. Results go to ``DIR/eval.json`` and into
``run.json`` under ``eval``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.job.data import data_format, generation_prompt, load_records, tokenize
from ftmix.job.formats import read_row
from ftmix.job.record import RunRecord, read_record, write_record
from ftmix.train.export import final_folder, rebuild_base


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 64
    num_beams: int = 1
    temperature: float = 0.0  # 0: greedy
    repetition_penalty: float = 1.0


def held_out_rows(record: RunRecord, data: str | None, rows: int | None) -> tuple[list[dict], str]:
    """(rows, where they come from)."""
    cfg = record.config
    if data:
        found = load_records(data, cfg.get("split", "train"))
        where = f"{data}"
    else:
        every = load_records(cfg.get("data", "builtin"), cfg.get("split", "train"))
        used = cfg.get("max_rows") or len(every)
        found = every[used:]
        where = f"{cfg.get('data', 'builtin')} rows {used + 1}-{len(every)} (not trained on)"
        if not found:
            raise FtmixError(f"the run trained on all {len(every)} rows of its data; give held-out rows with --data "
                             f"(or train with max_rows below {len(every)})")
    if rows:
        found = found[:rows]
    return found, where


def evaluate(run_dir: Path, data: str | None = None, rows: int | None = None, base: bool = False,
             gen: Generation = Generation()) -> dict:
    record = read_record(run_dir)
    cfg = record.config
    found, where = held_out_rows(record, data, rows)  # bad data fails before torch loads
    fmt = data_format(found, cfg.get("format", "auto"), cfg.get("columns"), cfg.get("tags"))
    template = cfg.get("template") or "{dialogue}"
    read = [read_row(r, fmt, template, i) for i, r in enumerate(found)]
    examples = [e for e, _ in read if e is not None]
    if not examples:
        first = next(why for _, why in read if why).split(": ", 1)[1]
        raise FtmixError(f"no usable held-out rows in {where} ({fmt.name} format); first: {first}")

    # lazy: `ftmix export` and `ftmix eval` check their input before the torch world loads
    import torch
    import transformers

    final = final_folder(run_dir, record)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(final))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = bool(record.mixture.get("lora"))
    if base or lora:
        model = rebuild_base(record).float()
        if lora and not base:
            # lazy: `ftmix export` and `ftmix eval` check their input before the torch world loads
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(final))
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32)
    model.eval()
    chat = bool((record.data or {}).get("chat_template"))
    seq_len = int(record.mixture["seq_len"])
    sequences, _ = tokenize(found, tokenizer, seq_len, template, "truncate", fmt=fmt, chat_template=chat,
                            train_on_prompt=bool(cfg.get("train_on_prompt")))
    losses = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq["input_ids"]])
            labels = torch.tensor([seq["labels"]])
            mask = torch.tensor([seq["attention_mask"]])
            losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())
    scores, samples = _rouge(model, tokenizer, examples, fmt, chat, seq_len, gen)
    result = {"model": "base (not fine-tuned)" if base else "fine-tuned", "rows": len(examples), "held_out": where,
              "format": fmt.name, "eval_loss": round(statistics.fmean(losses), 4) if losses else None,
              **{key: (round(statistics.fmean(v), 4) if v else None) for key, v in scores.items()},
              "generation": gen.__dict__, "samples": samples}
    if not any(scores.values()):
        result["note"] = "plain text rows have no response to score: eval loss only"
    _record(run_dir, record, result)
    return result


def _rouge(model, tokenizer, examples, fmt, chat: bool, seq_len: int, gen: Generation) -> tuple[dict, list]:
    """ROUGE-1/2/L F1 of each generated response against the row's own."""
    # lazy: `ftmix export` and `ftmix eval` check their input before the torch world loads
    import torch
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores, samples = {"rouge1": [], "rouge2": [], "rougeL": []}, []
    kwargs = dict(max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams,
                  repetition_penalty=gen.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if gen.temperature > 0:
        kwargs.update(do_sample=True, temperature=gen.temperature)
    else:
        kwargs.update(do_sample=False)
    with torch.no_grad():
        for example in examples:
            if example.messages is None:
                continue
            prompt = generation_prompt(example, fmt, tokenizer, chat)
            ids = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=seq_len,
                            add_special_tokens=not chat).input_ids
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)[0][ids.shape[1]:]
            text = tokenizer.decode(out, skip_special_tokens=True).strip()
            if fmt.name == "dialogue":
                text = text.split("\n")[0]
            got = scorer.score(example.response, text)
            for key in scores:
                scores[key].append(got[key].fmeasure)
            if len(samples) < 3:
                samples.append({"id": example.id, "reference": example.response, "generated": text})
    return scores, samples


def _record(run_dir: Path, record: RunRecord, result: dict) -> None:
    """eval.json holds every evaluation of the run (base and fine-tuned); run.json the latest of each."""
    path = run_dir / "eval.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append(result)
    path.write_text(json.dumps(history, indent=1) + "\n")
    evals = dict(record.eval or {})
    evals["base" if result["model"].startswith("base") else "fine_tuned"] = {
        k: v for k, v in result.items() if k != "samples"}
    record.eval = evals
    write_record(run_dir, record)
