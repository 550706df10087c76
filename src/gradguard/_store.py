"""The run store: one SQLite file per run, append-only, crash-safe, readable while written.

Guard writes a chunk of steps per ``log_every`` steps in one transaction. SQLite in WAL mode
makes each committed transaction durable against a killed process: after a SIGKILL the file
opens and holds every chunk committed before it, so at most the unflushed interval is lost.
Nothing is pickled: numbers are columns, structured values JSON, vectors raw float64 bytes.

Schema (``schema_version`` 1):

    meta(key TEXT PRIMARY KEY, value TEXT)            -- JSON values: run name, versions, config,
                                                          norm_type, module list, ...
    modules(id INTEGER PRIMARY KEY, name TEXT UNIQUE) -- module (group) names, ids in first-seen order
    steps(step INTEGER PRIMARY KEY, <one column per _rundata.STEP_COLUMNS entry: REAL, or
          INTEGER 0/1 for bool columns>, wall_time REAL)   -- written and read by column name;
          a store made before a column was declared gets it added (ALTER TABLE), reading NULL
    module_stats(step, module, metric, value REAL)     -- per-module scalars; metric is one of
          grad_norm, param_norm, update_ratio, error_norm, saturation, dead_fraction,
          preact_mean, preact_std (NULL means not measured / NaN)
    vectors(step, module, metric, data BLOB)           -- per-step vectors, e.g. metric
          'timestep_grad_norm' (||dL/dh_t|| over t), little-endian float64
    events(id, step, kind, payload TEXT)               -- JSON payload; kinds: skip, spike,
          nonfinite_location, forensics, ...
    findings(id, step, code, severity, message, location TEXT, evidence TEXT, remedy TEXT)

A store opened on an existing file appends: a resumed run keeps writing into the same file, and
re-written steps replace the old rows.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradguard._finding import Finding
from gradguard._history import Chunk
from gradguard._rundata import STEP_COLUMNS

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS steps(step INTEGER PRIMARY KEY, wall_time REAL);
CREATE TABLE IF NOT EXISTS module_stats(
    step INTEGER NOT NULL, module INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY(metric, step, module)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors(
    step INTEGER NOT NULL, module INTEGER NOT NULL, metric TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(metric, step, module)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER, kind TEXT NOT NULL, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS findings(
    id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER, code TEXT NOT NULL, severity TEXT NOT NULL,
    message TEXT NOT NULL, location TEXT NOT NULL, evidence TEXT NOT NULL, remedy TEXT NOT NULL);
"""


def _real(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else (None if math.isnan(x) else x)


def _reals(values: np.ndarray) -> list[float | None]:
    return [_real(v) for v in values.tolist()]


def _ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in (np.asarray(values) > 0).tolist()]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_default, allow_nan=True)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in the run store; use numbers, strings, lists or dicts.")


