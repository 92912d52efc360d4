"""Training data as people have it -> token ids with the loss on the responses.

Sources: ftmix's built-in dialogues, a JSON, JSONL, CSV or Parquet file, a folder saved with
``datasets`` (``save_to_disk``), or a hub dataset id. Formats (``ftmix.job.formats``): alpaca,
sharegpt, openai messages, plain text and ftmix's dialogue/summary rows, detected from the columns
or named. A chat model's own chat template (``tokenizer.apply_chat_template``) renders
conversations; without one, a plain ``User: ... / Assistant: ...`` form does (dialogue rows: the
prompt template, as before). The loss is on the assistant turns only (TRL's completion-only loss,
LLaMA-Factory's ``train_on_prompt: false``) unless ``train_on_prompt``; plain text is trained on
whole.

Rows are never fatal: a row missing a field, or with a non-text or empty one, is skipped and
counted. A row longer than the sequence length: with ``too_long: truncate`` (default) a dialogue
loses its oldest tokens so that the prompt's frame, the whole summary and EOS fit (skipped if even
those do not); any other row is cut at the sequence length as TRL's ``max_length`` cuts, kept if a
response token remains; with ``too_long: skip`` every long row is skipped. Each sequence is padded
to the sequence length, as the study did, or with ``packing`` examples are concatenated into
full-length chunks (no cross-document attention mask).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.job.formats import DataFormat, Example, read_row, resolve
from ftmix.job.hub import check_reachable

IGNORE = -100
FIELDS = ("id", "dialogue", "summary")
SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
DIALOGUE_MARK = "\x00ftmix-dialogue\x00"  # where the dialogue sits in a chat-templated prompt


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
    format: str | None = None
    chat_template: bool = False
    train_on_prompt: bool = False
    seq_len: int | None = None
    tokens_max: int | None = None  # each used row's tokens before truncation and padding
    tokens_p95: int | None = None
    tokens_mean: float | None = None
    problems: list[str] = field(default_factory=list)  # first few, for the user

    def to_json(self) -> dict:
        return asdict(self)


def builtin_path() -> str:
    return str(resources.files("ftmix.job").joinpath("data/dialogues.jsonl"))


def load_records(source: str, split: str = "train", max_rows: int | None = None) -> list[dict]:
    """Rows from the built-in set, a local file or ``datasets`` folder, or a hub dataset id."""
    # lazy: datasets (pyarrow) only for files that need it
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors come back as one FtmixError
    path = Path(builtin_path() if source == "builtin" else source).expanduser()
    try:
        if path.is_dir():
            ds = _load_folder(path, split)
        elif path.exists():
            kind = check_data_file(path)
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif _looks_like_hub_id(source):
            check_reachable(f"data {source!r}")
            ds = datasets.load_dataset(source, split=split)
        else:
            raise FtmixError(f"data {source!r} is neither a file, a folder nor a dataset id (org/name)")
    except FtmixError:
        raise
    except Exception as exc:  # malformed JSON/CSV/Parquet, unknown dataset, offline hub
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FtmixError(f"cannot load data {source!r}: {reason}") from None
    rows = ds.to_list()
    if not rows:
        raise FtmixError(f"data {source!r} holds no rows")
    return rows[:max_rows] if max_rows else rows


def check_data_file(path: Path) -> str:
    """The ``datasets`` builder for a data file, once the file is known to be readable: its
    suffix, not empty, UTF-8 (JSON, CSV), and JSON that parses (naming the first bad line)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FtmixError(f"data file {path} must be .jsonl, .json, .csv or .parquet (or a folder saved with datasets)")
    raw = path.read_bytes()
    if not raw.strip():
        raise FtmixError(f"data file {path} is empty")
    if kind != "parquet":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FtmixError(f"data file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
                             "UTF-8") from None
        if kind == "json":
            _check_json(path, text)
    return kind


def _load_folder(path: Path, split: str):
    """A folder written by ``Dataset.save_to_disk`` (or a DatasetDict's, whose ``split`` is taken)."""
    # lazy: datasets (pyarrow) only for files that need it
    import datasets

    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise FtmixError(f"data folder {path} was not saved with datasets (no dataset_info.json or "
                         "dataset_dict.json); give a file inside it")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise FtmixError(f"data folder {path} has splits {', '.join(ds)}; choose one with split=NAME")
        ds = ds[split]
    return ds


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and not source.endswith(
        tuple(SUFFIXES))


