"""Atomic, self-describing, self-checking cache entries under ``data/cache/``.

Every heavy result (a fine-tuned checkpoint, an activation set, a trained SAE) is a folder
``data/cache/<kind>/<name>-<hash>/`` where ``<hash>`` digests everything that produced it.

- **Atomic.** The folder is built under a temporary name (``.tmp-<name>-<hash>-<random>``)
  and renamed into place only when the build finished without error; a run killed half-way
  leaves only the temporary folder, which no lookup sees and the next build of any entry of
  that kind removes once no live process holds its lock.
- **Keyed.** ``meta.json`` records the key; an entry made by other inputs is never reused.
- **Checked.** ``meta.json`` also records every file's size, SHA-256 digest and modification
  time when the entry is committed. On reuse each file must exist with its size; a file whose
  modification time moved is digested again and must match (``REPGEO_CACHE_VERIFY=full``
  digests every file on every reuse). A damaged entry is moved aside to
  ``<kind>/.damaged/``, logged with both paths, and rebuilt; it is never returned.
- **One builder at a time.** Building takes an inter-process lock that records who holds it
  (pid, host, command, since when). A second process waits, says whom it waits for, and gives
  up after ``REPGEO_CACHE_LOCK_TIMEOUT`` seconds (default 2 hours) with a message naming the
  holder, instead of blocking silently.

>>> key = {"model": "minilm-l6", "task": "bbc-news", "seed": 0}
>>> with cache_entry("finetune", "minilm-l6__bbc-news", key) as entry:  # doctest: +SKIP
...     if not entry.exists:
...         save_model(entry.build_dir)  # = entry.tmp; it becomes entry.path on success
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import cache_dir

log = logging.getLogger(__name__)

META = "meta.json"
#: Folder (inside each kind's folder) where damaged entries are moved.
DAMAGED = ".damaged"
TMP_PREFIX = ".tmp-"
#: How long to wait for another process's build, in seconds (``REPGEO_CACHE_LOCK_TIMEOUT``).
DEFAULT_LOCK_TIMEOUT = 2 * 3600.0
_CHUNK = 1 << 20


class CacheLockTimeout(TimeoutError):
    """Another process held a cache entry's build lock for longer than the time limit."""


def _canonical(parts: dict[str, Any]) -> str:
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))


def key_hash(parts: dict[str, Any], length: int = 12) -> str:
    """Short, stable digest of the key parts (sorted JSON, SHA-256)."""
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()[:length]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:80] or "entry"