class RunStore:
    """Open (creating if needed) the run store at ``path``; see the module docstring for the schema."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a killed process (the WAL is in the OS's hands), not a power cut.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_step_columns()
        self._module_ids: dict[str, int] = dict((name, mid) for mid, name in self._db.execute("SELECT id, name FROM modules"))
        existing = self.meta
        if "schema_version" in existing and existing["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has run-store schema {existing['schema_version']}; this gradguard reads {SCHEMA_VERSION}.")
        if "schema_version" not in existing:
            self.set_meta(schema_version=SCHEMA_VERSION, created=time.time())
        if meta:
            self.set_meta(**meta)

    def _add_step_columns(self) -> None:
        """Give the steps table every declared column it lacks (new stores, and older ones)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(steps)")}
        for col in STEP_COLUMNS:
            if col.name not in have:
                self._db.execute(f"ALTER TABLE steps ADD COLUMN {col.name} {'INTEGER' if col.kind == 'bool' else 'REAL'}")
        self._step_columns = [row[1] for row in self._db.execute("PRAGMA table_info(steps)")]

    # ------------------------------------------------------------------ writing
    def _transaction(self):
        return _Transaction(self._db)

    def set_meta(self, **values: Any) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, _dumps(v)) for k, v in values.items()])

    def _module_id(self, name: str) -> int:
        mid = self._module_ids.get(name)
        if mid is None:
            mid = self._db.execute("INSERT INTO modules(name) VALUES (?)", (name,)).lastrowid
            self._module_ids[name] = mid
        return mid

    def write_chunk(self, chunk: Chunk) -> None:
        """Steps and per-module gradient norms of one chunk, in one transaction (probes: ``write_module_stats``)."""
        now = time.time()
        names = [c.name for c in STEP_COLUMNS]
        cells = [_ints(chunk.scalars[c.name]) if c.kind == "bool" else _reals(chunk.scalars[c.name]) for c in STEP_COLUMNS]
        rows = [(step, *values, now) for step, *values in zip(chunk.steps.tolist(), *cells)]
        sql = f"INSERT OR REPLACE INTO steps(step, {', '.join(names)}, wall_time) VALUES ({', '.join('?' * (len(names) + 2))})"
        with self._transaction():
            ids = [self._module_id(m) for m in chunk.module_names]
            self._db.executemany(sql, rows)
            stats = []
            for i, step in enumerate(chunk.steps.tolist()):
                stats.extend((step, mid, "grad_norm", _real(v)) for mid, v in zip(ids, chunk.modules[i].tolist()))
            self._db.executemany("INSERT OR REPLACE INTO module_stats VALUES (?, ?, ?, ?)", stats)

    def write_module_stats(self, step: int, metric: str, values: Mapping[str, float]) -> None:
        with self._transaction():
            rows = [(step, self._module_id(m), metric, _real(v)) for m, v in values.items()]
            self._db.executemany("INSERT OR REPLACE INTO module_stats VALUES (?, ?, ?, ?)", rows)

    def write_vector(self, step: int, module: str, metric: str, values: Iterable[float]) -> None:
        data = np.asarray(values, dtype="<f8").tobytes()
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", (step, self._module_id(module), metric, data))

    def add_event(self, step: int | None, kind: str, payload: Mapping[str, Any] | None = None) -> None:
        with self._transaction():
            self._db.execute("INSERT INTO events(step, kind, payload) VALUES (?, ?, ?)", (step, kind, _dumps(dict(payload or {}))))

    def add_findings(self, findings: Iterable[Finding]) -> None:
        rows = [
            (f.step, f.code, f.severity, f.message, _dumps(list(f.where)), _dumps(f.to_dict()["evidence"]), f.remedy)
            for f in findings
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO findings(step, code, severity, message, location, evidence, remedy) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )

    def replace_findings(self, findings: Iterable[Finding]) -> None:
        """The run's current diagnosis: earlier findings are superseded."""
        with self._transaction():
            self._db.execute("DELETE FROM findings")
        self.add_findings(findings)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    @property
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    @property
    def module_names(self) -> list[str]:
        return [name for (name,) in self._db.execute("SELECT name FROM modules ORDER BY id")]

    def steps(self) -> dict[str, np.ndarray]:
        """Columns of the steps table (NaN where a value was not finite or not recorded)."""
        names = list(self._step_columns)  # every column this file has, declared ones included
        rows = self._db.execute(f"SELECT {', '.join(names)} FROM steps ORDER BY step").fetchall()
        table = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
        out = {n: table[:, i] for i, n in enumerate(names)}
        out["step"] = out["step"].astype(np.int64)
        for col in STEP_COLUMNS:
            if col.kind == "bool":
                out[col.name] = np.nan_to_num(out[col.name]) > 0
        return out

    def vector_metrics(self) -> list[str]:
        return [m for (m,) in self._db.execute("SELECT DISTINCT metric FROM vectors ORDER BY metric")]

    def metrics(self) -> list[str]:
        return [m for (m,) in self._db.execute("SELECT DISTINCT metric FROM module_stats ORDER BY metric")]

    def module_metric(self, metric: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(steps, module names, steps x modules matrix) for one per-module metric."""
        rows = self._db.execute("SELECT step, module, value FROM module_stats WHERE metric = ? ORDER BY step, module", (metric,)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), [], np.zeros((0, 0))
        all_names = self.module_names
        ids = sorted({r[1] for r in rows})  # only the modules that have this metric, in first-seen order
        column = {mid: j for j, mid in enumerate(ids)}
        steps = sorted({r[0] for r in rows})
        pos = {s: i for i, s in enumerate(steps)}
        matrix = np.full((len(steps), len(ids)), np.nan)
        for step, module, value in rows:
            if value is not None:
                matrix[pos[step], column[module]] = value
        return np.array(steps, dtype=np.int64), [all_names[mid - 1] for mid in ids], matrix

    def vectors(self, metric: str) -> list[tuple[int, str, np.ndarray]]:
        names = self.module_names
        rows = self._db.execute("SELECT step, module, data FROM vectors WHERE metric = ? ORDER BY step, module", (metric,))
        return [(step, names[module - 1], np.frombuffer(data, dtype="<f8").copy()) for step, module, data in rows]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT step, kind, payload FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        return [{"step": s, "kind": k, **json.loads(p)} for s, k, p in self._db.execute(query, (kind,) if kind else ())]

    def findings(self) -> list[Finding]:
        rows = self._db.execute("SELECT step, code, severity, message, location, evidence, remedy FROM findings ORDER BY id")
        return [Finding(code, sev, msg, json.loads(loc), json.loads(ev), remedy, step) for step, code, sev, msg, loc, ev, remedy in rows]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); nested uses join the outer one."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self

    def __exit__(self, exc_type, *rest):
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
