"""benchmarks/published.py: the report's shape, and a source that misses the goal explained with
the measured reason: its own framework's code simulated at each row's setup (litgpt_twin.py's and
torchtune_twin.py's committed results)."""

import json
import shutil
import sys
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
ROWS = Path(__file__).resolve().parent / "data" / "litgpt_rows.jsonl"  # three published litgpt rows, as in shared/data
sys.path.insert(0, str(RESULTS.parent))


def test_the_litgpt_rows_are_explained_by_litgpts_own_code(tmp_path):
    import published

    without = published.main(["--rows", str(ROWS), "--out", str(tmp_path)])
    assert without["measured_reasons"] == {} and "litgpt's own code" not in (tmp_path / "published.md").read_text()

    shutil.copy(RESULTS / "litgpt_twin.json", tmp_path / "litgpt_twin.json")
    report = published.main(["--rows", str(ROWS), "--out", str(tmp_path)])
    litgpt = report["measured_reasons"]["litgpt"]
    rows = [r for r in litgpt["rows"] if "litgpt_error" in r]
    # the committed explanation agrees with today's predictions for these rows
    by_id = {r["id"]: r for r in report["rows"]}
    assert len(by_id) == 3 and set(by_id) <= {r["id"] for r in rows}
    for r in rows:
        if r["id"] not in by_id:
            continue  # rows of the committed result beyond this fixture's three
        assert by_id[r["id"]]["source"].startswith("litgpt/")
        assert by_id[r["id"]]["memory"]["measured_gb"] == r["measured_gb"]
        assert by_id[r["id"]]["memory"]["predicted_gb"] == r["ftmix_gb"]
    # the framework's own code meets the goal on these rows where ftmix's HF model does not
    assert litgpt["summary"]["litgpt_median"] <= 0.03 < litgpt["summary"]["ftmix_median"]
    assert litgpt["summary"]["litgpt_worst"] <= 0.10 < litgpt["summary"]["ftmix_worst"]
    md = (tmp_path / "published.md").read_text()
    assert "## Why the litgpt rows miss, measured: litgpt's own code" in md
    assert all(f"| {r['id']} | {r['measured_gb']} | {r['litgpt_simulated_gb']} |" in md
               for r in rows if "below_model_states_gb" not in r)
    # the rows that ran out of memory on one GPU: litgpt's own peak passes the GPU's memory there too
    ooms = [r for r in litgpt["rows"] if r.get("measured_gb") == "OOM" and "fsdp" not in r]
    assert ooms and all(not r["litgpt_fits"] and r["litgpt_simulated_gb"] > r["gpu_gb"] for r in ooms)
    # issue 21, the FSDP rows: litgpt's step under torch FSDP1 as Fabric wraps it comes closer than
    # ftmix's FSDP2 estimate but leaves a gap of its own (litgpt_twin.md; docs/estimate.md, FSDP2)
    fsdp = litgpt["summary"]["fsdp"]
    assert fsdp["n"] >= 8 and fsdp["litgpt_median"] < fsdp["ftmix_median"]
    json.loads((tmp_path / "published.json").read_text())  # the JSON stays valid


def test_the_torchtune_rows_are_explained_by_torchtunes_own_code(tmp_path):
    """benchmarks/torchtune_twin.py's committed result: torchtune 0.1.1's own LoRA step holds a few
    percent more than ftmix's HF model; the reserved figures sit above even that allocated peak
    (the allocator's cache, which no CPU run measures); the figure without a stat is its allocated
    peak."""
    import published

    rows = Path(__file__).resolve().parent / "data" / "torchtune_rows.jsonl"  # the four rows, as in shared/data
    shutil.copy(RESULTS / "torchtune_twin.json", tmp_path / "torchtune_twin.json")
    report = published.main(["--rows", str(rows), "--out", str(tmp_path)])
    torchtune = report["measured_reasons"]["torchtune"]
    by_id = {r["id"]: r for r in report["rows"]}
    assert len(by_id) == 4 and set(by_id) == {r["id"] for r in torchtune["rows"]}
    for r in torchtune["rows"]:
        # the committed explanation agrees with today's predictions
        assert by_id[r["id"]]["memory"]["predicted_gb"] == r["ftmix_gb"]
        assert by_id[r["id"]]["memory"]["measured_gb"] == r["measured_gb"]
        # ftmix's HF model is within 3.5% of torchtune's own allocated peak, and below it
        assert -0.035 <= r["torchtune_vs_ftmix_allocated"] < 0
        if r["measured_what"] == "reserved":  # above the framework's own allocated peak: the allocator
            assert r["measured_gb"] > 1.05 * r["torchtune_allocated_gb"]
            assert r["measured_gb"] - r["torchtune_allocated_gb"] > 10 * (r["ftmix_reserved_gb"] - r["ftmix_allocated_gb"])
    llama3 = next(r for r in torchtune["rows"] if "Llama-3" in r["model"])
    assert abs(llama3["measured_over_torchtune_allocated"]) < 0.01
    md = (tmp_path / "published.md").read_text()
    assert "## Why the torchtune rows miss, measured" in md
    assert all(f"| {r['id']} | {r['measured_gb']} ({r['measured_what']}) | {r['torchtune_allocated_gb']} |" in md
               for r in torchtune["rows"])


