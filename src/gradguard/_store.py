"""The run store: one SQLite file per run, append-only, crash-safe, readable while written.

Guard writes a chunk of steps per ``log_every`` steps in one transaction. SQLite in WAL mode
makes each committed transaction durable against a killed process: after a SIGKILL the file
opens and holds every chunk committed before it, so at most the unflushed interval is lost.
Nothing is pickled: numbers are columns, structured values JSON, vectors raw float64 bytes.

Schema (``schema_version`` 3):

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
    findings(id, step, code, severity, message, location TEXT, evidence TEXT, remedy TEXT,
          caused_by TEXT, fix TEXT)                  -- fix: JSON; both NULL in a store made before them

A store opened on an existing file appends: a resumed run keeps writing into the same file, and
re-written steps replace the old rows.

One writer per file. The first write (or ``claim()``, which Guard calls at construction) takes an
exclusive ``flock`` on the side file ``<store>.lock`` and writes the owner (pid, host, start time)
into it; the kernel drops the lock when the process ends, however it ends, so a killed run never
leaves a stale lock. A second writer, in another process or a second Guard of the same process,
gets ``StoreLockedError`` naming the path and the owner, before it writes anything. Reading takes
no lock: ``gradguard report`` reads a store while its run writes it. (Platforms without ``fcntl``
get no lock.) The lock file is removed when the writer closes the store.

What a store is, and what it refuses. Only a gradguard store is opened: its ``meta`` table holds
``schema_version``. Any other file (another application's SQLite database, a text or binary
file, a directory) is refused with ``StoreError`` naming the path, and is left unchanged; so is
a path that cannot be created or written. Versions: ``schema_version`` counts layouts. A store of
an older layout is read as it is and migrated in place (``_MIGRATIONS``) when it is first
written; one of a newer layout is refused. Layouts: 1 (steps without ``coef`` and ``lr``);
2 (steps with every ``_rundata.STEP_COLUMNS`` entry); 3 (findings with ``caused_by`` and ``fix``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import gradguard._io as _io
from gradguard._errors import GradGuardError
from gradguard._finding import Finding
from gradguard._history import Chunk
from gradguard._rundata import STEP_COLUMNS

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (see the module docstring)
    fcntl = None

SCHEMA_VERSION = 3
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = frozenset({"meta", "modules", "steps", "module_stats", "vectors", "events", "findings", "sqlite_sequence"})


class StoreError(GradGuardError):
    """A run store path that cannot be used: not a gradguard store, or not writable. Names the path."""


class StoreLockedError(StoreError):
    """The run store is being written by another writer (``owner`` holds its pid, host and start time)."""

    def __init__(self, message: str, path: Path, owner: Mapping[str, Any]):
        super().__init__(message)
        self.path = path
        self.owner = dict(owner)


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
    message TEXT NOT NULL, location TEXT NOT NULL, evidence TEXT NOT NULL, remedy TEXT NOT NULL,
    caused_by TEXT, fix TEXT);
"""


def _real(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else (None if math.isnan(x) else x)


def _reals(values: np.ndarray) -> list[float | None]:
    return [_real(v) for v in values.tolist()]


def _ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in (np.asarray(values) > 0).tolist()]


def _dumps(value: Any) -> str:
    return _io.dumps(value, literal_nonfinite=True)  # the one JSON codec; NaN/Infinity tokens, read back by json.loads


