import json
import subprocess
import sys

import pytest

from ftmix.mixture import KEYS as MIXTURE_KEYS

KEYS = set(MIXTURE_KEYS)  # every declared mixture key


def test_paper_table_through_the_cli(cli):
    peaks = []
    for zero in (1, 2, 3):
        out = cli("estimate", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--gpus", "8", "--zero", str(zero),
                  "--offload", "none", "--lora", "0", "--seq-len", "256", "--micro-batch", "1", "--method", "paper",
                  "--json", check_json=True)
        peaks.append(round(out["peak_gb"], 2))
    assert peaks == [39.98, 27.73, 15.48]


def test_json_shape(cli):
    out = cli("estimate", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--gpus", "8", "--json", check_json=True)
    assert {"peak_gb", "breakdown_gb", "cpu_gb", "fits", "total_params", "trainable_params", "method", "mixture"} <= set(out)
    assert set(out["mixture"]) == KEYS
    assert out["mixture"]["attn"] == "fa2" and out["mixture"]["zero"] == 2 and out["trainable_params"] == 33_554_432
    assert out["fits"] is True and out["method"] == "analytic"
    assert abs(sum(out["breakdown_gb"].values()) - out["peak_gb"]) < 0.01
    assert out["cpu_gb"] > 0  # optimizer offload is on by default


def test_no_gpu_no_verdict(cli):
    out = cli("estimate", "--model", "llama-2-70b", "--json", check_json=True)
    assert out["fits"] is None and out["mixture"]["precision"] == "bf16" and out["time"] is None


def test_where_the_step_time_goes_on_the_gpu_named(cli):
    """Issue 22: estimate with a GPU gives plan's step time for the mixture, split by part, with
    the useful FLOPs and MFU; the table says it in a line, largest part first."""
    out = cli("estimate", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--lora", "16", "--zero", "0",
              "--grad-accum", "4", "--json", check_json=True)
    time = out["time"]
    parts = ("compute_s", "attention_s", "memory_bound_s", "communication_s", "offload_s", "optimizer_s",
             "overhead_s", "dequantize_s")
    assert time["grad_accum"] == 4 and time["effective_batch"] == 4
    assert sum(time[k] for k in parts) == pytest.approx(time["step_time_s"], abs=1e-3)
    assert 0 < time["mfu"] < 0.55 and time["tflops_per_step"] > 0
    table = cli("estimate", "--model", "llama-2-7b", "--gpu", "a100-80gb", "--lora", "16", "--zero", "0")
    assert "step time on a100-80gb" in table.stdout and "matmuls" in table.stdout and "MFU" in table.stdout


def test_does_not_fit(cli):
    out = cli("estimate", "--model", "llama-2-70b", "--gpu", "a100-80gb", "--zero", "0", "--offload", "none",
              "--lora", "0", "--json", check_json=True)
    assert out["fits"] is False and out["peak_gb"] > 1000


def test_table_for_people(cli):
    proc = cli("estimate", "--model", "llama-2-7b", "--gpu", "v100-32gb", "--gpus", "8", "--zero", "1")
    assert proc.returncode == 0
    assert "peak allocated" in proc.stdout and "fits" in proc.stdout and "fp16" not in proc.stderr


def test_lists(cli):
    models = cli("models", "--json", check_json=True)["models"]
    assert {"llama-2-7b", "falcon-180b", "smollm2-135m", "qwen2.5-7b"} <= {m["name"] for m in models}
    gpus = cli("gpus", "--json", check_json=True)["gpus"]
    assert len(gpus) >= 10 and all(g["memory_gb"] > 15 for g in gpus)


@pytest.mark.parametrize("args", [
    ["--model", "llama-9b"],
    ["--gpu", "gtx-1080"],
    ["--gpu", "v100-32gb", "--attn", "fa2"],
    ["--gpu", "t4-16gb", "--precision", "bf16"],
    ["--zero", "2", "--offload", "all"],
    ["--zero", "0", "--offload", "optimizer"],
    ["--seq-len", "5000"],
    ["--seq-len", "0"],
    ["--micro-batch", "-2"],
    ["--gpus", "0"],
    ["--seq-len", "lots"],
    ["--method", "guess"],
    ["--lora-targets", "nothing_here"],
    ["--safety-margin", "1.5"],
    ["--no-such-flag"],
    ["--model", "/nonexistent/config.json"],
])
def test_bad_input_is_one_line_and_exit_2(cli, args):
    proc = cli("estimate", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_malformed_config_file(cli, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    proc = cli("estimate", "--model", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_estimate_path_imports_no_torch():
    code = ("import sys; from ftmix.cli.app import app; from ftmix.estimate import estimate; "
            "from ftmix.catalog import load_model; from ftmix.mixture import Mixture; "
            "estimate(load_model('llama-2-7b'), Mixture()); "
            "bad = [m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_users_deepspeed_json_drives_the_estimate(cli, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": "auto", "overlap_comm": True}}))
    out = cli("estimate", "--model", "llama-2-7b", "--gpus", "8", "--deepspeed", str(ds), "--json", check_json=True)
    assert out["mixture"]["zero"] == 3 and out["mixture"]["offload"] == "optimizer"
    # HF's "auto" reduce bucket is hidden^2 elements: one 16-bit buffer on stage 3
    assert out["breakdown_gb"]["zero_buffers"] == round(2 * 4096 * 4096 / 1e9, 3)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": 1e6, "overlap_comm": True}}))
    out = cli("estimate", "--model", "llama-2-7b", "--gpus", "8", "--deepspeed", str(small), "--json", check_json=True)
    assert out["mixture"]["zero"] == 2 and out["mixture"]["offload"] == "none"
    assert out["breakdown_gb"]["zero_buffers"] in (0.0, 0.004)  # two 1e6 buckets, only after the loss head
    plan = cli("plan", "--model", "llama-2-7b", "--gpus", "8", "--deepspeed", str(ds), "--json", check_json=True)
    assert all(c["mixture"]["zero"] == 3 and c["mixture"]["offload"] == "optimizer" for c in plan["candidates"])


def test_deepspeed_json_errors_are_one_line(cli, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    proc = cli("estimate", "--zero", "2", "--deepspeed", str(ds))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "contradicts" in proc.stderr
    ds.write_text("{not json")
    proc = cli("estimate", "--deepspeed", str(ds))
    assert proc.returncode == 2 and proc.stderr.startswith("error: DeepSpeed config") and "not valid JSON" in proc.stderr


def test_grad_accum_one_drops_the_gradients_from_the_forward(ftmix):
    """--grad-accum 1 on one GPU without DeepSpeed: the forward runs without gradients (full
    fine-tuning peaks lower by about its gradients); DeepSpeed's stages keep their buffers."""
    full = ["estimate", "--model", "llama-2-7b", "--zero", "0", "--offload", "none", "--lora", "0",
            "--precision", "bf16-true", "--seq-len", "2048", "--micro-batch", "2", "--json"]
    code, out, err = ftmix(*full)
    kept = json.loads(out)
    code, out, err = ftmix(*full, "--grad-accum", "1")
    one = json.loads(out)
    assert code == 0 and kept["grad_accum"] is None and one["grad_accum"] == 1
    assert one["breakdown_gb"]["gradients"] == 0 and kept["breakdown_gb"]["gradients"] == pytest.approx(13.48, abs=0.01)
    assert kept["peak_gb"] - one["peak_gb"] == pytest.approx(13.48, abs=0.01)
    assert any(n.startswith("gradients: none before the backward") for n in one["notes"])
    assert any("--grad-accum 1" in n for n in kept["notes"])
    zero2 = ["estimate", "--model", "llama-2-7b", "--zero", "2", "--offload", "none", "--lora", "0", "--json"]
    same = [json.loads(ftmix(*zero2, *extra)[1])["peak_gb"] for extra in ((), ("--grad-accum", "1"))]
    assert same[0] == same[1]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_grad_accum_must_be_a_positive_whole_number(ftmix, value):
    code, out, err = ftmix("estimate", "--model", "llama-2-7b", "--grad-accum", value)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--grad-accum" in lines[0]


def test_nvme_offload_is_said_and_keeps_host_ram_to_the_swap_buffers(tmp_path, capsys):
    """Issue 19, defect 9: NVMe offload in a DeepSpeed JSON was estimated as CPU offload, silently."""
    import json

    from ftmix.cli import main

    def run(device):
        path = tmp_path / f"{device}.json"
        path.write_text(json.dumps({"zero_optimization": {
            "stage": 3, "offload_optimizer": {"device": device, "nvme_path": "/local_nvme"},
            "offload_param": {"device": device, "nvme_path": "/local_nvme"}}, "bf16": {"enabled": True}}))
        try:
            main(["estimate", "--model", "llama-2-70b", "--gpus", "8", "--lora", "0", "--deepspeed", str(path), "--json"])
        except SystemExit as exc:
            assert exc.code in (0, None)
        return json.loads(capsys.readouterr().out)

    cpu, nvme = run("cpu"), run("nvme")
    assert nvme["peak_gb"] == cpu["peak_gb"]  # the GPU holds the same
    assert cpu["cpu_gb"] > 500 and nvme["cpu_gb"] < 0.1 * cpu["cpu_gb"]
    # 8 ranks x (5 x 1e8 x 2 B of parameter buffers + 4 x min(1e9, 69e9 / 8) x 4 B of optimizer buffers)
    assert nvme["cpu_gb"] == pytest.approx(8 * (1.0 + 16.0), rel=1e-3)
    note = next(n for n in nvme["notes"] if "NVMe" in n)
    assert "/local_nvme" in note and "swap buffers" in note
    assert not any("NVMe" in n for n in cpu["notes"])


def test_labels_say_what_holds_the_bytes(capsys):
    """Issue 19, defect 11: "zero buffers" on plain DDP; autocast's weight copies shown as the loss
    head; ZeRO-3 above ZeRO-2 with no reason given."""
    import json

    from ftmix.cli import main

    def run(*args):
        try:
            main(["estimate", *args])
        except SystemExit as exc:
            assert exc.code in (0, None)
        return capsys.readouterr().out

    ddp = run("--model", "llama-2-7b", "--zero", "0", "--gpus", "2", "--lora", "0")
    assert "DDP gradient buckets" in ddp and "zero buffers" not in ddp
    full = json.loads(run("--model", "llama-2-7b", "--zero", "0", "--lora", "0", "--gc", "--json"))
    copies, head = full["breakdown_gb"]["autocast_copies"], full["breakdown_gb"]["loss_head"]
    assert copies == pytest.approx(6.74e9 * 2 / 1e9, rel=0.05) and head < 1  # every 16-bit weight, not logits
    small = run("--model", "smollm2-135m", "--zero", "3", "--offload", "none", "--gpus", "4")
    assert "ZeRO-3 peaks" in small and "above ZeRO-2 here" in small and "gathered parameters (ZeRO-3) +" in small