def test_the_published_report_has_the_shape_the_issue_asks_for(tmp_path):
    """benchmarks/published.py's JSON: ``overall`` memory and runtime as fractions with n, per
    source, per row (predicted vs measured), OOM rows checked as "does not fit", and the rows it
    cannot represent with the missing feature; the markdown carries the same tables."""
    import published

    rows = tmp_path / "rows.jsonl"
    fixture = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    # an OOM row (litgpt) and a row with a step time (PEFT), as in shared/data
    oom, timed = [json.loads(line) for line in (ROWS.parent / "report_rows.jsonl").read_text().splitlines()]
    qlora = dict(fixture[0], id="made-up-qlora", method="qlora", quantization="torchao NF4")
    rows.write_text("\n".join(json.dumps(r) for r in fixture + [oom, timed, qlora]) + "\n")
    report = published.main(["--rows", str(rows), "--out", str(tmp_path)])
    assert set(report) >= {"overall", "by_source", "rows", "not_represented"}
    for quantity in ("memory", "runtime"):
        assert set(report["overall"][quantity]) == {"median", "worst", "n"}
    memory = report["overall"]["memory"]
    errors = [abs(r["memory"]["error"]) for r in report["rows"] if "memory" in r]
    assert memory["n"] == len(errors) == 4 and memory["worst"] == round(max(errors), 4) < 1  # a fraction
    assert report["overall"]["runtime"]["n"] == 1 and report["by_source"]["peft/method_comparison"]["runtime"]["n"] == 1
    assert report["by_source"]["litgpt/config_hub"]["memory"]["n"] == 2
    for r in report["rows"]:
        if "memory" in r:
            # errors are fractions of the measured figure (the GB shown are rounded to 3 places)
            assert r["memory"]["error"] == pytest.approx(r["memory"]["predicted_gb"] / r["memory"]["measured_gb"] - 1,
                                                         abs=2e-4)
    (checked,) = [r for r in report["rows"] if "oom" in r]
    assert checked["id"] == oom["id"] and checked["oom"]["ok"] and not checked["oom"]["predicted_fits"]
    assert report["goal"]["oom_rows_predicted_to_fit"] == []
    assert report["not_represented"] == [{"id": "made-up-qlora", "source": fixture[0]["source_group"],
                                          "trust": fixture[0]["trust"], "why": "torchao NF4 (torchtune's own quantized linear; ftmix models bitsandbytes')"}]
    md = (tmp_path / "published.md").read_text()
    assert "## By source" in md and "| torchao NF4 (torchtune's own quantized linear; ftmix models bitsandbytes') | 1 |" in md


def test_litgpts_qlora_rows_lie_between_its_step_under_the_two_bitsandbytes_versions():
    """Issue 20's measured reason (benchmarks/litgpt_qlora_twin.py, run apart with litgpt installed):
    litgpt's own QLoRA step simulated with bitsandbytes 0.50.2 holds less than the row measured and
    with 0.41.1's saved input more; ftmix's prediction is the committed published one."""
    here = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    twin = json.loads((here / "litgpt_qlora_twin.json").read_text())["rows"]
    published = {r["id"]: r for r in json.loads((here / "published.json").read_text())["rows"]}
    assert len(twin) == 4
    for r in twin:
        assert r["ftmix_gb"] < r["litgpt_bnb_0_50_gb"] < r["measured_gb"] < r["litgpt_bnb_0_41_gb"], r
        assert r["ftmix_gb"] == published[r["id"]]["memory"]["predicted_gb"]


def test_the_committed_fsdp_and_longest_context_rows_are_predicted_as_today():
    """Issue 21: the FSDP rows are estimated as FSDP2 mixtures and the longest-context rows by
    `plan --max-seq-len`'s search; the committed report holds today's predictions."""
    import published

    from ftmix.study.published import load_rows, represent

    report = json.loads((RESULTS / "published.json").read_text())
    raw = {r["id"]: r for r in load_rows(RESULTS.parent / "data" / "published-rows.jsonl")}
    context = [r for r in report["rows"] if "max_context" in r]
    fsdp = [r for r in report["rows"] if r.get("sharding") == "fsdp2"]
    assert len(context) >= 6 and len(fsdp) >= 20
    assert report["fsdp"]["rows"] == len(fsdp) and report["max_context"]["n"] == len(context)
    for r in context + fsdp:
        again = published.predict(represent(raw[r["id"]]))
        assert again.get("max_context") == r.get("max_context") and again.get("memory") == r.get("memory")


def _timed(id, job, measured, predicted, what="tokens_per_s_per_gpu", seq=512, micro=4):
    return {"id": id, "source": job, "model": "m", "gpu": "a100-80gb", "seq_len": seq, "micro_batch": micro,
            "runtime": {"what": what, "measured": measured, "predicted": predicted}}


def test_rankings_compare_the_mixtures_of_one_job_as_plan_orders_them():
    """Issue 22: pairs of one job's measured mixtures, in time per token per GPU whatever unit each row
    gave (a rate, or seconds per micro step); measured ties (3%) left out; the reversed ones listed."""
    import published

    rows = [_timed("a", "j", 1000, 1200), _timed("b", "j", 2000, 2500),  # b faster, predicted faster: right
            _timed("c", "j", 1010, 900),  # a tie with a (1%): left out; against b: right
            # seconds per micro step (2048 tokens): 0.8 s = 2560 tokens/s, faster than all, predicted slowest
            _timed("d", "j", 0.8, 4.0, what="s_per_micro_step"),
            _timed("e", "other", 10, 20)]  # alone in its job
    r = published.rankings(rows)
    assert (r["pairs"], r["ties_left_out"]) == (5, 1)
    assert r["right"] == 2 and r["share_right"] == 0.4
    assert {(w["faster_measured"], w["slower_measured"]) for w in r["wrong"]} == {("d", "a"), ("d", "b"), ("d", "c")}
    committed = json.loads((RESULTS / "published.json").read_text())["rankings"]
    assert committed["pairs"] >= 15 and committed["share_right"] >= 0.9
