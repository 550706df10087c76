"""Files gradguard writes: one atomic writer and one JSON codec.

Atomic: a file is written to a unique temporary name beside its target (same file system, so the
rename is atomic), flushed, fsynced and renamed over the target, so the target holds either its
old content or all of the new, never a part. On any failure (a full disk, an interrupt) the
temporary file is removed before the error goes on: no ``.<name>.<pid>.<tag>.tmp`` is left behind.

JSON: what measurements hold (floats that may be NaN or infinite, tensors, numpy arrays and
scalars, paths, dataclasses) becomes JSON. Strict JSON, the default, spells non-finite numbers as
the strings "nan", "inf" and "-inf" (readable by any JSON parser); ``literal_nonfinite`` writes
Python's NaN/Infinity tokens instead (for the run store, which reads them back with ``json``).
``loads`` and ``read_json`` turn both spellings back into floats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------- JSON codec
def to_json(obj: Any, *, strict: bool = True) -> Any:
    """A JSON-ready copy of ``obj``; with ``strict`` non-finite floats become strings."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj) or not strict:
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): to_json(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v, strict=strict) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_json(dataclasses.asdict(obj), strict=strict)
    if hasattr(obj, "tolist"):  # tensors, numpy arrays and numpy scalars
        return to_json(obj.tolist(), strict=strict)
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON; use numbers, strings, lists, dicts, tensors or arrays.")


def from_json(obj: Any) -> Any:
    """Inverse of ``to_json`` for numbers: "nan", "inf" and "-inf" back to floats."""
    if isinstance(obj, str):
        return NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def dumps(obj: Any, *, indent: int | None = None, literal_nonfinite: bool = False) -> str:
    return json.dumps(to_json(obj, strict=not literal_nonfinite), indent=indent, allow_nan=literal_nonfinite)


def loads(text: str) -> Any:
    return from_json(json.loads(text))


# --------------------------------------------------------------------------- atomic files
def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Mode "x" on a unique name rather than mkstemp, so the file gets the usual permissions, not 0600.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every OS)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (non-finite numbers as strings), written atomically."""
    return write_atomic(path, dumps(obj, indent=1) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path`` with non-finite numbers restored, or None when the file is missing or
    unreadable (a torn write by an older version, a foreign file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return loads(fh.read())
    except (OSError, ValueError):
        return None
