"""Start a run: in this process (one rank), or under torchrun / the deepspeed launcher for several
processes on this machine or several machines. The parent merges the ranks' records into run.json.

Multi-node: every node runs the same ``ftmix train ... --nnodes K --node-rank R --master-addr HOST``
(torchrun), or one node runs ``--launcher deepspeed --hostfile hosts`` (the deepspeed launcher starts
the others over ssh). ``output_dir`` should be on a filesystem all nodes share, so that the merged
record holds every rank.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ftmix.errors import FtmixError
from ftmix.job.config import TrainConfig
from ftmix.job.record import merge_ranks

STALE_LOCK_S = 600  # an op build takes a minute or two here; a lock older than this lost its owner


def clear_stale_locks(older_than_s: float = STALE_LOCK_S) -> int:
    """A run killed while DeepSpeed compiled an op leaves a lock that hangs every later run. Only
    old locks go: a fresh one belongs to a build another run is doing now."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    removed = 0
    for lock in Path(root).glob("**/lock"):
        try:
            if time.time() - lock.stat().st_mtime > older_than_s:
                lock.unlink()
                removed += 1
        except OSError:
            pass
    return removed


def rendezvous_port(cfg: TrainConfig) -> int:
    if cfg.master_port is not None:
        return cfg.master_port
    if cfg.nnodes > 1:
        return 29512  # every node must agree on it without talking first

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_command(cfg: TrainConfig, config_path: Path) -> list[str]:
    module = ["-m", "ftmix.train.worker", str(config_path)]
    port = str(rendezvous_port(cfg))
    if cfg.launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        cmd = [exe, "--master_port", port]
        if cfg.hostfile:
            cmd += ["--hostfile", cfg.hostfile, "--num_nodes", str(cfg.nnodes), "--master_addr", cfg.master_addr]
        cmd += ["--num_gpus", str(cfg.nproc), "--module", "ftmix.train.worker", str(config_path)]
        return cmd
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(cfg.nproc),
            "--nnodes", str(cfg.nnodes), "--node_rank", str(cfg.node_rank), "--master_addr", cfg.master_addr,
            "--master_port", port, *module]


def start_fresh(cfg: TrainConfig) -> None:
    """``--overwrite``: empty the run folder (preflight checked it holds only what a run writes)."""
    out = Path(cfg.output_dir).expanduser()
    if not (cfg.overwrite and out.is_dir()):
        return
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def launch(cfg: TrainConfig, progress=None, timeout: float | None = None) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranks = out / "ranks"
    if ranks.exists():
        shutil.rmtree(ranks)
    clear_stale_locks()
    if cfg.nproc == 1 and cfg.nnodes == 1:
        # lazy: the launcher is torch-free; a one-process run loads the training stack here
        from ftmix.train.measure import Interrupt
        from ftmix.train.run import train

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, Interrupt.handler) if main else None
        Interrupt.requested = False
        try:
            train(cfg, progress)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        return merge_ranks(out)
    config_path = out / "train_config.json"
    config_path.write_text(json.dumps(cfg.model_dump(), indent=1))
    cmd = worker_command(cfg, config_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads_per_process()))
    log_path = out / "launcher.log"
    with open(log_path, "w") as log:
        returncode = run_ranks(cmd, env, log, timeout)
    text = log_path.read_text(errors="replace")
    if returncode != 0:
        raise FtmixError(f"{cfg.launcher} exited with {returncode}: {first_rank_error(text)}"
                         f" (all ranks' output: {log_path})")
    return merge_ranks(out)


GRACE_S = 30  # after Ctrl-C, how long the ranks get to stop before they are killed


def run_ranks(cmd: list[str], env: dict, log, timeout: float | None = None) -> int:
    """Run the launcher in a process group of its own and wait. Ctrl-C (to this process, or to the
    terminal's whole group), a time-out or any other exit from here stops every rank: SIGINT to
    the group, then SIGKILL after ``GRACE_S``, so no rank lives on as an orphan. The launcher also
    dies with this process (PR_SET_PDEATHSIG) if it is killed outright."""
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc, signal.SIGTERM)
        raise FtmixError(f"training did not finish within {timeout} s") from None
    except BaseException:
        _stop_group(proc, signal.SIGINT)
        raise


def _stop_group(proc: subprocess.Popen, sig) -> None:
    for s, wait in ((sig, GRACE_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        break
    try:  # the ranks: the launcher may be gone while a rank of its group still runs
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def first_rank_error(log: str) -> str:
    """The first error line a rank wrote (ftmix's own); else the last exception raised; else nothing."""
    lines = [re.sub(r"^\[(rank|default)?\d+\]:\s*", "", line) for line in log.splitlines()]
    errors = [line[7:] for line in lines if line.startswith("error: ")]
    if errors:
        return errors[0]
    raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*?:", line)
              and "ChildFailedError" not in line]
    return raised[-1] if raised else "no error message"
