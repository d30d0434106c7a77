"""Checkpoints as loadable revisions, shared by pretraining and post-training.

A run folder keeps its checkpoints as ``<folder>/revisions/step<N>/`` in the hub's layout, so
``models.load_model(folder, revision="step64", kind="causal-lm")`` works exactly as
``load_model("EleutherAI/pythia-160m", revision="step1000", kind="causal-lm")``. Steps follow
Pythia's schedule (:func:`checkpoint_schedule`: step 0, every power of two up to 512, then every
``every`` steps); :func:`save_revision` writes one atomically, :func:`list_revisions` lists the
complete ones and :func:`revision_step` reads a revision's step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from ..cache import build_manifest, check_files

log = logging.getLogger(__name__)

#: Pythia's log-spaced early checkpoints: step 0 and every power of two up to 512.
LOG_SPACED_STEPS: tuple[int, ...] = (0,) + tuple(2**k for k in range(10))

_STEP_RE = re.compile(r"^step(\d+)$")


def checkpoint_schedule(steps: int, every: int) -> list[int]:
    """Pythia's checkpoint steps for a run of ``steps`` updates.

    Step 0 (the initialisation), every power of two up to 512, then every ``every`` steps,
    and always the last step. ``checkpoint_schedule(143000, 1000)`` is Pythia's own list of
    154 revisions.
    """
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be at least 1, got steps={steps}, every={every}")
    marks = {s for s in LOG_SPACED_STEPS if s <= steps}
    marks.update(range(every, steps + 1, every))
    marks.add(steps)
    return sorted(marks)


def pythia_revisions(last_step: int = 143_000, every: int = 1000) -> list[str]:
    """Revision names of a Pythia model on the hub, ``["step0", "step1", ..., "step143000"]``."""
    return [f"step{s}" for s in checkpoint_schedule(last_step, every)]


def list_revisions(folder: str | Path) -> list[str]:
    """The saved revisions of a run folder (``step<N>`` names), in step order.

    A partially written revision (a ``.tmp-*`` folder) is never listed.
    """
    rev_root = Path(folder) / "revisions"
    if not rev_root.is_dir():
        return []
    found = []
    for path in rev_root.iterdir():
        match = _STEP_RE.match(path.name)
        if match and path.is_dir() and (path / "config.json").is_file():
            found.append((int(match.group(1)), path.name))
    return [name for _, name in sorted(found)]


#: Inside each revision folder: its files' sizes and digests, written before it is renamed
#: into place (the hub's loaders ignore unknown files).
REVISION_MANIFEST = "repgeo_revision.json"


def damaged_revisions(folder: str | Path) -> list[str]:
    """The saved revisions whose files no longer match the manifest written with them (a
    revision saved before manifests existed counts as intact)."""
    damaged = []
    for revision in list_revisions(folder):
        path = Path(folder) / "revisions" / revision
        manifest_path = path / REVISION_MANIFEST
        if not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            damaged.append(revision)
            continue
        if check_files(path, manifest) is not None:
            damaged.append(revision)
    return damaged


def revision_step(revision: str) -> int | None:
    """The training step of a revision name (``"step512"`` -> 512), or None."""
    match = _STEP_RE.match(revision)
    return int(match.group(1)) if match else None


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' per-file progress bars (loading or saving dozens of small
    checkpoints would flood a notebook); restores the previous setting."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_model_quietly(model, tokenizer, folder: Path) -> None:
    """``save_pretrained`` of model and tokenizer without progress bars."""
    with quiet_progress_bars():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def save_revision(folder: Path, step: int, model, tokenizer) -> None:
    """Write ``revisions/step<step>/`` in the hub's layout, atomically."""
    rev_root = folder / "revisions"
    rev_root.mkdir(parents=True, exist_ok=True)
    final = rev_root / f"step{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step{step}-", dir=rev_root))
    try:
        save_model_quietly(model, tokenizer, tmp)
        (tmp / REVISION_MANIFEST).write_text(json.dumps(build_manifest(tmp), indent=1))
        if final.exists():  # rewritten after a resume: same weights, replace
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
