"""Profiles, seeding and the atomic cache."""

from __future__ import annotations

import pytest

from repgeo_utils.cache import cache_entry, entry_path
from repgeo_utils.config import FinetuneSettings, get_profile, seed_everything


def test_profiles():
    quick, paper = get_profile("quick"), get_profile("paper")
    assert quick.model == "minilm-l6" and set(quick.tasks) == {
        "tweets-binary",
        "tweets-3way",
        "bbc-news",
    }
    # Nadipalli (2025), section 3.1: Adam, lr 2e-5, 10 epochs
    assert (paper.finetune.learning_rate, paper.finetune.epochs) == (2e-5, 10)
    assert paper.model_sizes[-1] == "bert-base"
    assert quick.finetune_settings("bbc-news").learning_rate == 1e-4
    with pytest.raises(ValueError, match="Known profiles: paper, quick"):
        get_profile("fast")


def test_bad_settings_fail():
    with pytest.raises(ValueError, match="learning_rate"):
        FinetuneSettings(learning_rate=0)
    with pytest.raises(ValueError, match="epochs"):
        FinetuneSettings(epochs=-1)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-3)


def test_seed_everything_repeats_draws():
    import numpy as np
    import torch

    seed_everything(5)
    a = (np.random.rand(), torch.rand(1).item())
    seed_everything(5)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_cache_entry_atomic(tmp_path):
    key = {"model": "m", "n": 1}
    with cache_entry("kind", "name", key, root=tmp_path) as e:
        assert not e.exists
        (e.tmp / "payload.txt").write_text("done")
    assert (e.path / "payload.txt").read_text() == "done"
    with cache_entry("kind", "name", key, root=tmp_path) as e2:
        assert e2.exists and e2.tmp is None
    # a crash mid-write leaves nothing that a later lookup would reuse
    with pytest.raises(RuntimeError):
        with cache_entry("kind", "name", {"model": "m", "n": 2}, root=tmp_path) as e3:
            (e3.tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert not entry_path("kind", "name", {"model": "m", "n": 2}, root=tmp_path).exists()
    visible = [p.name for p in (tmp_path / "kind").iterdir() if not p.name.startswith(".")]
    assert visible == [e.path.name]
    # a different key is a different entry
    assert entry_path("kind", "name", {"model": "m", "n": 3}, root=tmp_path) != e.path


def test_concurrent_builders_build_once(tmp_path):
    import threading
    import time

    built = []

    def worker():
        with cache_entry("kind", "same", {"k": 1}, root=tmp_path) as e:
            if not e.exists:
                time.sleep(0.2)
                built.append(1)
                (e.tmp / "x").write_text("1")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [1]
