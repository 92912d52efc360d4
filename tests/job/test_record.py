"""The run record: typed, versioned, written and read through ftmix.job.record only."""

import json

import pytest

from ftmix.errors import FtmixError
from ftmix.job.record import SCHEMA_VERSION, RunRecord, read_record, write_record


def test_a_record_round_trips_at_the_current_version(tmp_path):
    record = RunRecord(config={"output_dir": str(tmp_path)}, mixture={"zero": 2, "lora": 8}, label="ZeRO-2",
                       measured={"steps": 3}, eval={"fine_tuned": {"rouge1": 0.25}})
    written = write_record(tmp_path, record)
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert "attempts" not in written and written["eval"] == {"fine_tuned": {"rouge1": 0.25}}
    again = read_record(tmp_path)
    assert again == record and again.measured["steps"] == 3


def test_a_record_written_before_the_version_reads_as_version_1(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "mixture": {"zero": 0}, "label": "1 GPU"}))
    record = read_record(tmp_path)
    assert record.schema_version == 1 and record.label == "1 GPU"
    assert write_record(tmp_path, record)["schema_version"] == SCHEMA_VERSION  # rewritten at the current one


@pytest.mark.parametrize("content,needle", [
    ({"label": "x"}, "not an ftmix run record"),
    ({"config": {}, "mixture": {}, "schema_version": 99}, "newer than this ftmix reads"),
    ([1, 2], "not an ftmix run record"),
])
def test_a_foreign_or_newer_file_is_one_clear_error(tmp_path, content, needle):
    (tmp_path / "run.json").write_text(json.dumps(content))
    with pytest.raises(FtmixError, match=needle):
        read_record(tmp_path)


def test_a_folder_without_a_record(tmp_path):
    with pytest.raises(FtmixError, match="no run.json there"):
        read_record(tmp_path)
