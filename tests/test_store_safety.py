"""The run store fails safe: one writer per file, foreign files refused unchanged, bad paths named,
an I/O failure during training never stops it, and a store of the previous layout is read and
migrated."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import gradguard as gg
from gradguard._errors import GradGuardWarning
from gradguard._finding import Finding
from gradguard._rundata import RunData
from gradguard._store import SCHEMA_VERSION, RunStore, StoreError, StoreLockedError


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _train(guard, model, steps, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(8, 3)).pow(2).mean()
        loss.backward()
        guard.step(opt, loss=loss)
    return opt


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- one writer per file
def test_a_second_guard_in_the_same_process_is_refused_naming_the_path_and_owner(tmp_path):
    path = tmp_path / "run.sqlite"
    first = gg.Guard(_model(), store=path, log_every=2)
    with pytest.raises(StoreLockedError, match=rf"run\.sqlite.*pid {os.getpid()}") as err:
        gg.Guard(_model(), store=path)
    assert err.value.owner["pid"] == os.getpid() and err.value.owner["host"]
    model = first.model
    _train(first, model, 4)
    first.close()
    # the first writer closed: the lock is gone, and a new writer resumes the same file
    again = gg.Guard(model, store=path, log_every=2)
    _train(again, model, 2)
    again.close()
    assert not (tmp_path / "run.sqlite.lock").exists()


def test_one_runstore_object_handed_to_two_guards_is_refused(tmp_path):
    store = RunStore(tmp_path / "run.sqlite")
    gg.Guard(_model(), store=store)
    with pytest.raises(StoreLockedError, match="another Guard in this process"):
        gg.Guard(_model(), store=store)
    store.close()


def test_a_writer_in_another_process_is_refused_and_nothing_merges(tmp_path):
    path = tmp_path / "run.sqlite"
    guard = gg.Guard(_model(), store=path, log_every=2)
    _train(guard, guard.model, 4)
    script = textwrap.dedent(f"""
        import sys, torch, gradguard as gg
        from gradguard._store import StoreLockedError
        try:
            gg.Guard(torch.nn.Linear(2, 2), store={str(path)!r})
        except StoreLockedError as exc:
            print(exc); sys.exit(3)
        sys.exit(0)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 3, done.stderr
    assert str(path) in done.stdout and f"pid {os.getpid()}" in done.stdout
    guard.close()
    with RunStore(path) as store:
        assert store.steps()["step"].tolist() == [1, 2, 3, 4]


def test_reading_takes_no_lock_while_a_run_writes(tmp_path):
    path = tmp_path / "run.sqlite"
    guard = gg.Guard(_model(), store=path, log_every=2)
    _train(guard, guard.model, 4)
    with RunStore(path) as reader:  # e.g. gradguard report on a live run
        assert reader.steps()["step"].tolist() == [1, 2, 3, 4]
        with pytest.raises(StoreLockedError):
            reader.add_event(5, "note", {})
    _train(guard, guard.model, 2)
    guard.close()


# ---------------------------------------------------------------------- what is not a store
def test_a_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users(name) VALUES ('ada')")
    db.commit()
    db.close()
    before = _digest(path)
    for make in (lambda: RunStore(path), lambda: gg.Guard(_model(), store=path)):
        with pytest.raises(StoreError, match=r"app\.db.*not a gradguard run store.*users"):
            make()
    assert _digest(path) == before
    assert sorted(os.listdir(tmp_path)) == ["app.db"]  # no -wal, -shm or lock file left beside it


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda tmp: "", "path is empty"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: _write(tmp / "notes.txt", b"hello, this is text\n" * 10), "not an SQLite file"),
        (lambda tmp: _write(tmp / "blob.bin", bytes(range(256)) * 8), "not an SQLite file"),
        (lambda tmp: _write(tmp / "file", b"x") / "run.sqlite", "is a file, not a folder"),
        (lambda tmp: _write(tmp / "file2", b"x") / "deep" / "run.sqlite", "is a file, not a folder"),
    ],
    ids=["empty", "directory", "text", "binary", "under-a-file", "deep-under-a-file"],
)
def test_bad_paths_give_a_clear_error_naming_the_path(tmp_path, make, match):
    path = make(tmp_path)
    before = {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()}
    for build in (RunStore, lambda p: gg.Guard(_model(), store=p)):
        with pytest.raises(StoreError, match=match) as err:
            build(path)
        if str(path):
            assert str(path) in str(err.value)
    assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_store_path_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="str or a pathlib.Path"):
        RunStore(42)
    with pytest.raises(TypeError, match="store must be a path or a RunStore"):
        gg.Guard(_model(), store=42)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_a_read_only_folder_gives_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="ro"):
            gg.Guard(_model(), store=folder / "run.sqlite")
    finally:
        folder.chmod(0o700)


