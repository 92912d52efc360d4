"""Data as people have it (issue 19): alpaca, sharegpt, openai messages, text and dialogue rows
from JSON, JSONL, CSV, Parquet or a datasets folder; the chat template; the loss on the responses
only; the report of how long the rows really are. The files under data/ are the project's own."""

import json
import time
from pathlib import Path

import pytest

from ftmix.errors import FtmixError
from ftmix.job.data import IGNORE, data_format, load_records, tokenize, train_tokenizer

DATA = Path(__file__).parent / "data"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok():
    rows = [r for name in ("alpaca.json", "sharegpt.jsonl", "openai.jsonl", "text.jsonl")
            for r in load_records(str(DATA / name))]
    return train_tokenizer(rows, vocab_size=600)


@pytest.fixture(scope="module")
def chat_tok(tok):
    import copy

    chat = copy.deepcopy(tok)
    chat.chat_template = CHATML
    return chat


@pytest.mark.parametrize("name,expected", [("alpaca.json", "alpaca"), ("sharegpt.jsonl", "sharegpt"),
                                           ("openai.jsonl", "openai"), ("text.jsonl", "text")])
def test_the_format_is_detected(name, expected):
    fmt = data_format(load_records(str(DATA / name)))
    assert fmt.name == expected and fmt.detected and "detected" in fmt.describe()


def test_builtin_dialogues_are_the_dialogue_format():
    assert data_format(load_records("builtin")).name == "dialogue"


def _targets(seq) -> list[int]:
    return [t for t in seq["labels"] if t != IGNORE]


def test_chat_template_masks_every_prompt_token(chat_tok):
    rows = load_records(str(DATA / "openai.jsonl"))
    seqs, report = tokenize(rows, chat_tok, 160, "{dialogue}")
    assert report.chat_template and report.format == "openai" and report.used == 5
    multi = seqs[2]  # two assistant turns
    learned = chat_tok.decode(_targets(multi))
    assert learned == "A kilogram is 1000 grams.<|im_end|>\nHalf a kilogram is 500 grams.<|im_end|>\n"
    n = sum(multi["attention_mask"])
    whole = chat_tok.decode(multi["input_ids"][:n])
    assert whole == chat_tok.apply_chat_template(rows[2]["messages"], tokenize=False)
    # the user's words are in the input and never in the labels
    assert "And in half of one?" in whole and "half of one" not in learned


def test_train_on_prompt_learns_every_token(chat_tok):
    rows = load_records(str(DATA / "openai.jsonl"))
    seqs, report = tokenize(rows, chat_tok, 160, "{dialogue}", train_on_prompt=True)
    assert report.train_on_prompt
    for seq in seqs:
        n = sum(seq["attention_mask"])
        assert seq["labels"][:n] == seq["input_ids"][:n] and set(seq["labels"][n:]) <= {IGNORE}


def test_alpaca_without_a_chat_template(tok):
    rows = load_records(str(DATA / "alpaca.json"))
    seqs, report = tokenize(rows, tok, 128, "{dialogue}")
    assert not report.chat_template and report.used == 8
    adds = seqs[1]
    n = sum(adds["attention_mask"])
    assert tok.decode(adds["input_ids"][:n]).startswith("User: Add the two numbers.\n17 and 25\nAssistant: ")
    assert tok.decode(_targets(adds)) == "17 plus 25 is 42.</s>"
    system, history = seqs[4], seqs[5]
    assert tok.decode(system["input_ids"]).startswith("Answer in one short sentence.\n\nUser: Say how many")
    # history: both answers are responses
    assert tok.decode(_targets(history)) == "A spider has eight legs.</s>An ant has six legs.</s>"


def test_sharegpt_roles_and_system(chat_tok):
    rows = load_records(str(DATA / "sharegpt.jsonl"))
    seqs, _ = tokenize(rows, chat_tok, 160, "{dialogue}")
    n = sum(seqs[0]["attention_mask"])
    assert chat_tok.decode(seqs[0]["input_ids"][:n]).startswith("<|im_start|>system\nYou are a terse gardening helper.")
    assert chat_tok.decode(_targets(seqs[0])).count("<|im_end|>") == 2


def test_text_is_learned_whole_and_ignores_the_chat_template(chat_tok):
    rows = load_records(str(DATA / "text.jsonl"))
    seqs, report = tokenize(rows, chat_tok, 64, "{dialogue}")
    assert report.format == "text" and not report.chat_template
    n = sum(seqs[0]["attention_mask"])
    assert seqs[0]["labels"][:n] == seqs[0]["input_ids"][:n]
    assert chat_tok.decode(seqs[0]["input_ids"][:n]) == f"{rows[0]['text']}</s>"


def test_row_lengths_and_truncation_are_reported(chat_tok):
    rows = load_records(str(DATA / "openai.jsonl"))
    _, full = tokenize(rows, chat_tok, 400, "{dialogue}")
    lengths = sorted(len(chat_tok(chat_tok.apply_chat_template(r["messages"], tokenize=False),
                                  add_special_tokens=False)["input_ids"]) for r in rows)
    assert full.tokens_max == lengths[-1] and full.tokens_p95 == lengths[-1]
    assert full.tokens_mean == pytest.approx(sum(lengths) / len(lengths), abs=0.05)
    cut_at = lengths[-2]  # the longest row is cut, the others fit
    seqs, cut = tokenize(rows, chat_tok, cut_at, "{dialogue}")
    assert cut.truncated == 1 and cut.used == 5 and cut.tokens_max == lengths[-1]
    assert all(sum(s["attention_mask"]) <= cut_at for s in seqs)
    _, skipped = tokenize(rows, chat_tok, cut_at, "{dialogue}", too_long="skip")
    assert skipped.skipped_too_long == 1 and skipped.used == 4


