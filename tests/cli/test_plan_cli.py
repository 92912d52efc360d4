import json

import pytest

from ftmix.mixture import KEYS as MIXTURE_KEYS

KEYS = set(MIXTURE_KEYS)  # every declared mixture key


def test_plan_json(cli):
    out = cli("plan", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--gpus", "8", "--offload", "optimizer",
              "--json", check_json=True)
    best = out["best"]
    assert set(best["mixture"]) == KEYS and best["fits"] is True
    assert best["mixture"]["offload"] == "optimizer" and best["mixture"]["zero"] in (1, 2)
    assert best["label"].startswith("ZeRO-") and best["step_time_s"] > 0 and best["peak_gb"] > 13
    assert len(out["candidates"]) == 2 * 2 * 3 + 1 * 2 * 3  # zero 1-3 x gc x attn (+ nothing for zero 0 with offload)


def test_plan_nothing_fits(cli):
    args = ("plan", "--model", "falcon-180b", "--gpu", "v100-32gb", "--gpus", "8", "--nodes", "2",
            "--offload", "optimizer", "--seq-len", "2048", "--effective-batch", "16")
    proc = cli(*args, "--json")
    out = __import__("json").loads(proc.stdout)
    assert out["best"] is None and "--seq-len" in out["message"]
    proc = cli(*args)
    assert proc.returncode == 3 and "nothing fits" in proc.stdout  # 3: nothing fits (README)


def test_plan_table(cli):
    proc = cli("plan", "--model", "llama-2-13b", "--gpu", "v100-32gb", "--gpus", "8", "--seq-len", "4096",
               "--offload", "optimizer")
    assert proc.returncode == 0 and "why it wins" in proc.stdout and "runners-up" in proc.stdout


def test_matrix_json_and_png(cli, tmp_path):
    png = tmp_path / "matrix.png"
    out = cli("matrix", "--gpu", "v100-32gb", "--gpus", "8", "--models", "llama-2-7b,llama-2-70b",
              "--seq-lens", "256,4096", "--offload", "optimizer", "--png", str(png), "--json", check_json=True)
    assert [(c["model"], c["seq_len"]) for c in out["cells"]] == [
        ("llama-2-7b", 256), ("llama-2-7b", 4096), ("llama-2-70b", 256), ("llama-2-70b", 4096)]
    assert out["cells"][3]["best"]["mixture"]["gc"] is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_matrix_table(cli):
    proc = cli("matrix", "--gpu", "a100-80gb", "--gpus", "8", "--models", "llama-2-7b", "--seq-lens", "256")
    assert proc.returncode == 0 and "FA2" in proc.stdout


@pytest.mark.parametrize("args", [
    ["plan", "--gpu", "v100-32gb", "--attn", "fa2"],
    ["plan", "--model", "nope"],
    ["plan", "--gpu", "b200"],
    ["plan", "--effective-batch", "0"],
    ["plan", "--calibration", "/no/such/file.json"],
    ["plan", "--zero", "1", "--offload", "all"],
    ["matrix", "--seq-lens", "256,abc"],
    ["matrix", "--seq-lens", "-5"],
    ["matrix", "--models", ""],
    ["matrix", "--models", "llama-2-7b,gpt-5"],
])
def test_bad_input(cli, args):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_max_seq_len_through_the_cli(ftmix):
    """`plan --max-seq-len` (issue 21): the longest context, --json, and its bad input."""
    code, out, err = ftmix("plan", "--model", "mistral-7b", "--gpu", "rtx4090-24gb", "--zero", "0",
                           "--quantize", "bnb.nf4", "--gc", "--attn", "fa2", "--max-seq-len", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["candidates"]) == 1 and result["granularity"] == 64
    assert result["best"]["max_seq_len"] == result["best"]["mixture"]["seq_len"] > 4096
    code, out, err = ftmix("plan", "--model", "mistral-7b", "--seq-len", "512", "--max-seq-len")
    assert code == 2 and err.startswith("error: ") and "drop --seq-len" in err
    code, out, err = ftmix("plan", "--model", "mistral-7b", "--max-seq-len", "--granularity", "0")
    assert code == 2 and "granularity" in err


def test_matrix_prints_the_longest_context_per_cell(ftmix):
    """`matrix --max-seq-len` (issue 21): models down, GPUs across, each cell the farthest-reaching
    candidate's longest context, the same figure `plan --max-seq-len` gives first."""
    from ftmix import api

    code, out, err = ftmix("matrix", "--max-seq-len", "--models", "llama-2-7b,llama-3-8b", "--gpu",
                           "rtx4090-24gb,a100-80gb", "--lora", "0", "--gpus", "1", "--granularity", "128", "--json")
    assert code == 0, err
    cells = json.loads(out)["cells"]
    assert [(c["model"], c["gpu"]) for c in cells] == [(m, g) for m in ("llama-2-7b", "llama-3-8b")
                                                      for g in ("rtx4090-24gb", "a100-80gb")]
    for c in cells:
        first = api.max_context(c["model"], c["gpu"], granularity=128, lora=0, gpus=1)[0]
        assert c["max_seq_len"] == first.max_seq_len and c["label"] == first.mixture.label
    eight = {c["gpu"]: c for c in cells if c["model"] == "llama-3-8b"}
    assert (eight["rtx4090-24gb"]["max_seq_len"] or 0) <= eight["a100-80gb"]["max_seq_len"]
    code, table, _ = ftmix("matrix", "--max-seq-len", "--models", "llama-2-7b", "--gpu", "a100-80gb")
    assert code == 0 and "longest context that fits" in table and "4,096" in table
    for args, says in ((["--gpu", "a100-80gb,h100-80gb"], "a comma list only with --max-seq-len"),
                       (["--max-seq-len", "--png", "x.png"], "drop it with --max-seq-len"),
                       (["--max-seq-len", "--granularity", "-1"], "granularity")):
        code, _, err = ftmix("matrix", "--models", "llama-2-7b", *args)
        assert code == 2 and err.startswith("error: ") and says in err, err
