"""`ftmix study import` (run.json, gpu_groundtruth, published rows) and `ftmix study report`: each
figure exists and the numbers behind it are the database's (issue 11: measurements, figures)."""

import json

import pytest

from tests.study.conftest import TINY_BASE, as_json, rows, study
from tests.study.test_published import LITGPT
from tests.train.conftest import run_train_cli, yaml_args


def _published(tmp_path):
    ok = dict(LITGPT, id="row-ok")
    oom = dict(LITGPT, id="row-oom", row_type="oom", micro_batch=64, measured={})
    qlora = dict(LITGPT, id="row-qlora", method="qlora", quantization="torchao NF4")
    padded = dict(LITGPT, id="row-padded", seq_len_note="Alpaca padded per batch; longest example 512 tokens")
    tokens = dict(LITGPT, id="row-tokens", gpu="NVIDIA L40S (48 GB)",
                  measured={"speed": {"value": 4000.0, "unit": "tokens/s"},
                            "peak_memory": LITGPT["measured"]["peak_memory"]})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (ok, oom, qlora, tokens, padded)) + "\n")
    return path


def test_published_rows_are_imported_or_listed_with_why(tmp_path):
    db = tmp_path / "s.sqlite"
    result = as_json(study("import", _published(tmp_path), "--db", db, "--json"))
    assert result["imported"] == 4 and result["not_represented_by_reason"] == {
        "torchao NF4 (torchtune's own quantized linear; ftmix models bitsandbytes')": 1}
    by_id = {r["id"]: r for r in rows(db)}
    ok = by_id["pub-row-ok"]
    assert ok["status"] == "ok" and ok["peak_gb"] == pytest.approx(16.0) and ok["peak_what"] == "allocated"
    assert ok["step_s"] == pytest.approx(1.62 * 60 / 1000)  # min per 1000 iterations, one micro step each
    # a time per iteration over variable-length batches is the mean batch's: not compared with a full-length one
    assert by_id["pub-row-padded"]["step_s"] is None and by_id["pub-row-padded"]["peak_gb"] == pytest.approx(16.0)
    assert ok["predicted_peak_gb"] > 0 and ok["inputs"]["mixture"]["lora"] == 8 and ok["gpu"] == "a100-40gb"
    assert by_id["pub-row-oom"]["status"] == "oom"
    tokens = by_id["pub-row-tokens"]
    assert tokens["step_s"] == pytest.approx(512 * 4 / 4000.0) and tokens["gpu"] == "l40s-48gb"
    again = as_json(study("import", _published(tmp_path), "--db", db, "--json"))
    assert again["imported"] == 4 and len(rows(db)) == 4  # the same rows, updated, not duplicated