class RunStore:
    """Open (creating if needed) the run store at ``path``; see the module docstring for the schema."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = _check_path(path)
        self._memory = str(path) == ":memory:"
        self._lock: _WriterLock | None = None
        self._owner: Any = None
        self._db: sqlite3.Connection | None = None
        new = self._memory or not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            _check_header(self.path)
        elif not self._memory:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the run store {str(self.path)!r}: its folder cannot be made ({exc.strerror or exc}). "
                                 "Pass a path in a writable folder.") from None
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            # NORMAL: a commit survives a killed process (the WAL is in the OS's hands), not a power cut.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self.version = SCHEMA_VERSION if new else _stored_version(self._db, self.path)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open the run store {str(self.path)!r}: {exc}. Pass the path of a gradguard run store, or a new file.") from None
        except BaseException:
            self.close()
            raise
        if new:
            self.claim()  # creating the file is writing it
        self._step_columns = [row[1] for row in self._db.execute("PRAGMA table_info(steps)")]
        self._module_ids: dict[str, int] = dict((name, mid) for mid, name in self._db.execute("SELECT id, name FROM modules"))
        if meta:
            self.set_meta(**meta)

    def claim(self, owner: Any = None) -> None:
        """Become this file's one writer (see the module docstring), migrating an older layout.

        ``owner`` (Guard passes itself) makes a second Guard handed the same ``RunStore`` object
        an error too. Raises ``StoreLockedError`` when another writer holds the file.
        """
        if owner is not None:
            if self._owner is not None and self._owner is not owner:
                raise StoreLockedError(f"the run store {str(self.path)!r} is already written by another Guard in this process "
                                       f"(pid {os.getpid()}); give each Guard its own store path, or close the first one.",
                                       self.path, _owner_info())
            self._owner = owner
        if self._lock is not None or self._db is None:
            return
        if not self._memory:
            self._lock = _WriterLock(self.path)
        if self.version != SCHEMA_VERSION or not self._has_tables():
            self._create_or_migrate()
        if self._lock is not None:
            self._lock.db_inode = _inode(self.path)  # the file exists now

    def _create_or_migrate(self) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            with _Transaction(self._db):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                for version in range(self.version, SCHEMA_VERSION):
                    _MIGRATIONS[version](self._db)
                _add_step_columns(self._db)  # a new file's steps table gets its declared columns here
                created = {} if "schema_version" in self.meta else {"created": time.time()}
                self._write_meta(schema_version=SCHEMA_VERSION, **created)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the run store {str(self.path)!r}: {exc}.") from None
        self.version = SCHEMA_VERSION
        self._step_columns = [row[1] for row in self._db.execute("PRAGMA table_info(steps)")]

    def _has_tables(self) -> bool:
        names = {n for (n,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return _TABLES - {"sqlite_sequence"} <= names

    # ------------------------------------------------------------------ writing
    def _transaction(self):
        """Every write goes through here: the first one claims the file (one writer per store)."""
        if self._db is None:
            raise StoreError(f"the run store {str(self.path)!r} is closed; open a new RunStore to write it.")
        if self._lock is None and not self._memory:
            self.claim()
        return _Transaction(self._db)

    def set_meta(self, **values: Any) -> None:
        with self._transaction():
            self._write_meta(**values)

    def _write_meta(self, **values: Any) -> None:
        rows = []
        for key, value in values.items():
            try:
                rows.append((key, _dumps(value)))
            except TypeError as exc:  # name the entry and the file, not only the type
                raise TypeError(f"cannot store a {type(value).__name__} in the run store {str(self.path)!r} (meta {key!r}): {exc}") from None
        self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", rows)

    def _module_id(self, name: str) -> int:
        mid = self._module_ids.get(name)
        if mid is None:
            self._db.execute("INSERT OR IGNORE INTO modules(name) VALUES (?)", (name,))
            (mid,) = self._db.execute("SELECT id FROM modules WHERE name = ?", (name,)).fetchone()
            self._module_ids[name] = mid
        return mid

    def _check_still_there(self) -> None:
        """A store file deleted or replaced under a running writer would swallow every later write."""
        if self._memory or self._lock is None:
            return
        try:
            same = os.stat(self.path).st_ino == self._lock.db_inode
        except OSError:
            same = False
        if not same:
            raise StoreError(f"the run store file {str(self.path)!r} was removed or replaced while it was being written.")

    def write_chunk(self, chunk: Chunk) -> None:
        """Steps and per-module gradient norms of one chunk, in one transaction (probes: ``write_module_stats``)."""
        now = time.time()
        names = [c.name for c in STEP_COLUMNS]
        cells = [_ints(chunk.scalars[c.name]) if c.kind == "bool" else _reals(chunk.scalars[c.name]) for c in STEP_COLUMNS]
        rows = [(step, *values, now) for step, *values in zip(chunk.steps.tolist(), *cells)]
        sql = f"INSERT OR REPLACE INTO steps(step, {', '.join(names)}, wall_time) VALUES ({', '.join('?' * (len(names) + 2))})"
        self._check_still_there()  # one stat per chunk
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
            (f.step, f.code, f.severity, f.message, _dumps(list(f.where)), _dumps(f.to_dict()["evidence"]), f.remedy, f.caused_by,
             _dumps(f.to_dict()["fix"]))
            for f in findings
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO findings(step, code, severity, message, location, evidence, remedy, caused_by, fix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )

    def replace_findings(self, findings: Iterable[Finding]) -> None:
        """The run's current diagnosis: earlier findings are superseded."""
        with self._transaction():
            self._db.execute("DELETE FROM findings")
        self.add_findings(findings)

    def close(self) -> None:
        """Close the file and release the writer lock; never raises (a store must not stop a run)."""
        db, self._db = self._db, None
        lock, self._lock = self._lock, None
        self._owner = None
        try:
            if db is not None:
                db.close()
        except sqlite3.Error:
            pass
        finally:
            if lock is not None:
                lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def _reader(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the run store {str(self.path)!r} is closed; open it again with RunStore(path) to read it.")
        return self._db

    @property
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._reader().execute("SELECT key, value FROM meta")}

    @property
    def module_names(self) -> list[str]:
        return [name for (name,) in self._reader().execute("SELECT name FROM modules ORDER BY id")]

    def steps(self) -> dict[str, np.ndarray]:
        """Columns of the steps table (NaN where a value was not finite or not recorded)."""
        names = list(self._step_columns)  # every column this file has, declared ones included
        rows = self._reader().execute(f"SELECT {', '.join(names)} FROM steps ORDER BY step").fetchall()
        table = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
        out = {n: table[:, i] for i, n in enumerate(names)}
        for col in STEP_COLUMNS:  # an older layout read as it is: its missing columns were not measured
            out.setdefault(col.name, np.full(len(rows), np.nan))
        out["step"] = out["step"].astype(np.int64)
        for col in STEP_COLUMNS:
            if col.kind == "bool":
                out[col.name] = np.nan_to_num(out[col.name]) > 0
        return out

    def vector_metrics(self) -> list[str]:
        return [m for (m,) in self._reader().execute("SELECT DISTINCT metric FROM vectors ORDER BY metric")]

    def metrics(self) -> list[str]:
        return [m for (m,) in self._reader().execute("SELECT DISTINCT metric FROM module_stats ORDER BY metric")]

    def module_metric(self, metric: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(steps, module names, steps x modules matrix) for one per-module metric."""
        rows = self._reader().execute("SELECT step, module, value FROM module_stats WHERE metric = ? ORDER BY step, module", (metric,)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), [], np.zeros((0, 0))
        all_names = self._names_by_id()
        ids = sorted({r[1] for r in rows})  # only the modules that have this metric, in first-seen order
        column = {mid: j for j, mid in enumerate(ids)}
        steps = sorted({r[0] for r in rows})
        pos = {s: i for i, s in enumerate(steps)}
        matrix = np.full((len(steps), len(ids)), np.nan)
        for step, module, value in rows:
            if value is not None:
                matrix[pos[step], column[module]] = value
        return np.array(steps, dtype=np.int64), [all_names.get(mid, f"?{mid}") for mid in ids], matrix

    def vectors(self, metric: str) -> list[tuple[int, str, np.ndarray]]:
        names = self._names_by_id()
        rows = self._reader().execute("SELECT step, module, data FROM vectors WHERE metric = ? ORDER BY step, module", (metric,))
        return [(step, names.get(module, f"?{module}"), np.frombuffer(data, dtype="<f8").copy()) for step, module, data in rows]

    def _names_by_id(self) -> dict[int, str]:
        """Module names by id; a row naming an id the modules table lacks reads as ``?<id>``, not an IndexError."""
        return dict(self._reader().execute("SELECT id, name FROM modules"))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT step, kind, payload FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        return [{"step": s, "kind": k, **json.loads(p)} for s, k, p in self._reader().execute(query, (kind,) if kind else ())]

    def findings(self) -> list[Finding]:
        have = {row[1] for row in self._reader().execute("PRAGMA table_info(findings)")}
        extra = ", ".join(name if name in have else "NULL" for name in _FINDING_COLUMNS)  # layouts 1 and 2 lack them
        rows = self._reader().execute(f"SELECT step, code, severity, message, location, evidence, remedy, {extra} FROM findings ORDER BY id")
        return [Finding(code, sev, msg, json.loads(loc), json.loads(ev), remedy, step, caused_by, json.loads(fix) if fix else {})
                for step, code, sev, msg, loc, ev, remedy, caused_by, fix in rows]


def _add_step_columns(db: sqlite3.Connection) -> None:
    """Give the steps table every declared column it lacks (NULL in older rows: not measured)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(steps)")}
    for col in STEP_COLUMNS:
        if col.name not in have:
            db.execute(f"ALTER TABLE steps ADD COLUMN {col.name} {'INTEGER' if col.kind == 'bool' else 'REAL'}")


# The findings columns added in layout 3 (TEXT; ``fix`` holds JSON).
_FINDING_COLUMNS = ("caused_by", "fix")


def _add_finding_columns(db: sqlite3.Connection) -> None:
    """Give the findings table the columns it lacks (NULL in older rows: no cause, no fix)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(findings)")}
    for name in _FINDING_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE findings ADD COLUMN {name} TEXT")


# _MIGRATIONS[v] takes a store from layout v to v + 1, inside the claiming transaction.
# 1 -> 2: the steps table gains ``coef`` and ``lr``. 2 -> 3: the findings table gains ``caused_by`` and ``fix``.
_MIGRATIONS = {1: _add_step_columns, 2: _add_finding_columns}


def _check_path(path: Any) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a run store path must be a str or a pathlib.Path, got {path!r} of type {type(path).__name__}.")
    if str(path).strip() == "":
        raise StoreError("the run store path is empty; pass a file path such as 'runs/run.sqlite'.")
    path = Path(path)
    if str(path) == ":memory:":
        return path
    if path.is_dir():
        raise StoreError(f"the run store path {str(path)!r} is a directory; pass a file path inside it, e.g. {str(path / 'run.sqlite')!r}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"cannot create the run store {str(path)!r}: {str(parent)!r} is a file, not a folder.")
            break
    return path


def _check_header(path: Path) -> None:
    """An existing non-empty file must be an SQLite database; refuse anything else unread and unchanged."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read the run store {str(path)!r}: {exc.strerror or exc}.") from None
    if head != _SQLITE_MAGIC:
        raise StoreError(f"{str(path)!r} is not a gradguard run store (not an SQLite file); it was left unchanged. "
                         "Pass a new file path, or the path of a store written by gradguard.")