def test_a_read_only_folder_gives_a_clear_error_even_as_root(tmp_path, monkeypatch):
    real_open = os.open

    def refuse(path, flags, *args):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(StoreError, match=r"run\.sqlite.*Permission denied"):
        gg.Guard(_model(), store=tmp_path / "run.sqlite")


def test_a_store_of_a_newer_layout_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    RunStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer gradguard.*pip install -U gradguard"):
        RunStore(path)


def _write(path, data):
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------- failures during training
class _FullDisk:
    """Wraps the store's connection: every statement after ``after`` raises as a full disk does."""

    def __init__(self, db, after=0):
        self.db, self.after = db, after

    def execute(self, sql, *args):
        if self.after <= 0 and not sql.startswith(("SELECT", "PRAGMA", "ROLLBACK")):
            raise sqlite3.OperationalError("database or disk is full")
        self.after -= 1
        return self.db.execute(sql, *args)

    def executemany(self, sql, *args):
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_full_disk_never_stops_training_warns_once_and_the_findings_say_so(tmp_path):
    path = tmp_path / "run.sqlite"
    model = _model()
    guard = gg.Guard(model, store=path, log_every=2)
    opt = _train(guard, model, 4)
    assert not any(f.code == "STORE_INCOMPLETE" for f in guard.findings())  # a healthy store says nothing
    guard.store._db = _FullDisk(guard.store._db)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(guard, model, 10, opt)
        found = guard.findings()
        report = guard.report(tmp_path / "run.html")
        guard.close()  # never raises because of the store
    ours = [w for w in caught if issubclass(w.category, GradGuardWarning) and "run store" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert str(path) in str(ours[0].message) and "database or disk is full" in str(ours[0].message)
    assert len(guard.history) == 14  # everything stays in memory
    incomplete = [f for f in found if f.code == "STORE_INCOMPLETE"]
    assert len(incomplete) == 1 and incomplete[0].severity == "info" and incomplete[0].evidence["last_step"] == 4
    assert "STORE_INCOMPLETE" in report.read_text()
    with RunStore(path) as store:  # the store holds the run's beginning, readable
        assert store.steps()["step"].tolist() == [1, 2, 3, 4]


def test_a_real_full_disk_max_page_count(tmp_path):
    path = tmp_path / "run.sqlite"
    model = _model()
    guard = gg.Guard(model, store=path, log_every=1, probes="full", probe_every=1)
    pages = guard.store._db.execute("PRAGMA page_count").fetchone()[0]
    guard.store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(guard, model, 30)
        guard.close()
    ours = [w for w in caught if issubclass(w.category, GradGuardWarning) and "could not be written" in str(w.message)]
    assert len(ours) == 1 and "full" in str(ours[0].message)
    assert len(guard.history) == 30
    assert any(f.code == "STORE_INCOMPLETE" for f in guard.findings())


def test_a_store_file_removed_during_training_is_noticed_and_training_goes_on(tmp_path):
    path = tmp_path / "run.sqlite"
    model = _model()
    guard = gg.Guard(model, store=path, log_every=2)
    opt = _train(guard, model, 2)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    with pytest.warns(GradGuardWarning, match="removed or replaced"):
        _train(guard, model, 4, opt)
    guard.close()
    assert len(guard.history) == 6 and any(f.code == "STORE_INCOMPLETE" for f in guard.findings())


def test_close_never_raises_because_of_the_store(tmp_path):
    path = tmp_path / "run.sqlite"
    guard = gg.Guard(_model(), store=path, log_every=100)
    _train(guard, guard.model, 3)
    guard.store._db = _FullDisk(guard.store._db)
    with pytest.warns(GradGuardWarning, match=f"{path}.*could not be written"):
        guard.close()
    assert len(guard.history) == 3
    assert [f.evidence["last_step"] for f in guard.findings() if f.code == "STORE_INCOMPLETE"] == [None]


# ---------------------------------------------------------------------- layouts and migration
# The layout the previous release wrote (``git show 578c287:src/gradguard/_store.py``): layout 1,
# steps without ``coef`` and ``lr``.
_LAYOUT_1 = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS steps(
    step INTEGER PRIMARY KEY, norm_before REAL, norm_after REAL, threshold REAL,
    clipped INTEGER, skipped INTEGER, loss REAL, wall_time REAL);
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


def _layout_1_store(path, steps=3):
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_LAYOUT_1)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("name", '"old run"'), ("norm_type", "2.0")])
    db.executemany("INSERT INTO modules(name) VALUES (?)", [("0",), ("2",)])
    for s in range(1, steps + 1):
        db.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (s, 2.0 * s, 1.0, 1.0, 1, 0, 0.5, 1e9 + s))
        db.executemany("INSERT INTO module_stats VALUES (?, ?, 'grad_norm', ?)", [(s, 1, 1.0 * s), (s, 2, 0.5 * s)])
    db.execute("INSERT INTO events(step, kind, payload) VALUES (2, 'skip', '{\"parameters\": [\"0.weight\"]}')")
    db.commit()
    db.close()


