"""The study's SQLite store: one row per trial (planned, run, imported), written in transactions with
the write-ahead log, so a sweep killed at any moment (SIGKILL included) keeps every finished trial
and a re-run resumes. A file that is not an ftmix study database is refused, never overwritten.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from ftmix.errors import FtmixError

FORMAT = "ftmix-study"
VERSION = "1"
# outcomes that end a trial; "running" and "pending" are re-run by the next `study run`
FINISHED = ("ok", "oom", "error", "timeout", "predicted_oom", "predicted", "invalid")
COLUMNS = {
    "id": "TEXT PRIMARY KEY", "study": "TEXT", "tag": "TEXT", "repeat": "INTEGER", "trial_key": "TEXT",
    "config": "TEXT",  # the trial's train keys (JSON)
    "source": "TEXT",  # run | import:run.json | import:published
    "status": "TEXT", "pid": "INTEGER", "owner": "INTEGER", "slurm_job": "TEXT", "started": "REAL", "finished": "REAL", "runs": "INTEGER DEFAULT 0", "error": "TEXT",
    "label": "TEXT",  # the mixture that ran (or was predicted)
    "inputs": "TEXT",  # what calibration needs to predict again: model config, mixture, GPU, effective batch
    "peak_gb": "REAL", "peak_what": "TEXT",  # gpu_allocated | twin_device | reserved | device_total
    "step_s": "REAL", "tokens_per_s": "REAL", "final_loss": "REAL",
    "predicted_peak_gb": "REAL", "predicted_step_s": "REAL", "predicted_fits": "INTEGER",
    "device": "TEXT", "gpu": "TEXT", "hardware": "TEXT", "versions": "TEXT", "git_commit": "TEXT",
    "record": "TEXT",  # the whole run.json (or published row)
}
JSON_COLUMNS = ("config", "inputs", "hardware", "versions", "record")


class Store:
    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser()
        _check_file(self.path, create)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            fresh = self._check()  # before anything is written: a foreign file stays byte for byte as it was
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if fresh:
                self._create()
        except sqlite3.DatabaseError as exc:
            raise FtmixError(f"{self.path} is not a usable ftmix study database ({exc})") from None

    def _check(self) -> bool:
        """True for an empty database (ours to create); refuses anything but an ftmix study store."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return True
        if "meta" not in tables:
            raise FtmixError(f"{self.path} is an SQLite database of something else (tables: "
                             f"{', '.join(sorted(tables))}); use another --db")
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise FtmixError(f"{self.path} is not an ftmix study database; use another --db")
        if meta.get("version") != VERSION:
            raise FtmixError(f"{self.path} is a study database of format version {meta.get('version')}; "
                             f"this ftmix reads version {VERSION}")
        self.db.execute("SELECT count(*) FROM trials").fetchone()  # a damaged table fails here, not mid-sweep
        have = {r[1] for r in self.db.execute("PRAGMA table_info(trials)")}
        for name in [c for c in COLUMNS if c not in have]:  # a store from an earlier ftmix of this version
            self.db.execute(f'ALTER TABLE trials ADD COLUMN "{name}" {COLUMNS[name]}')
        return False

    def _create(self) -> None:
        cols = ", ".join(f'"{k}" {v}' for k, v in COLUMNS.items())
        with self.transaction():
            self.db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)])
            self.db.execute(f"CREATE TABLE trials ({cols})")

    def transaction(self):
        return _Transaction(self.db)

    def upsert(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {unknown}")
        values = {k: (json.dumps(v) if k in JSON_COLUMNS and v is not None else v) for k, v in row.items()}
        keys = list(values)
        names = ", ".join(f'"{k}"' for k in keys)
        update = ", ".join(f'"{k}"=excluded."{k}"' for k in keys if k != "id")
        with self.transaction():
            self.db.execute(f"INSERT INTO trials ({names}) VALUES ({', '.join('?' for _ in keys)}) "
                            f"ON CONFLICT(id) DO UPDATE SET {update}", [values[k] for k in keys])

    def plan_trial(self, row: dict) -> None:
        """Add a trial if new; a known trial keeps what it has (its outcome above all)."""
        values = {k: (json.dumps(v) if k in JSON_COLUMNS and v is not None else v) for k, v in row.items()}
        keys = list(values)
        with self.transaction():
            self.db.execute(f"INSERT OR IGNORE INTO trials ({', '.join(chr(34) + k + chr(34) for k in keys)}) "
                            f"VALUES ({', '.join('?' for _ in keys)})", [values[k] for k in keys])

    def get(self, trial_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM trials WHERE id=?", (trial_id,)).fetchone()
        return None if row is None else _decode(row)

    def trials(self, study: str | None = None, where: str = "", args: tuple = ()) -> list[dict]:
        sql = "SELECT * FROM trials"
        clauses = (["study=?"] if study else []) + ([where] if where else [])
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self.db.execute(sql + " ORDER BY rowid", ((study,) if study else ()) + args).fetchall()
        return [_decode(r) for r in rows]

    def studies(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT study FROM trials ORDER BY rowid")]

    def claim(self, trial_id: str, seen: str) -> bool:
        """Take a trial for this sweep, atomically. ``seen``: its status when this sweep planned it.
        False when another live sweep is running it, or has ended it since: two sweeps on one
        database share the work instead of running a trial twice."""
        me = os.getpid()
        with self.transaction():
            row = self.db.execute("SELECT status, owner FROM trials WHERE id=?", (trial_id,)).fetchone()
            if row is None:
                return False
            if row["status"] == "running":
                if row["owner"] not in (None, me) and alive(row["owner"]):
                    return False
            elif row["status"] != seen:
                return False
            self.db.execute("UPDATE trials SET status='running', owner=?, started=?, runs=runs+1, error=NULL "
                            "WHERE id=?", (me, time.time(), trial_id))
        return True

    def close(self) -> None:
        self.db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: a trial's row is written whole or not at all."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, exc, tb):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for k in JSON_COLUMNS:
        if out.get(k) is not None:
            out[k] = json.loads(out[k])
    return out


def _check_file(path: Path, create: bool) -> None:
    if path.is_dir():
        raise FtmixError(f"--db {path} is a folder, not a database file")
    if not path.exists():
        if not create:
            raise FtmixError(f"--db {path} does not exist")
        if not path.parent.exists():
            raise FtmixError(f"--db {path}: folder {path.parent} does not exist")
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\x00":
        raise FtmixError(f"{path} is not an SQLite database (corrupt, or another kind of file); "
                         "it is left as it is: use another --db")
