"""`ftmix train` refuses what cannot work before anything heavy loads, and keeps what it made
(issue 9: items 5-10, 13, 16-19, 22). The refusals run the real CLI in this process."""

import json

import pytest
import yaml

from tests.train.conftest import TINY, run_train_cli, tiny_flags, yaml_args


def _train(ftmix_main, *args):
    from ftmix.cli import main

    try:
        main(["train", *args])
        return 0
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def refuse(capsys, tmp_path):
    """Run train in this process; return its single error line (exit code 2 asserted)."""
    def run(*args, base=True):
        flags = yaml_args(tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=1)) if base else []
        code = _train(None, *flags, *args)
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
        return lines[0]

    return run


def test_empty_data_file(refuse, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "is empty" in refuse(f"data={empty}")


def test_fp16_on_cpu(refuse):
    assert "bf16 on CPU" in refuse("--precision", "fp16")


def test_unknown_scheduler(refuse):
    assert "scheduler" in refuse("scheduler=bogus")


def test_hidden_size_not_divisible_by_heads(refuse):
    assert "divisible" in refuse('model_overrides={"hidden_size": 66}')


def test_fa2_on_a_gpu_without_it(refuse):
    assert "FlashAttention-2" in refuse("--attn", "fa2", "--gpu", "v100-32gb")


def test_unknown_override_key(refuse):
    assert "bogus_key" in refuse('model_overrides={"bogus_key": 3}')


def test_template_without_the_dialogue(refuse):
    assert "{dialogue}" in refuse("template=Summarize: ")


def test_effective_batch_not_met(refuse):
    assert "not a multiple" in refuse("effective_batch=3", "--micro-batch", "2")


def test_a_model_too_big_for_this_machine(refuse, tmp_path):
    # 70B in fp32 with AdamW needs ~1 TB: refused with the figures, never built (the kernel would kill it)
    line = refuse("model=llama-2-70b", "random_init=true", "--lora", "0", "--zero", "0",
                  f"output_dir={tmp_path / 'big'}", base=False)
    assert "GB are available" in line


def test_overrides_merge_into_the_yaml(tmp_path):
    from ftmix.job.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model_overrides": TINY}))
    cfg = load_config(str(path), ['model_overrides={"num_hidden_layers": 1}'])
    assert cfg.model_overrides == {**TINY, "num_hidden_layers": 1}


def test_existing_checkpoints_need_resume(refuse, tmp_path):
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert "--resume" in refuse()


def test_a_checkpoint_cut_short_is_not_resumed_from(tmp_path):
    from ftmix.job.checkpoints import last_checkpoint

    for step, complete in ((2, True), (3, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(str(tmp_path)).endswith("checkpoint-2")


def test_first_rank_error_is_shown():
    from ftmix.train.launch import first_rank_error

    log = ("[rank0]: Traceback (most recent call last):\n[rank0]: IndexError: list index out of range\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n")
    assert first_rank_error(log) == "IndexError: list index out of range"
    assert first_rank_error("noise\nerror: data x holds no rows\nerror: second\n") == "data x holds no rows"


@pytest.mark.slow
def test_random_init_from_a_config_json_folder_saves_the_final_adapter(tmp_path):
    folder = tmp_path / "shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **TINY}))
    flags = tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2, model=str(folder), random_init=False,
                       model_overrides={})
    proc = run_train_cli(yaml_args(flags) + ["--gpu", "a100-80gb", "--json"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    final = tmp_path / "run" / "final"
    assert summary["artifacts"]["model"] == str(final) and (final / "adapter_config.json").is_file()
    # on CPU the A100's step-time prediction is not set against the CPU's step time
    assert "seconds per optimizer step" not in summary["comparison"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["predicted"]["step_time_s"] > 0 and record["measured"]["median_step_s"] > 0
    assert record["predicted"]["estimate"]["model"] == str(folder) and record["label"].startswith("1 GPU")
    # the engines' chatter is in the log, not on the user's screen
    assert "Warning" not in proc.stderr and (tmp_path / "run" / "train.log").is_file()


def test_threads_per_process_share_the_cores():
    import os

    from ftmix.job.config import TrainConfig

    cores = os.cpu_count()
    assert TrainConfig(nproc=2).threads_per_process() == max(1, cores // 2)
    assert TrainConfig(nproc=1).threads_per_process() == cores
    assert TrainConfig(nproc=2, threads=3).threads_per_process() == 3


@pytest.mark.slow
def test_interrupted_run_says_how_to_resume_and_resume_counts_its_own_steps(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    flags = yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=400, save_steps=1, keep_last=2))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "ftmix", "train", *flags], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    def saved_steps():
        return [int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json")]

    # keep_last=2 deletes checkpoint-3 once checkpoint-5 is saved: wait for any step >= 3
    deadline = time.time() + 300
    while max(saved_steps(), default=0) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; last checkpoint:" in err and "--resume" in err
    assert len(list(out.glob("checkpoint-*"))) <= 2  # keep_last
    saved = json.loads(next(out.glob("checkpoint-*/ftmix_checkpoint.json")).read_text())
    assert (saved["zero"], saved["lora"], saved["mixture"]["seq_len"]) == (0, 8, 128)  # what --resume compares
    again = run_train_cli(flags, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    last = max(saved_steps())
    done = run_train_cli(yaml_args(tiny_flags(out, zero=0, lora=8, max_steps=last + 2)) + ["--resume", "--json"],
                         timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout)["measured"]
    assert measured["steps"] == last + 2 and measured["steps_this_run"] == 2


def test_unknown_model_name_is_not_a_network_error(refuse):
    line = refuse("model=nope", "model_overrides={}", "random_init=false")
    assert "unknown model 'nope'" in line and "smollm2-135m" in line


def test_csv_with_other_columns_names_the_needed_ones(refuse, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("body,label\nhello,1\n")
    line = refuse(f"data={csv}")
    assert "dialogue" in line and "summary" in line and "body, label" in line


@pytest.mark.slow
def test_a_failing_rank_shows_its_own_error_line(tmp_path):
    # a tokenizer folder is read by each rank, not by the pre-flight
    flags = yaml_args(tiny_flags(tmp_path / "run", zero=2, lora=8, max_steps=1, tokenizer=str(tmp_path / "no-tok")))
    proc = run_train_cli(flags + ["--nproc", "2"], timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "cannot load tokenizer" in proc.stderr and "launcher.log" in proc.stderr


@pytest.mark.slow
def test_deepspeed_chatter_stays_in_the_log(tmp_path):
    proc = run_train_cli(yaml_args(tiny_flags(tmp_path / "run", zero=2, lora=8, max_steps=2)) + ["--json"],
                         timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for chatter in ("mismatch", "built successfully", "[WARNING]", "Warning", "[INFO]"):
        assert chatter not in proc.stderr, chatter
    log = (tmp_path / "run" / "train.log").read_text()
    assert "DeepSpeed" in log or "deepspeed" in log


@pytest.mark.slow
def test_out_of_memory_is_one_line_and_exit_code_3(tmp_path):
    """The twin's limit (a GPU's out-of-memory on CUDA): one error line naming where, exit 3, no traceback."""
    proc = run_train_cli(yaml_args(tiny_flags(tmp_path / "run", zero=0, lora=8, max_steps=2, memory_limit_gb=0.001)),
                         timeout=600)
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: device out of memory") and "train.log" in proc.stderr


def test_preflight_checks_the_mixture_a_users_deepspeed_json_sets(tmp_path):
    """Found while giving the run config one way to a Mixture (issue 24): pre-flight checked the
    flags' default mixture (ZeRO-2, optimizer offload) while the run trained the JSON's, so a resume
    of a stage-3 run was refused as "saved with zero=3; this run asks zero=2"."""
    from ftmix.job.checkpoints import checkpoint_record
    from ftmix.job.config import TrainConfig
    from ftmix.job.preflight import preflight

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}))
    cfg = TrainConfig(**tiny_flags(tmp_path / "run", deepspeed_config=str(ds)))
    m = preflight(cfg)
    assert (m.zero, m.offload, m.precision) == (3, "all", "bf16")
    assert checkpoint_record(cfg, m)["zero"] == 3
