"""Atomic, self-describing cache entries under ``data/cache/``.

Every heavy result (a fine-tuned checkpoint, an activation set, a trained SAE) is a folder
``data/cache/<kind>/<name>-<hash>/`` where ``<hash>`` digests everything that produced it.
The folder is built under a temporary name and renamed into place only when complete, and
its ``meta.json`` records the inputs; an entry whose ``meta.json`` does not match the request
is never reused. A run killed half-way leaves only a ``.tmp-*`` folder that no lookup sees.

>>> key = {"model": "minilm-l6", "task": "bbc-news", "seed": 0}
>>> with cache_entry("finetune", "minilm-l6__bbc-news", key) as entry:  # doctest: +SKIP
...     if not entry.exists:
...         save_model(entry.build_dir)  # = entry.tmp; it becomes entry.path on success
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import cache_dir

log = logging.getLogger(__name__)

META = "meta.json"


def _canonical(parts: dict[str, Any]) -> str:
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))


def key_hash(parts: dict[str, Any], length: int = 12) -> str:
    """Short, stable digest of the key parts (sorted JSON, SHA-256)."""
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()[:length]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:80] or "entry"


@dataclass
class CacheEntry:
    """One cache slot. ``path`` is final; write into ``tmp`` while building."""

    path: Path
    key: dict[str, Any]
    tmp: Path | None = None

    @property
    def exists(self) -> bool:
        """True when a complete entry made by the same inputs is in place."""
        return is_complete(self.path, self.key)

    @property
    def build_dir(self) -> Path:
        """``tmp`` as a path, for writing a new entry; an error when there is none, i.e. the
        entry is complete and there is nothing to build."""
        if self.tmp is None:
            raise RuntimeError(f"{self.path} is complete (or not being built): nothing to write.")
        return self.tmp


def is_complete(path: Path, key: dict[str, Any]) -> bool:
    meta = path / META
    if not meta.is_file():
        return False
    try:
        stored = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return _canonical(stored.get("key", {})) == _canonical(key)


def entry_path(kind: str, name: str, key: dict[str, Any], root: Path | None = None) -> Path:
    root = Path(root) if root is not None else cache_dir()
    return root / kind / f"{_safe(name)}-{key_hash(key)}"


@contextmanager
def cache_entry(
    kind: str,
    name: str,
    key: dict[str, Any],
    root: Path | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Iterator[CacheEntry]:
    """Yield a :class:`CacheEntry`; when it does not exist yet, ``entry.tmp`` is a fresh folder
    that is renamed to ``entry.path`` (with ``meta.json``) if the block finishes without error,
    and deleted otherwise."""
    path = entry_path(kind, name, key, root)
    entry = CacheEntry(path=path, key=key)
    if entry.exists:
        log.info("cache hit: %s", path)
        yield entry
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.parent / f".{path.name}.lock"):
        if entry.exists:  # another process finished it while we waited for the lock
            log.info("cache hit after waiting: %s", path)
            yield entry
            return
        with _build(entry, extra_meta) as built:
            yield built


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory inter-process lock, so two runs never build the same entry twice."""
    import fcntl  # noqa: PLC0415  (POSIX only: elsewhere the package still imports)

    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _build(entry: CacheEntry, extra_meta: dict[str, Any] | None) -> Iterator[CacheEntry]:
    path, key = entry.path, entry.key
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    entry.tmp = tmp
    try:
        yield entry
        meta = {"key": key, **(extra_meta or {})}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if path.exists():  # stale or mismatching entry under the same name: replace it
            shutil.rmtree(path)
        os.replace(tmp, path)
        log.info("cache write: %s", path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        entry.tmp = None


def read_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of a cache entry."""
    return json.loads((Path(path) / META).read_text())