# --- file manifests ----------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size, SHA-256 and modification time of every file under ``folder`` except
    ``meta.json``, keyed by path relative to ``folder`` (POSIX separators)."""
    manifest = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative == META:
            continue
        stat = path.stat()
        manifest[relative] = {
            "size": stat.st_size,
            "sha256": file_digest(path),
            "mtime_ns": stat.st_mtime_ns,
        }
    return manifest


def _verify_mode() -> str:
    mode = os.environ.get("REPGEO_CACHE_VERIFY", "stat")
    if mode not in ("stat", "full"):
        raise ValueError(f"REPGEO_CACHE_VERIFY must be 'stat' or 'full', got {mode!r}")
    return mode


def check_files(
    folder: Path, manifest: dict[str, dict[str, Any]], full: bool = False
) -> str | None:
    """``None`` when every file of ``manifest`` is intact under ``folder``, else what is wrong.

    Sizes are always compared; a file is digested when ``full`` is set or its modification
    time differs from the recorded one.
    """
    for relative, expected in manifest.items():
        path = Path(folder) / relative
        try:
            stat = path.stat()
        except FileNotFoundError:
            return f"{relative} is missing"
        if stat.st_size != expected["size"]:
            return f"{relative} has {stat.st_size:,} bytes, {expected['size']:,} were written"
        if full or stat.st_mtime_ns != expected["mtime_ns"]:
            if file_digest(path) != expected["sha256"]:
                return f"{relative} changed since it was written (SHA-256 differs)"
    return None


def entry_problem(path: Path, key: dict[str, Any] | None = None) -> str | None:
    """Why the entry at ``path`` cannot be reused (``None`` when it can).

    ``"absent"`` when there is nothing there (or no ``meta.json``), ``"other key"`` when it
    was made by other inputs; any other text means damage.
    """
    meta_path = Path(path) / META
    if not meta_path.is_file():
        return "absent"
    try:
        stored = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"{META} cannot be read ({err})"
    if not isinstance(stored, dict):
        return f"{META} is not a JSON object"
    if key is not None and _canonical(stored.get("key", {})) != _canonical(key):
        return "other key"
    manifest = stored.get("manifest")
    if not isinstance(manifest, dict):
        return f"{META} lists no files (an entry from before file checks)"
    return check_files(Path(path), manifest, full=_verify_mode() == "full")


def is_complete(path: Path, key: dict[str, Any]) -> bool:
    """True when a complete, intact entry made by the same inputs is at ``path``."""
    return entry_problem(path, key) is None


def quarantine(path: Path, problem: str) -> Path:
    """Move a damaged entry to ``<kind>/.damaged/<name>-<time>/`` and log both paths."""
    path = Path(path)
    target_dir = path.parent / DAMAGED
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    os.replace(path, target)
    log.warning("cache entry %s is damaged (%s): moved to %s, rebuilding", path, problem, target)
    return target


def entry_path(kind: str, name: str, key: dict[str, Any], root: Path | None = None) -> Path:
    root = Path(root) if root is not None else cache_dir()
    return root / kind / f"{_safe(name)}-{key_hash(key)}"


# --- locks and stale temporary folders ---------------------------------------------------------


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }


def _describe_holder(handle) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        holder = {}
    if not holder:
        return "another process"
    return (
        f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')}: "
        f"{holder.get('command') or '?'})"
    )


def _lock_timeout() -> float:
    raw = os.environ.get("REPGEO_CACHE_LOCK_TIMEOUT", str(DEFAULT_LOCK_TIMEOUT))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):  # inf would wait for ever: no time limit
        raise ValueError(
            f"REPGEO_CACHE_LOCK_TIMEOUT must be a number of seconds >= 0, got {raw!r}; a finite "
            "one (for a long wait, a large number such as 86400 for a day)"
        )
    return value


@contextmanager
def _exclusive(lock_path: Path, timeout: float | None = None) -> Iterator[None]:
    """An advisory inter-process lock (released by the OS if its holder dies), with a time
    limit and a record of who holds it."""
    timeout = _lock_timeout() if timeout is None else timeout
    with open(lock_path, "a+") as handle:
        deadline, announced = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _describe_holder(handle)
                if time.monotonic() >= deadline:
                    raise CacheLockTimeout(
                        f"Waited {timeout:.0f} s for {lock_path.name[1:-5]} in {lock_path.parent}: "
                        f"it is being built by {holder}. Let that run finish, stop it, or raise "
                        "REPGEO_CACHE_LOCK_TIMEOUT (seconds)."
                    ) from None
                if not announced:
                    log.warning("waiting for %s: being built by %s", lock_path, holder)
                    announced = True
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_holder()))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_of_temporary(folder: Path) -> str | None:
    """The entry name a ``.tmp-<entry>-<random>`` folder was building."""
    if not folder.name.startswith(TMP_PREFIX):
        return None
    name, _, suffix = folder.name[len(TMP_PREFIX) :].rpartition("-")
    return name or None


def clean_stale_temporaries(kind_dir: Path) -> list[Path]:
    """Remove the temporary folders of builds that died: those whose entry lock no live
    process holds. Returns what was removed."""
    removed: list[Path] = []
    if not Path(kind_dir).is_dir():
        return removed
    for folder in Path(kind_dir).iterdir():
        name = _entry_of_temporary(folder)
        if name is None or not folder.is_dir():
            continue
        lock_path = Path(kind_dir) / f".{name}.lock"
        try:
            with open(lock_path, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    shutil.rmtree(folder, ignore_errors=True)
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            continue  # a live build owns it
        removed.append(folder)
        log.info("removed the temporary folder of an interrupted build: %s", folder)
    return removed


# --- entries -----------------------------------------------------------------------------------


@dataclass
class CacheEntry:
    """One cache slot. ``path`` is final; write into ``tmp`` while building."""

    path: Path
    key: dict[str, Any]
    tmp: Path | None = None

    @property
    def exists(self) -> bool:
        """True when a complete, intact entry made by the same inputs is in place."""
        return is_complete(self.path, self.key)

    @property
    def build_dir(self) -> Path:
        """``tmp`` as a path, for writing a new entry; an error when there is none, i.e. the
        entry is complete and there is nothing to build."""
        if self.tmp is None:
            raise RuntimeError(f"{self.path} is complete (or not being built): nothing to write.")
        return self.tmp


@contextmanager
def cache_entry(
    kind: str,
    name: str,
    key: dict[str, Any],
    root: Path | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Iterator[CacheEntry]:
    """Yield a :class:`CacheEntry`; when no intact entry exists yet, ``entry.tmp`` is a fresh
    folder that is renamed to ``entry.path`` (with ``meta.json`` and its file manifest) if the
    block finishes without error, and deleted otherwise. A damaged entry is moved aside first.
    """
    path = entry_path(kind, name, key, root)
    entry = CacheEntry(path=path, key=key)
    if entry_problem(path, key) is None:
        log.info("cache hit: %s", path)
        yield entry
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)
    with _exclusive(_lock_path(path)):
        problem = entry_problem(path, key)
        if problem is None:  # another process finished it while we waited for the lock
            log.info("cache hit after waiting: %s", path)
            yield entry
            return
        if problem not in ("absent", "other key"):
            quarantine(path, problem)
        with _build(entry, extra_meta) as built:
            yield built


@contextmanager
def _build(entry: CacheEntry, extra_meta: dict[str, Any] | None) -> Iterator[CacheEntry]:
    path, key = entry.path, entry.key
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent))
    entry.tmp = tmp
    try:
        yield entry
        meta = {"key": key, **(extra_meta or {}), "manifest": build_manifest(tmp)}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if path.exists():  # a mismatching entry under the same name: replace it
            shutil.rmtree(path)
        os.replace(tmp, path)
        log.info("cache write: %s", path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        entry.tmp = None


def seal(folder: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` with the file manifest into a folder built in place (a resumable
    run that is not renamed into place), atomically; write it last."""
    folder = Path(folder)
    payload = {**meta, "manifest": build_manifest(folder)}
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, folder / META)


def read_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of a cache entry."""
    return json.loads((Path(path) / META).read_text())