def _stored_version(db: sqlite3.Connection, path: Path) -> int:
    """The layout of an existing file; refuses a foreign database and a newer layout (reading only)."""
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return SCHEMA_VERSION  # an empty database: made a store at the first write
    if "meta" not in tables or not tables <= _TABLES:
        foreign = sorted(tables - _TABLES) or sorted(tables)
        raise StoreError(f"{str(path)!r} is an SQLite database but not a gradguard run store (it has table(s) "
                         f"{', '.join(foreign[:5])}); it was left unchanged. Pass a new file path for the run store.")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = 1 if row is None else json.loads(row[0])  # a layout-1 store killed before its version was written
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise StoreError(f"{str(path)!r} has an invalid run-store schema_version {version!r}; it is not a store gradguard wrote.")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{str(path)!r} is a run store of layout {version}, written by a newer gradguard; this one reads "
                         f"layouts up to {SCHEMA_VERSION}. Upgrade: pip install -U gradguard")
    return version


def _owner_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _describe(owner: Mapping[str, Any]) -> str:
    if not owner:
        return "a writer that did not say who it is"
    since = owner.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    here = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
    who = f"pid {owner.get('pid')} on host {owner.get('host')}{when}"
    return f"another Guard or RunStore of this process ({who})" if here else f"process {who}"


class _WriterLock:
    """An exclusive ``flock`` on ``<store>.lock`` holding the owner as JSON (module docstring)."""

    def __init__(self, db_path: Path):
        self.path = db_path.with_name(db_path.name + ".lock")
        self.fd: int | None = None
        self.db_inode = _inode(db_path)
        for _ in range(5):  # the file may be unlinked by a releasing owner between open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot write the run store {str(db_path)!r}: {exc.strerror or exc} ({str(self.path)!r}). "
                                 "Pass a path in a writable folder.") from None
            if fcntl is None:
                self.fd = fd
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"the run store {str(db_path)!r} is being written by {_describe(owner)}; a store has one writer. "
                    "Give this run its own store path, or close that writer first (guard.close()).", db_path, owner) from None
            if _inode(self.path) == os.fstat(fd).st_ino:
                self.fd = fd
                break
            os.close(fd)
        else:
            raise StoreError(f"cannot lock the run store {str(db_path)!r}: its lock file keeps changing.")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(_owner_info()).encode(), 0)

    def __del__(self) -> None:  # a store dropped without close() (a run that raised) frees its file
        self.release()

    def release(self) -> None:
        fd, self.fd = getattr(self, "fd", None), None
        if fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock: a waiting opener sees the inode change
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


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
