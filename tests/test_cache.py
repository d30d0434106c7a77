"""Cache entries are reused only when intact: damage is found, moved aside and rebuilt; dead
builds leave nothing behind for long; a busy lock says who holds it and gives up in time."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from repgeo_utils import cache
from repgeo_utils.cache import CacheLockTimeout, cache_entry, entry_path

KEY = {"model": "m", "n": 1}


def _build(root, key=KEY, files=None):
    """Build (or reuse) an entry; returns (entry, whether this call built it)."""
    files = files or {"payload.bin": b"\x01" * 4096, "metrics.json": b'{"fvu": 0.27}'}
    with cache_entry("kind", "name", key, root=root) as entry:
        built = not entry.exists
        if built:
            for name, data in files.items():
                (entry.tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (entry.tmp / name).write_bytes(data)
    return entry, built


def test_a_committed_entry_records_every_file_and_is_reused(tmp_path):
    entry, built = _build(tmp_path, files={"a.bin": b"xyz", "model/w.bin": b"1234"})
    assert built
    manifest = cache.read_meta(entry.path)["manifest"]
    assert set(manifest) == {"a.bin", "model/w.bin"}
    assert manifest["a.bin"]["size"] == 3
    assert manifest["model/w.bin"]["sha256"] == cache.file_digest(entry.path / "model" / "w.bin")
    _, built_again = _build(tmp_path)
    assert not built_again


def _damaged_dir(root):
    return root / "kind" / cache.DAMAGED


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.joinpath("payload.bin").write_bytes(b"\x01" * 100), "has 100 bytes, 4,096 were written"),
        (lambda p: p.joinpath("payload.bin").write_bytes(b"\x00" * 4096), "SHA-256 differs"),
        (lambda p: p.joinpath("metrics.json").write_bytes(b'{"fvu": 0.01}'), "metrics.json"),
        (lambda p: p.joinpath("payload.bin").unlink(), "payload.bin is missing"),
        (lambda p: p.joinpath("meta.json").write_text("{not json"), "meta.json cannot be read"),
    ],
    ids=["truncated", "zeroed", "edited-metrics", "missing", "bad-meta"],
)  # fmt: skip
def test_damage_is_found_moved_aside_logged_and_rebuilt(tmp_path, caplog, damage, problem):
    entry, _ = _build(tmp_path)
    time.sleep(0.01)  # a new modification time for edits that keep the size
    damage(entry.path)
    assert problem in cache.entry_problem(entry.path, KEY)
    with caplog.at_level(logging.WARNING, logger="repgeo_utils.cache"):
        rebuilt, built = _build(tmp_path)
    assert built and cache.is_complete(rebuilt.path, KEY)
    assert (rebuilt.path / "payload.bin").read_bytes() == b"\x01" * 4096
    [moved] = list(_damaged_dir(tmp_path).iterdir())
    assert str(entry.path) in caplog.text and str(moved) in caplog.text and problem in caplog.text


def test_same_size_same_time_edit_needs_full_verification(tmp_path, monkeypatch):
    """The documented limit of the cheap check: a same-size edit that restores the file's
    modification time passes stat mode; REPGEO_CACHE_VERIFY=full digests and catches it."""
    entry, _ = _build(tmp_path)
    payload = entry.path / "payload.bin"
    stat = payload.stat()
    payload.write_bytes(b"\x02" * 4096)
    os.utime(payload, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.entry_problem(entry.path, KEY) is None
    monkeypatch.setenv("REPGEO_CACHE_VERIFY", "full")
    assert "SHA-256 differs" in cache.entry_problem(entry.path, KEY)
    monkeypatch.setenv("REPGEO_CACHE_VERIFY", "sometimes")
    with pytest.raises(
        ValueError, match="REPGEO_CACHE_VERIFY must be 'stat' or 'full', got 'sometimes'"
    ):
        cache.entry_problem(entry.path, KEY)


def test_an_entry_from_before_file_checks_is_rebuilt(tmp_path):
    entry, _ = _build(tmp_path)
    meta = cache.read_meta(entry.path)
    del meta["manifest"]
    (entry.path / "meta.json").write_text(json.dumps(meta))
    assert "lists no files" in cache.entry_problem(entry.path, KEY)
    _, built = _build(tmp_path)
    assert built


def test_another_key_is_another_entry_not_damage(tmp_path):
    entry, _ = _build(tmp_path)
    assert cache.entry_problem(entry.path, {"model": "m", "n": 2}) == "other key"
    assert cache.entry_problem(tmp_path / "nothing", KEY) == "absent"


KILLED_BUILD = """
import os, sys
from pathlib import Path
from repgeo_utils.cache import cache_entry
with cache_entry("kind", "name", {{"model": "m", "n": {n}}}, root=Path(sys.argv[1])) as entry:
    (entry.tmp / "big.bin").write_bytes(b"\\0" * 1_000_000)
    os._exit(9)  # killed: no clean-up at all
