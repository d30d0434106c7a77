"""Shared test fixtures: seeding, an isolated data folder, tiny random BERTs on disk."""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from repgeo_utils import smoke

torch.set_num_threads(1)


def import_afresh_warns(module: str, match: str) -> ModuleType:
    """Import ``module`` as if for the first time and check that it warns (DeprecationWarning
    matching ``match``): what an old import path does for one release."""
    sys.modules.pop(module, None)
    with pytest.warns(DeprecationWarning, match=match):
        return importlib.import_module(module)


# Words the tiny models know; anything else maps to [UNK].
TINY_WORDS = (
    "the a an is was and or but not very good bad great terrible awful love hate movie film "
    "plot acting app music news sport sports politics tech business game team won lost vote "
    "election market shares phone computer happy sad i you it this that of to in on for with "
    "predictable unpredictable brilliant director cast update updates interface easy hard use"
).split()


def make_tiny_bert(folder: Path, *, layers: int = 2, hidden: int = 16, seed: int = 0) -> Path:
    """Save a randomly initialised BERT (hub layout: config, safetensors, tokenizer) to folder:
    the smoke mirror's builder over :data:`TINY_WORDS` (64 positions, 2 heads)."""
    return smoke.save_tiny_bert(folder, TINY_WORDS, layers=layers, hidden=hidden, seed=seed)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path, monkeypatch):
    """Every test gets its own data/ and figures/ folders; the repo's are never touched."""
    monkeypatch.setenv("REPGEO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REPGEO_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: without this a hub lookup still
    # tries the network and waits out its retries (about 45 s a test) before failing
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-16 random BERT with a ~130-word vocabulary, saved in hub layout."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), layers=2, hidden=16)


@pytest.fixture(scope="session")
def tiny_bert_factory(tmp_path_factory):
    """Make tiny BERTs of any depth/width (cached per shape for the session)."""
    made: dict[tuple[int, int], Path] = {}

    def make(layers: int = 2, hidden: int = 16) -> Path:
        if (layers, hidden) not in made:
            folder = tmp_path_factory.mktemp(f"tiny-bert-L{layers}-H{hidden}")
            made[(layers, hidden)] = make_tiny_bert(folder, layers=layers, hidden=hidden)
        return made[(layers, hidden)]

    return make