def test_dialogues_keep_the_summary_whole_under_a_chat_template(chat_tok):
    rows = [{"id": "long", "dialogue": "Al: " + "we should talk about the plan " * 40, "summary": "Al wants to talk."}]
    seqs, report = tokenize(rows, chat_tok, 96, "Summarize:\n{dialogue}\nSummary:")
    assert report.truncated == 1 and sum(seqs[0]["attention_mask"]) == 96
    assert chat_tok.decode(_targets(seqs[0])) == "Al wants to talk.<|im_end|>\n"
    assert chat_tok.decode(seqs[0]["input_ids"]).startswith("<|im_start|>user\nSummarize:\n")


def test_columns_map_other_names(tok):
    rows = load_records(str(DATA / "qa.csv"))
    with pytest.raises(FtmixError, match="cannot tell the data's format"):
        data_format(rows)
    fmt = data_format(rows, "alpaca", {"prompt": "question", "response": "answer"})
    seqs, report = tokenize(rows, tok, 64, "{dialogue}", fmt=fmt)
    assert report.used == 4 and tok.decode(_targets(seqs[1])) == "Frozen water is called ice.</s>"
    with pytest.raises(FtmixError, match="needs nope"):
        data_format(rows, "alpaca", {"prompt": "nope", "response": "answer"})
    with pytest.raises(FtmixError, match="not a key of the alpaca format"):
        data_format(rows, "alpaca", {"question": "prompt"})


def test_tags_name_other_roles(tok):
    rows = [{"chat": [{"speaker": "asker", "text": "Ping?"}, {"speaker": "answerer", "text": "Pong."}]}]
    fmt = data_format(rows, "sharegpt", {"messages": "chat"},
                      {"role_tag": "speaker", "content_tag": "text", "user_tag": "asker", "assistant_tag": "answerer"})
    seqs, _ = tokenize(rows, tok, 32, "{dialogue}", fmt=fmt)
    assert tok.decode(_targets(seqs[0])) == "Pong.</s>"


def test_parquet_and_a_datasets_folder_read_as_the_json_does(tmp_path):
    import datasets

    rows = load_records(str(DATA / "alpaca.json"))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "splits"))
    assert load_records(str(tmp_path / "a.parquet")) == rows
    assert load_records(str(tmp_path / "saved")) == rows
    assert len(load_records(str(tmp_path / "splits"), split="test")) == 2
    with pytest.raises(FtmixError, match="has splits train, test"):
        load_records(str(tmp_path / "splits"), split="validation")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FtmixError, match="not saved with datasets"):
        load_records(str(tmp_path / "plain"))


def test_a_hub_id_offline_is_a_clear_error_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FtmixError, match="cannot load data 'someone/some-set'"):
        load_records("someone/some-set")
    assert time.perf_counter() - start < 5


def test_non_utf8_csv_names_the_byte(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("instruction,output\nCaf\xe9 name?,Caf\xe9 Bleu\n".encode("latin-1"))
    with pytest.raises(FtmixError, match="not UTF-8 text"):
        load_records(str(path))


@pytest.mark.slow
def test_end_to_end_alpaca_with_a_chat_template_and_eval(tmp_path):
    """The real CLI: alpaca rows, a tokenizer with a chat template, --eval on held-out rows."""
    from tests.train.conftest import run_train_cli, tiny_flags, yaml_args

    rows = [r for name in ("alpaca.json", "openai.jsonl") for r in load_records(str(DATA / name))]
    tokenizer = train_tokenizer(rows, vocab_size=600)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    flags = tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2, max_rows=6, effective_batch=2,
                       data=str(DATA / "alpaca.json"), tokenizer=str(tmp_path / "tok"))
    proc = run_train_cli(yaml_args(flags) + ["--eval", "--json"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    data = out["data"]
    assert (data["format"], data["chat_template"], data["train_on_prompt"], data["used"]) == ("alpaca", True, False, 6)
    assert 20 < data["tokens_max"] <= 128 and data["tokens_mean"] <= data["tokens_max"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert f"the rows are at most {data['tokens_max']} tokens" in " ".join(record["notes"])
    assert record["predicted"]["estimate"]["mixture"]["seq_len"] == 128  # what the estimate was made for
    after = out["eval"]["after"]
    assert after["format"] == "alpaca" and after["rows"] == 2 and after["eval_loss"] > 0
    assert after["rouge1"] is not None and after["samples"][0]["reference"] == "apple, fig, pear"


def test_eval_needs_rows_left_before_training(tmp_path, capsys):
    from ftmix.cli import main
    from tests.train.conftest import tiny_flags, yaml_args

    flags = tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=1, max_rows=8, data=str(DATA / "alpaca.json"))
    with pytest.raises(SystemExit) as exc:
        main(["train", *yaml_args(flags), "--eval"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "takes all 8 rows" in err and not (tmp_path / "run").exists()


def test_an_unreachable_hub_online_is_said_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")  # nothing listens on its port 443 here
    start = time.perf_counter()
    with pytest.raises(FtmixError, match="the hub \\(127.0.0.1\\) cannot be reached"):
        load_records("someone/some-set")
    assert time.perf_counter() - start < 5