"""


def test_a_killed_build_leaves_a_temporary_folder_that_the_next_build_removes(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD.format(n=7), str(tmp_path)], capture_output=True
    )
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    leftovers = [p for p in (tmp_path / "kind").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1
    _build(tmp_path)  # any build of the same kind sweeps dead builds' folders
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "kind").iterdir())
    assert not entry_path("kind", "name", {"model": "m", "n": 7}, root=tmp_path).exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from repgeo_utils.cache import cache_entry
with cache_entry("kind", "name", {"model": "m", "n": 1}, root=Path(sys.argv[1])) as entry:
    (entry.tmp / "part.bin").write_bytes(b"1")
    print("building", flush=True)
    time.sleep(60)
"""


def test_a_busy_lock_names_its_holder_and_gives_up_after_the_limit(tmp_path, monkeypatch):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "building"
        # its temporary folder is owned by a live lock: a sweep keeps it
        assert cache.clean_stale_temporaries(tmp_path / "kind") == []
        monkeypatch.setenv("REPGEO_CACHE_LOCK_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(CacheLockTimeout, match=f"being built by process {holder.pid} on "):
            _build(tmp_path)
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()
    _, built = _build(tmp_path)  # the dead holder's lock is free again
    assert built


def test_a_bad_lock_timeout_setting_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("REPGEO_CACHE_LOCK_TIMEOUT", "soon")
    with pytest.raises(
        ValueError, match="REPGEO_CACHE_LOCK_TIMEOUT must be a number of seconds >= 0, got 'soon'"
    ):
        _build(tmp_path)


def test_seal_checks_a_folder_built_in_place(tmp_path):
    folder = tmp_path / "run"
    (folder / "revisions" / "step1").mkdir(parents=True)
    (folder / "revisions" / "step1" / "model.safetensors").write_bytes(b"w" * 64)
    cache.seal(folder, {"key": KEY, "complete": True})
    assert cache.is_complete(folder, KEY)
    (folder / "revisions" / "step1" / "model.safetensors").write_bytes(b"w" * 10)
    assert not cache.is_complete(folder, KEY)


def test_a_truncated_activation_shard_is_rebuilt_not_read(tiny_bert, tmp_path, caplog):
    """The finding that started this: a truncated shard was a cache hit that then failed in
    NumPy without a path."""
    from repgeo_utils.activations import extract_activations

    texts = ["the movie was good", "the plot was bad", "a great game"]
    first = extract_activations(
        tiny_bert, texts, layers=[-1], max_length=32, root=tmp_path, progress=False
    )
    shard = next(first.path.glob("shard-*.safetensors"))
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="repgeo_utils.cache"):
        again = extract_activations(
            tiny_bert, texts, layers=[-1], max_length=32, root=tmp_path, progress=False
        )
    assert "damaged" in caplog.text and shard.name in caplog.text
    assert again.tokens(-1).shape == first.tokens(-1).shape
    assert again.pooled(-1).shape == (3, first.d_model)