def test_a_previous_release_store_is_read_as_it_is_and_left_unchanged(tmp_path):
    path = tmp_path / "old.sqlite"
    _layout_1_store(path)
    before = _digest(path)
    with RunStore(path) as store:
        assert store.version == 1
        cols = store.steps()
        assert cols["step"].tolist() == [1, 2, 3] and cols["norm_before"].tolist() == [2.0, 4.0, 6.0]
        assert np.isnan(cols["coef"]).all() and np.isnan(cols["lr"]).all()
        data = RunData.from_store(store)
    assert data.module_names == ["0", "2"] and data.grad_norms[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert data.meta["name"] == "old run"
    assert _digest(path) == before  # reading migrates nothing


def test_a_previous_release_store_is_migrated_when_a_run_resumes_into_it(tmp_path):
    path = tmp_path / "old.sqlite"
    _layout_1_store(path)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    guard = gg.Guard(model, store=path, log_every=2)
    guard.load_state_dict({"step": 3, "consecutive": 0, "skips": 0, "clipper": {}})
    _train(guard, model, 2)
    guard.close()
    with RunStore(path) as store:
        assert store.version == SCHEMA_VERSION and store.meta["schema_version"] == SCHEMA_VERSION
        cols = store.steps()
        assert cols["step"].tolist() == [1, 2, 3, 4, 5]
        assert np.isnan(cols["lr"][:3]).all() and cols["lr"][3:].tolist() == [0.05, 0.05]
        assert store.module_names == ["0", "2"]
        assert [e["kind"] for e in store.events()][:1] == ["skip"]


def test_a_new_store_records_its_layout(tmp_path):
    with RunStore(tmp_path / "n.sqlite") as store:
        assert store.meta["schema_version"] == SCHEMA_VERSION == 3
        assert math.isfinite(store.meta["created"])


# Layout 2 (``git show 8a68c84:src/gradguard/_store.py``): layout 1's steps with ``coef`` and
# ``lr``; findings without ``caused_by`` and ``fix``.
def _layout_2_store(path, steps=3):
    _layout_1_store(path, steps)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE steps ADD COLUMN coef REAL")
    db.execute("ALTER TABLE steps ADD COLUMN lr REAL")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.execute("INSERT INTO findings(step, code, severity, message, location, evidence, remedy) VALUES "
               "(2, 'NONFINITE', 'error', 'old finding', '[\"0\"]', '{\"fraction\": 0.5}', 'old remedy')")
    db.commit()
    db.close()


LINKED = Finding("EXPLODING_GRADIENT", "error", "grew", ["0"], {"growth": 300.0, "ratio": math.inf}, "lower the lr", 5,
                 caused_by="LR_TOO_HIGH", fix={"lr": 0.01, "warmup_steps": 20})


def test_findings_keep_their_cause_and_fix_through_the_store(tmp_path):
    with RunStore(tmp_path / "f.sqlite") as store:
        store.add_findings([LINKED, Finding("LR_TOO_HIGH", "error", "too high", fix={"lr": 0.01})])
    with RunStore(tmp_path / "f.sqlite") as store:
        back = store.findings()
    assert [(f.code, f.caused_by, f.fix) for f in back] == [("EXPLODING_GRADIENT", "LR_TOO_HIGH", {"lr": 0.01, "warmup_steps": 20}),
                                                            ("LR_TOO_HIGH", None, {"lr": 0.01})]
    assert back[0].evidence == LINKED.to_dict()["evidence"] and back[0].where == ["0"] and back[0].step == 5


def test_a_guards_linked_findings_read_back_from_its_store(tmp_path):
    model = _model()
    guard = gg.Guard(model, store=tmp_path / "run.sqlite", log_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=30.0)  # blows up: LR_TOO_HIGH and the symptoms it causes
    for _ in range(12):
        opt.zero_grad()
        (model(torch.randn(8, 3)).pow(2).mean() * 100).backward()
        guard.step(opt)
    found = guard.findings()
    guard.close()
    assert any(f.caused_by for f in found)
    with RunStore(tmp_path / "run.sqlite") as store:
        assert [(f.code, f.caused_by, f.fix) for f in store.findings()] == [(f.code, f.caused_by, f.fix) for f in found]


@pytest.mark.parametrize("layout", [1, 2])
def test_findings_of_an_older_layout_read_without_cause_and_fix_then_migrate(tmp_path, layout):
    path = tmp_path / "old.sqlite"
    (_layout_1_store if layout == 1 else _layout_2_store)(path)
    before = _digest(path)
    with RunStore(path) as store:
        assert store.version == layout
        old = store.findings()
    assert _digest(path) == before  # reading migrates nothing
    assert [(f.code, f.caused_by, f.fix, f.remedy) for f in old] == ([("NONFINITE", None, {}, "old remedy")] if layout == 2 else [])
    with RunStore(path) as store:
        store.add_findings([LINKED])  # the first write migrates
        assert store.version == SCHEMA_VERSION and store.meta["schema_version"] == SCHEMA_VERSION
        back = store.findings()
        assert np.isnan(store.steps()["lr"]).all()
    assert [(f.code, f.caused_by, f.fix) for f in back] == [(f.code, f.caused_by, f.fix) for f in old] + [
        ("EXPLODING_GRADIENT", "LR_TOO_HIGH", {"lr": 0.01, "warmup_steps": 20})]


# ---------------------------------------------------------------------- bad inputs to RunStore's methods
def test_a_closed_store_says_so_on_read_and_write(tmp_path):
    store = RunStore(tmp_path / "c.sqlite")
    store.close()
    store.close()  # twice is fine
    for call in (lambda: store.meta, lambda: store.steps(), lambda: store.events(), lambda: store.module_names,
                 lambda: store.add_event(1, "note", {}), lambda: store.set_meta(a=1)):
        with pytest.raises(StoreError, match=r"c\.sqlite.*is closed"):
            call()


def test_a_meta_value_that_cannot_be_stored_is_a_clear_type_error(tmp_path):
    with RunStore(tmp_path / "m.sqlite") as store, pytest.raises(TypeError, match="cannot store a object in the run store"):
        store.set_meta(thing=object())


def test_a_dangling_module_id_reads_as_a_placeholder_not_an_index_error(tmp_path):
    path = tmp_path / "d.sqlite"
    with RunStore(path) as store:
        store.write_module_stats(1, "param_norm", {"a": 1.0})
        store.write_vector(1, "a", "timestep_grad_norm", [1.0, 2.0])
    db = sqlite3.connect(path)
    db.execute("UPDATE module_stats SET module = 7")
    db.execute("UPDATE vectors SET module = 9")
    db.commit()
    db.close()
    with RunStore(path) as store:
        assert store.module_metric("param_norm")[1] == ["?7"]
        assert store.vectors("timestep_grad_norm")[0][1] == "?9"
        RunData.from_store(store)


def test_a_bad_loss_given_to_step_is_a_clear_error():
    model = _model()
    guard = gg.Guard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3)).sum().backward()
    with pytest.raises(TypeError, match="loss must be a number or a one-element tensor"):
        guard.step(opt, loss="0.3")
    with pytest.raises(ValueError, match=r"loss must be one value.*shape \(2,\)"):
        guard.step(opt, loss=torch.ones(2))
    assert guard.steps == 0  # refused before anything was measured or stepped
    guard.step(opt, loss=torch.tensor([0.5]))
    guard.step(opt, loss=2)
    guard.flush()
    assert guard.history.loss.tolist() == [0.5, 2.0]


def test_a_store_that_failed_is_still_closed_and_its_lock_freed(tmp_path):
    path = tmp_path / "run.sqlite"
    guard = gg.Guard(_model(), store=path, log_every=2)
    store = guard.store
    inner = store._db
    store._db = _FullDisk(inner)
    with pytest.warns(GradGuardWarning, match="could not be written"):
        _train(guard, guard.model, 4)
    guard.close()
    assert store._db is None and not (tmp_path / "run.sqlite.lock").exists()
    gg.Guard(_model(), store=path).close()  # the file is free for the next run