def _check_json(path: Path, text: str) -> None:
    """Name the first malformed line (datasets only says "an error occurred")."""
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


def data_format(rows: list, name: str = "auto", columns: dict | None = None, tags: dict | None = None) -> DataFormat:
    present = sorted({k for r in rows[:100] if isinstance(r, dict) for k in r})
    first = next((r for r in rows if isinstance(r, dict)), None)
    return resolve(present, first, name, columns, tags)


def uses_chat_template(tokenizer, fmt: DataFormat, chat_template: bool | None) -> bool:
    """None: the tokenizer's template when it has one (not for plain text)."""
    if fmt.name == "text":
        return False
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not has:
        raise FtmixError("chat_template: true, but the tokenizer has no chat template")
    return has if chat_template is None else chat_template


def tokenize(rows: list[dict], tokenizer, seq_len: int, template: str, too_long: str = "truncate",
             packing: bool = False, fmt: DataFormat | None = None, chat_template: bool | None = None,
             train_on_prompt: bool = False) -> tuple[list[dict], DataReport]:
    """Token ids, labels (-100 outside the responses and on padding) and attention masks."""
    fmt = fmt or data_format(rows)
    chat = uses_chat_template(tokenizer, fmt, chat_template)
    report = DataReport(rows=len(rows), format=fmt.name, chat_template=chat, train_on_prompt=train_on_prompt,
                        seq_len=seq_len)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    examples, lengths = [], []
    for i, row in enumerate(rows):
        example, why = read_row(row, fmt, template, i)
        if example is None:
            if why.startswith("missing"):
                report.skipped_missing += 1
            else:
                report.skipped_empty += 1
            _note(report, why.split(": ", 1)[1])
            continue
        segments = encode(example, fmt, tokenizer, template, chat, eos)
        if train_on_prompt or fmt.name == "text":
            segments = [(ids, True, trim) for ids, _, trim in segments]
        total = sum(len(ids) for ids, _, _ in segments)
        if total > seq_len:
            if too_long == "skip" or (segments := _fit(segments, seq_len)) is None:
                report.skipped_too_long += 1
                _note(report, f"row {example.id}: {total} tokens > {seq_len}")
                continue
            report.truncated += 1
        ids = [t for seg, _, _ in segments for t in seg]
        labels = [t for seg, target, _ in segments for t in (seg if target else [IGNORE] * len(seg))]
        examples.append((ids, labels))
        lengths.append(total)
        report.used += 1
        report.target_tokens += sum(1 for t in labels if t != IGNORE)
    sequences = _pack(examples, seq_len, pad) if packing else [_pad(ids, labels, seq_len, pad) for ids, labels in examples]
    report.sequences = len(sequences)
    if not sequences:
        raise FtmixError(f"no usable rows ({fmt.name} format): {report.skipped_missing} missing, "
                         f"{report.skipped_empty} empty, {report.skipped_too_long} too long for seq-len {seq_len}"
                         + (f"; first: {report.problems[0]}" if report.problems else ""))
    ordered = sorted(lengths)
    report.tokens_max, report.tokens_mean = ordered[-1], round(sum(ordered) / len(ordered), 1)
    report.tokens_p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return sequences, report


def encode(example: Example, fmt: DataFormat, tokenizer, template: str, chat: bool, eos: int) -> list[tuple]:
    """The row as (token ids, is a response, may lose its oldest tokens) segments, in order."""
    if example.text is not None:
        return [(tokenizer(example.text, add_special_tokens=True)["input_ids"] + [eos], True, False)]
    if chat:
        return _chat_segments(example, fmt, tokenizer)
    if fmt.name == "dialogue":  # ftmix's own prompt: template head, dialogue, template tail, summary
        head, _, tail = template.partition("{dialogue}")
        dialogue = example.dialogue
        return [(tokenizer(head, add_special_tokens=True)["input_ids"], False, False),
                (tokenizer(dialogue, add_special_tokens=False)["input_ids"], False, True),
                (tokenizer(tail, add_special_tokens=False)["input_ids"], False, False),
                (tokenizer(example.response, add_special_tokens=False)["input_ids"] + [eos], True, False)]
    return _plain_segments(example, tokenizer, eos)