# --- damaged or diverged results of the heavy steps -------------------------------------------


def test_a_diverged_sae_is_refused_and_nothing_is_cached(tiny_bert, tmp_path):
    from repgeo_utils.activations import extract_activations
    from repgeo_utils.sae import SAEConfig, train_sae_on_activations

    texts = [f"the {w} movie was good and the plot was bad" for w in ("a", "an", "it", "this")] * 5
    acts = extract_activations(tiny_bert, texts, [-1], max_length=32, root=tmp_path, progress=False)
    config = SAEConfig(d_in=acts.d_model, d_sae=32, lr=1e6, epochs=2, scale_inputs=False)
    with pytest.raises(FloatingPointError, match=r"diverged \(.*\) with lr=1000000.0"):
        train_sae_on_activations(acts, -1, config, root=tmp_path, progress=False)
    assert not any(p.is_dir() and not p.name.startswith(".") for p in (tmp_path / "sae").iterdir())


def test_fine_tune_divergence_names_the_first_non_finite_value():
    import torch

    from repgeo_utils import finetune

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    assert finetune.divergence(model, []) == "non-finite values in weight"
    assert finetune.divergence(torch.nn.Linear(2, 2), [{"loss": float("inf"), "epoch": 1.0}]) == (
        "loss inf at epoch 1.0"
    )
    assert finetune.divergence(torch.nn.Linear(2, 2), [{"loss": 0.7, "epoch": 1.0}]) is None


def _tiny_pretrain_config():
    from tests.test_pretrain import TINY

    return TINY


def test_a_damaged_finished_pretraining_run_is_set_aside_and_retrained(tmp_path, caplog):
    from repgeo_utils import lm

    config = _tiny_pretrain_config()
    first = lm.pretrain(config, root=tmp_path, progress=False)
    weights = first.run_folder / "revisions" / "step4" / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(100)
    assert not lm.is_run_complete(first.run_folder, config)
    with caplog.at_level(logging.WARNING, logger="repgeo_utils.cache"):
        again = lm.pretrain(config, root=tmp_path, progress=False)
    assert again.complete and "step4/model.safetensors has 100 bytes" in caplog.text
    assert again.train_log == first.train_log
    assert (weights.stat().st_size > 100) and any((tmp_path / "pretrain" / cache.DAMAGED).iterdir())


def test_a_truncated_resume_state_restarts_the_run_instead_of_failing(tmp_path, caplog):
    from repgeo_utils import lm

    config = _tiny_pretrain_config()
    whole = lm.pretrain(config, root=tmp_path / "whole", progress=False)
    part = lm.pretrain(config, root=tmp_path / "split", stop_at_step=3, progress=False)
    state = part.run_folder / "state" / "resume.pt"
    with open(state, "r+b") as handle:
        handle.truncate(state.stat().st_size // 3)
    with caplog.at_level(logging.WARNING, logger="repgeo_utils.lm.training"):
        resumed = lm.pretrain(config, root=tmp_path / "split", progress=False)
    assert "resume.pt cannot be read" in caplog.text and "training again from step 0" in caplog.text
    assert resumed.complete and resumed.train_log == whole.train_log


def test_a_damaged_revision_of_an_interrupted_run_restarts_it(tmp_path, caplog):
    from repgeo_utils import lm

    config = _tiny_pretrain_config()
    part = lm.pretrain(config, root=tmp_path, stop_at_step=3, progress=False)
    weights = part.run_folder / "revisions" / "step2" / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    assert lm.damaged_revisions(part.run_folder) == ["step2"]
    with caplog.at_level(logging.WARNING, logger="repgeo_utils.lm.training"):
        resumed = lm.pretrain(config, root=tmp_path, progress=False)
    assert "revisions ['step2'] are damaged" in caplog.text
    assert resumed.complete and lm.damaged_revisions(resumed.run_folder) == []
