import json

import pytest

from ftmix.errors import FtmixError
from ftmix.job.data import IGNORE, builtin_path, load_records, tokenize, train_tokenizer

ROWS = [
    {"id": "a", "dialogue": "Ann: Lunch at noon?\nBob: Sure, see you there.", "summary": "Ann and Bob meet for lunch at noon."},
    {"id": "b", "dialogue": "Cy: I lost my keys.\nDee: Check the kitchen.", "summary": "Dee tells Cy to check the kitchen."},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(ROWS + load_records("builtin"), vocab_size=512)


def test_builtin_set():
    rows = load_records("builtin")
    assert len(rows) == 60 and set(rows[0]) == {"id", "dialogue", "summary"}
    assert len({r["id"] for r in rows}) == 60 and builtin_path().endswith("dialogues.jsonl")


def test_loss_only_on_summary_and_padding(tok):
    seqs, report = tokenize(ROWS, tok, 96, "Summarize.\n{dialogue}\nSummary: ")
    assert report.used == 2 and report.sequences == 2
    for seq, row in zip(seqs, ROWS):
        assert len(seq["input_ids"]) == len(seq["labels"]) == len(seq["attention_mask"]) == 96
        target = [t for t in seq["labels"] if t != IGNORE]
        assert tok.decode(target[:-1]) == row["summary"] and target[-1] == tok.eos_token_id
        n = sum(seq["attention_mask"])
        assert all(label == IGNORE for label in seq["labels"][n:])
        assert seq["labels"][: n - len(target)] == [IGNORE] * (n - len(target))
    assert report.target_tokens == sum(sum(1 for t in s["labels"] if t != IGNORE) for s in seqs)


def test_bad_rows_are_counted_not_fatal(tok):
    rows = ROWS + [{"id": "m", "dialogue": "x"}, {"id": "e", "dialogue": "  ", "summary": "s"},
                   {"id": "n", "dialogue": 5, "summary": "s"}, "not a dict",
                   {"id": "long", "dialogue": "word " * 400, "summary": "A long talk."}]
    seqs, report = tokenize(rows, tok, 64, "S: {dialogue}\nSummary: ", too_long="skip")
    assert (report.rows, report.used, report.skipped_missing, report.skipped_empty, report.skipped_too_long) == (7, 2, 2, 2, 1)
    seqs, report = tokenize(rows, tok, 64, "S: {dialogue}\nSummary: ", too_long="truncate")
    assert report.truncated == 1 and report.used == 3
    long_seq = seqs[-1]
    assert sum(long_seq["attention_mask"]) == 64  # truncated to exactly fit, summary kept whole
    assert tok.decode([t for t in long_seq["labels"] if t != IGNORE][:-1]) == "A long talk."


def test_packing_fills_sequences(tok):
    rows = load_records("builtin")[:20]
    padded, _ = tokenize(rows, tok, 256, "S: {dialogue}\nSummary: ")
    packed, report = tokenize(rows, tok, 256, "S: {dialogue}\nSummary: ", packing=True)
    assert len(packed) < len(padded) and all(sum(s["attention_mask"]) == 256 for s in packed[:-1])
    assert sum(1 for s in packed for t in s["labels"] if t != IGNORE) == report.target_tokens


def test_nothing_usable_is_an_error(tok):
    with pytest.raises(FtmixError, match="no usable rows"):
        tokenize([{"id": 1, "dialogue": " ", "summary": "s"}], tok, 64, "{dialogue}")
    with pytest.raises(FtmixError, match="cannot tell the data's format"):
        tokenize([{"id": 1}], tok, 64, "{dialogue}")


@pytest.mark.parametrize("content,suffix", [("{not json\n", ".jsonl"), ("a,b\n1,2\n", ".txt")])
def test_malformed_files(tmp_path, content, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(FtmixError):
        load_records(str(path))


def test_local_formats(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.csv").write_text("id,dialogue,summary\n1,\"A: hi\",A greets.\n")
    assert len(load_records(str(tmp_path / "d.json"))) == 2
    assert load_records(str(tmp_path / "d.csv"))[0]["summary"] == "A greets."