def plain_prompt(messages: list[dict]) -> str:
    """The prompt without a chat template: the system text, then ``User: ...`` / ``Assistant: ...``
    turns, ending where the assistant's answer starts."""
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            out.append(("\n" if out and not out[-1].endswith("\n\n") else "") + f"User: {m['content']}\nAssistant: ")
        else:
            out.append(m["content"])
    return "".join(out)


def generation_prompt(example: Example, fmt: DataFormat, tokenizer, chat: bool) -> str:
    """The text a model continues to answer the row's last turn, rendered as in training."""
    if chat:
        return tokenizer.apply_chat_template(example.prompt_messages, tokenize=False, add_generation_prompt=True)
    if fmt.name == "dialogue":
        return example.messages[0]["content"]
    return plain_prompt(example.prompt_messages)


def _plain_segments(example: Example, tokenizer, eos: int) -> list[tuple]:
    segments, first = [], True
    pending = []
    for m in example.messages:
        if m["role"] != "assistant":
            pending.append(m)
            continue
        text = plain_prompt(pending) if first else "\n" + plain_prompt(pending)
        segments.append((tokenizer(text, add_special_tokens=first)["input_ids"], False, False))
        segments.append((tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [eos], True, False))
        pending, first = [], False
    return segments


def _chat_segments(example: Example, fmt: DataFormat, tokenizer) -> list[tuple]:
    """Each assistant turn as rendered by the chat template is a response; everything between is
    prompt. A template that rewrites earlier turns (no common prefix) trains on the last turn."""
    messages = example.messages
    render = _renderer(tokenizer, example.dialogue)
    if fmt.name == "dialogue":  # keep the dialogue trimmable, as without a template
        prompt = render(messages[:-1], True, DIALOGUE_MARK)
        whole = render(messages, False)
        head, _, tail = prompt.partition(DIALOGUE_MARK)
        user = example.dialogue
        if DIALOGUE_MARK in prompt and whole.startswith(head) and whole[len(head):].startswith(user):
            response = whole[len(head) + len(user) + len(tail):]
            return [(_ids(tokenizer, head), False, False), (_ids(tokenizer, user), False, True),
                    (_ids(tokenizer, tail), False, False), (_ids(tokenizer, response), True, False)]
    cuts, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(messages[:i], True), render(messages[:i + 1], False)
        if not (before.startswith(done) and after.startswith(before)):
            cuts = None
            break
        cuts += [(before[len(done):], False), (after[len(before):], True)]
        done = after
    if cuts is None:
        before, after = render(messages[:-1], True), render(messages, False)
        cuts = [(before, False), (after[len(before):] if after.startswith(before) else messages[-1]["content"], True)]
    return [(_ids(tokenizer, text), target, False) for text, target in cuts if text]


def _renderer(tokenizer, dialogue: str | None = None):
    def render(messages: list[dict], generation_prompt: bool, mark: str | None = None) -> str:
        if mark is not None:  # the dialogue's place inside the prompt template
            messages = [dict(messages[0], content=messages[0]["content"].replace(dialogue, mark, 1))] + messages[1:]
        if not messages:
            return ""
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    return render


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _fit(segments: list[tuple], seq_len: int) -> list[tuple] | None:
    """A long row made to fit: the trimmable segment loses its oldest tokens if that suffices and
    the responses stay whole; else the row is cut at ``seq_len`` if a response token remains."""
    excess = sum(len(ids) for ids, _, _ in segments) - seq_len
    for k, (ids, target, trim) in enumerate(segments):
        if trim and len(ids) > excess:
            return segments[:k] + [(ids[excess:], target, trim)] + segments[k + 1:]
    if any(trim for _, _, trim in segments):
        return None  # a dialogue whose frame and summary alone do not fit
    out, room = [], seq_len
    for ids, target, trim in segments:
        out.append((ids[:room], target, trim))
        room -= len(out[-1][0])
        if room <= 0:
            break
    return out if any(target and ids for ids, target, _ in out) else None


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
    # lazy: only when a tokenizer is trained
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [text for r in rows if isinstance(r, dict) for text in _strings(r)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts or ["ftmix"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _strings(value):
    """Every text inside a row (conversations are lists of turns)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
