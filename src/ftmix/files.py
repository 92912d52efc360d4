"""Reading the user's files: one clear FtmixError (a missing file, a folder, bytes that are not
UTF-8, malformed JSON) instead of a traceback, before anything heavy loads."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from ftmix.errors import FtmixError


def read_text(path: str | Path, what: str) -> str:
    """The file's text, decoded as UTF-8 (config.json, YAML, calibration and data files all are)."""
    path = Path(path).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FtmixError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except IsADirectoryError:
        raise FtmixError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise FtmixError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_json(path: str | Path, what: str):
    """The file's JSON; NaN and Infinity, which Python's parser accepts, are refused."""
    text = read_text(path, what)

    def refuse(token):
        raise ValueError(f"{token} is not a number JSON allows")

    def number(token):
        value = float(token)
        if not math.isfinite(value):
            raise ValueError(f"{token} is out of range")
        return value

    try:
        return json.loads(text, parse_constant=refuse, parse_float=number)
    except (json.JSONDecodeError, ValueError) as exc:
        raise FtmixError(f"{what} {path} is not valid JSON: {exc}") from None


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def proc_bytes(path: str, key: str) -> int | None:
    """A ``key:  N kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes;
    None where there is no such file or line (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def json_lines(text: str, path) -> list[dict]:
    """JSON Lines: one object per non-blank line; the first bad line is one FtmixError naming it."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FtmixError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise FtmixError(f"{path}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


@contextlib.contextmanager
def engine_output_to(log: Path):
    """Point file descriptors 1 and 2 at a log file for a while: what the engines print (DeepSpeed's
    op builds and config notes, HF's and torch's warnings, blank lines) is there, not on the screen."""
    if str(log) != os.devnull:
        log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def writable_path(path: str | Path, what: str) -> None:
    """A folder that is, or can be made, writable: none of its parts a file, its first existing
    ancestor writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FtmixError(f"{what} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise FtmixError(f"{what} {path}: {probe} is a file, not a folder")
    try:  # access() says yes to root on a read-only file system: try it
        os.rmdir(tempfile.mkdtemp(prefix=".ftmix-probe-", dir=probe))
    except OSError as exc:
        raise FtmixError(f"{what} {path}: {probe} is not writable ({exc.strerror or exc})") from None