@pytest.mark.slow
def test_a_gpu_groundtruth_file_and_a_run_json_are_imported(tmp_path):
    gt = tmp_path / "gt.jsonl"
    env = {"environment": {"device": "cuda", "gpu": "NVIDIA H200", "total_memory": 150_000_000_000, "torch": "2.13.0",
                           "transformers": "5.24.0", "peft": "0.21.2"}}
    mix = {"zero": 0, "offload": "none", "lora": 64, "lora_alpha": 32, "lora_targets": "q_proj,v_proj", "gc": False,
           "attn": "sdpa", "precision": "bf16", "micro_batch": 1, "seq_len": 256, "gpus": 1, "nodes": 1, "packing": False}
    row = {"model": "llama-2-7b", "variant": "mixed", "mixture": mix, "label": "x", "status": "ok",
           "max_allocated": 14.5e9, "median_step_s": 0.11, "tokens_per_s": 2327.0}
    gt.write_text(json.dumps(env) + "\n" + json.dumps(row) + "\n")
    out = tmp_path / "run"
    proc = run_train_cli(yaml_args(dict(TINY_BASE, output_dir=str(out))), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = tmp_path / "s.sqlite"
    result = as_json(study("import", gt, out / "run.json", "--db", db, "--json"))
    assert [f["kind"] for f in result["files"]] == ["gpu_groundtruth", "run.json"]
    by_source = {r["source"]: r for r in rows(db)}
    g = by_source["import:gpu_groundtruth"]
    assert g["gpu"] == "h200-141gb" and g["peak_gb"] == pytest.approx(14.5) and g["step_s"] == 0.11
    assert g["predicted_step_s"] > 0 and g["inputs"]["effective_batch"] == 1
    r = by_source["import:run.json"]
    record = json.loads((out / "run.json").read_text())
    assert r["peak_gb"] == pytest.approx(record["measured"]["twin"]["device_peak_bytes"] / 1e9)
    assert r["peak_what"] == "twin_device" and r["final_loss"] == record["measured"]["loss_curve"][-1][1]


def test_malformed_measurement_files_are_one_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\nnot json\n')
    proc = study("import", bad, "--db", tmp_path / "s.sqlite")
    assert proc.returncode == 2 and ":2: not JSON" in proc.stderr and proc.stderr.count("\n") == 1
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    proc = study("import", other, "--db", tmp_path / "s.sqlite")
    assert proc.returncode == 2 and "neither an ftmix run.json nor a published row" in proc.stderr
    # issue 19, defect 14: training data is not a measurement file (it was imported as 60 rows, exit 0)
    from ftmix.job.data import builtin_path

    proc = study("import", builtin_path(), "--db", tmp_path / "s.sqlite")
    assert proc.returncode == 2 and "not published measurements" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_figure_exists_and_draws_the_databases_numbers(tmp_path, spec_file):
    db = tmp_path / "s.sqlite"
    as_json(study("run", "mixtures:gpu", "--db", db, "--gpu", "a100-80gb", "--predict-only", "--json"))
    as_json(study("run", "matrix:gpu", "--db", db, "--gpu", "v100-32gb", "--predict-only", "--json"))
    spec = spec_file(name="context-tiny", base=dict(TINY_BASE, gc=True), grid={"seq_len": [64, 128], "attn": ["eager"]})
    as_json(study("run", spec, "--db", db, "--json"))
    as_json(study("import", _published(tmp_path), "--db", db, "--json"))
    out = tmp_path / "report"
    result = as_json(study("report", "--db", db, "--out", out, "--json"))
    kinds = {(f["study"], f["kind"]) for f in result["figures"]}
    assert kinds == {("mixtures", "mixtures"), ("matrix", "matrix"), ("context-tiny", "context"), ("all", "scatter")}
    for fig in result["figures"]:
        for path in fig["files"]:
            assert path.endswith((".png", ".svg")) and (out / path.split("/")[-1]).stat().st_size > 5000
    behind = json.loads((out / "report.json").read_text())
    db_rows = {r["id"]: r for r in rows(db)}
    for p in behind["studies"]["mixtures"]["figure"]["points"]:  # predicted only: the predictions
        r = db_rows[p["id"]]
        assert (p["peak_gb"], p["step_s"], p["zero"], p["mixture"]) == (r["predicted_peak_gb"], r["predicted_step_s"],
                                                                        r["config"]["zero"], r["tag"])
    for p in behind["studies"]["context-tiny"]["figure"]["points"]:  # ran: the measurements
        r = db_rows[p["id"]]
        assert (p["peak_gb"], p["step_s"], p["seq_len"], p["attn"]) == (r["peak_gb"], r["step_s"], r["config"]["seq_len"],
                                                                        r["config"]["attn"])
    for c in behind["studies"]["matrix"]["figure"]["cells"]:
        r = db_rows[c["id"]]
        assert (c["mixture"], c["step_s"], c["model"]) == (r["label"], r["predicted_step_s"], r["config"]["model"])
    mem = behind["scatter"]["memory"]
    measured = [r for r in db_rows.values() if r["status"] == "ok" and r["peak_gb"] and r["predicted_peak_gb"]]
    assert mem["n"] == len(measured) == 2 + 3  # two tiny runs, three published rows with memory
    errs = sorted(abs(r["predicted_peak_gb"] / r["peak_gb"] - 1) for r in measured)
    assert mem["worst"] == round(errs[-1], 4)
    md = (out / "report.md").read_text()
    assert "![mixtures](mixtures-mixtures.png)" in md and "predicted-vs-measured.png" in md


def test_report_of_an_unknown_study_or_a_missing_db(tmp_path):
    proc = study("report", "--db", tmp_path / "nope.sqlite", "--out", tmp_path / "r")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    study("run", "context:gpu", "--db", tmp_path / "s.sqlite", "--predict-only")
    proc = study("report", "--db", tmp_path / "s.sqlite", "--out", tmp_path / "r", "--study", "zzz")
    assert proc.returncode == 2 and "no study zzz" in proc.stderr and "context" in proc.stderr


def test_cpu_times_are_not_compared_with_gpu_predictions_and_any_sweep_gets_a_figure(tmp_path):
    """Issue 19, defect 7: the report set CPU step times against GPU predictions (-96% on every
    row), its scatter had no ticks at MB scale, and a sweep over other keys got no figure."""
    from ftmix.study.report import readable_log_axes, report
    from ftmix.study.store import Store

    store = Store(str(tmp_path / "s.sqlite"))
    for i, lr in enumerate((0.01, 0.02, 0.05)):
        store.upsert({"id": f"t{i}", "study": "lr-sweep", "trial_key": f"lr={lr}", "status": "ok", "device": "cpu",
                      "config": {"lr": lr, "zero": 0}, "label": "1 GPU + LoRA r8 + SDPA",
                      "peak_gb": 0.0031 + 0.0004 * i, "predicted_peak_gb": 0.0032 + 0.0004 * i,
                      "step_s": 2.5 + i, "predicted_step_s": 0.1})
    result = report(store, tmp_path / "r")
    store.close()
    assert {(f["study"], f["kind"]) for f in result["figures"]} == {("lr-sweep", "trials"), ("all", "scatter")}
    assert result["scatter"]["time"]["n"] == 0 and result["scatter"]["memory"]["n"] == 3
    md = (tmp_path / "r" / "report.md").read_text()
    assert "CPU run" in md and "-96%" not in md and "%" in md
    points = result["studies"]["lr-sweep"]["figure"]["points"]
    assert [p["mixture"] for p in points] == ["lr=0.01", "lr=0.02", "lr=0.05"]
    assert all(p["predicted_step_s"] is None and p["step_s"] == 2.5 + i for i, p in enumerate(points))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.scatter([3.1, 3.5, 3.9], [3.2, 3.6, 4.0])  # MB: inside one decade
    readable_log_axes(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and 3.0 <= t.get_position()[1] <= 4.2]
    plt.close(fig)
    assert labels, "no labelled tick inside the data's range"
