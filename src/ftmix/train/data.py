"""SAMSum-format data (``id``, ``dialogue``, ``summary``) -> token ids with the loss on the summary.

Rows are never fatal: a row missing a field, or with a non-text or empty dialogue or summary, is
skipped and counted. A row longer than the sequence length: with ``too_long: truncate`` (default)
the dialogue loses its oldest tokens so that the prompt, the whole summary and EOS fit; if even the
template and the summary do not fit, the row is skipped; with ``too_long: skip`` every long row
is skipped. Each sequence is padded to the sequence length, as the study did, or with ``packing``
examples are concatenated into full-length chunks (no cross-document attention mask).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ftmix.errors import FtmixError

IGNORE = -100
FIELDS = ("id", "dialogue", "summary")


@dataclass
class DataReport:
    rows: int = 0
    used: int = 0
    skipped_missing: int = 0
    skipped_empty: int = 0
    skipped_too_long: int = 0
    truncated: int = 0
    sequences: int = 0
    target_tokens: int = 0
    problems: list[str] = field(default_factory=list)  # first few, for the user

    def to_json(self) -> dict:
        return asdict(self)


def builtin_path() -> str:
    return str(resources.files("ftmix.train").joinpath("data/dialogues.jsonl"))


def load_records(source: str, split: str = "train", max_rows: int | None = None) -> list[dict]:
    """Rows from the built-in set, a local JSONL/JSON/CSV file, or a hub dataset id (via datasets)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors come back as one FtmixError
    path = builtin_path() if source == "builtin" else source
    try:
        if Path(path).exists():
            suffix = Path(path).suffix.lower()
            kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(suffix)
            if kind is None:
                raise FtmixError(f"data file {path} must be .jsonl, .json or .csv")
            if kind == "json":
                _check_json(Path(path))
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif "/" in source or source.isidentifier():
            ds = datasets.load_dataset(source, split=split)
        else:
            raise FtmixError(f"data {source!r} is neither a file nor a dataset id")
    except FtmixError:
        raise
    except Exception as exc:  # malformed JSON/CSV, unknown dataset, offline hub
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FtmixError(f"cannot load data {source!r}: {reason}") from None
    rows = ds.to_list()
    if not rows:
        raise FtmixError(f"data {source!r} holds no rows")
    if not set(FIELDS[1:]) <= set(ds.column_names):
        raise FtmixError(f"data {source!r} has columns {', '.join(ds.column_names)}; ftmix needs "
                         f"{', '.join(FIELDS)} (id optional)")
    return rows[:max_rows] if max_rows else rows


def _check_json(path: Path) -> None:
    """Name the first malformed line (datasets only says "an error occurred")."""
    text = path.read_text(errors="replace")
    try:
        json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                raise FtmixError(f"cannot load data {path}: line {number} is not JSON ({exc.msg})") from None


def tokenize(rows: list[dict], tokenizer, seq_len: int, template: str, too_long: str = "truncate",
             packing: bool = False) -> tuple[list[dict], DataReport]:
    """Token ids, labels (-100 outside the summary and on padding) and attention masks."""
    report = DataReport(rows=len(rows))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    examples = []
    for i, row in enumerate(rows):
        rid = row.get("id", i) if isinstance(row, dict) else i
        if not isinstance(row, dict) or any(row.get(k) is None for k in ("dialogue", "summary")):
            report.skipped_missing += 1
            _note(report, f"row {rid}: missing dialogue or summary")
            continue
        dialogue, summary = row["dialogue"], row["summary"]
        if not isinstance(dialogue, str) or not isinstance(summary, str) or not dialogue.strip() or not summary.strip():
            report.skipped_empty += 1
            _note(report, f"row {rid}: empty or non-text dialogue/summary")
            continue
        head, _, tail = template.partition("{dialogue}")
        head_ids = tokenizer(head, add_special_tokens=True)["input_ids"]
        dia_ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        target = tokenizer(summary, add_special_tokens=False)["input_ids"] + [eos]
        room = seq_len - len(head_ids) - len(tail_ids) - len(target)
        if len(dia_ids) > room:
            if too_long == "skip" or room <= 0:
                report.skipped_too_long += 1
                _note(report, f"row {rid}: {len(head_ids) + len(dia_ids) + len(tail_ids) + len(target)} tokens > {seq_len}")
                continue
            dia_ids = dia_ids[len(dia_ids) - room:]  # keep the latest turns
            report.truncated += 1
        prompt = head_ids + dia_ids + tail_ids
        examples.append((prompt + target, [IGNORE] * len(prompt) + target))
        report.used += 1
        report.target_tokens += len(target)
    sequences = _pack(examples, seq_len, pad) if packing else [_pad(ids, labels, seq_len, pad) for ids, labels in examples]
    report.sequences = len(sequences)
    if not sequences:
        raise FtmixError(f"no usable rows: {report.skipped_missing} missing, {report.skipped_empty} empty, "
                         f"{report.skipped_too_long} too long for seq-len {seq_len}")
    return sequences, report


def _note(report: DataReport, text: str) -> None:
    if len(report.problems) < 5:
        report.problems.append(text)


def _pad(ids, labels, seq_len, pad):
    n = len(ids)
    return {"input_ids": ids + [pad] * (seq_len - n), "labels": labels + [IGNORE] * (seq_len - n),
            "attention_mask": [1] * n + [0] * (seq_len - n)}


def _pack(examples, seq_len, pad):
    ids = [t for e in examples for t in e[0]]
    labels = [t for e in examples for t in e[1]]
    chunks = []
    for start in range(0, len(ids), seq_len):
        chunks.append(_pad(ids[start:start + seq_len], labels[start:start + seq_len], seq_len, pad))
    return chunks


def train_tokenizer(rows: list[dict], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the data itself (tests and random-init runs, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [str(r.get(k, "")) for r in rows if isinstance(r, dict) for k in ("dialogue", "summary")]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts or ["ftmix"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
