"""The paper profile's smoke fixtures: the hub mirror ($REPGEO_HUB_MIRROR) that models and data
resolve through, the tiny models and data sets of repgeo_utils.smoke read by the real loaders,
and Pythia's revisions mapped onto the tiny run's checkpoints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from repgeo_utils import config, data, models, smoke
from repgeo_utils.config import HubMirrorWarning
from repgeo_utils.lm import checkpoint_schedule
from repgeo_utils.sae import SparseAutoencoder, evaluate_sae
from repgeo_utils.sae import grid as sg
from repgeo_utils.sae.cached import DIVERGED_FVU

BASE_ID = "google-bert/bert-base-uncased"
TINY_ID = "google/bert_uncased_L-2_H-128_A-2"
WORDS = "the film was great terrible awful brilliant app music".split()


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv("REPGEO_HUB_MIRROR", str(folder))
    return folder


def _fake_model(folder: Path) -> Path:
    """A folder that resolves as a model (resolution looks only for config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


# --- $REPGEO_HUB_MIRROR ------------------------------------------------------------------------


def test_no_mirror_means_the_hub(monkeypatch):
    monkeypatch.delenv("REPGEO_HUB_MIRROR", raising=False)
    assert config.hub_mirror() is None
    ref = models.resolve_model("bert-base")
    assert (ref.path, ref.source) == (BASE_ID, "hub")
    assert models.resolve_model("EleutherAI/pythia-160m", "step1000").revision == "step1000"


def test_mirror_that_is_not_a_folder_is_refused(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "mirror.txt"
    not_a_folder.write_text("x")
    monkeypatch.setenv("REPGEO_HUB_MIRROR", str(not_a_folder))
    with pytest.raises(FileNotFoundError, match="mirror.txt.*is not a folder"):
        config.hub_mirror()
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        models.resolve_model("bert-base")
    monkeypatch.setenv("REPGEO_HUB_MIRROR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        data.load_task("imdb")


def test_registry_model_resolves_to_its_mirror_folder_with_a_warning(mirror):
    folder = _fake_model(mirror / BASE_ID)
    with pytest.warns(HubMirrorWarning, match=r"bert-base.*google-bert/bert-base-uncased"):
        ref = models.resolve_model("bert-base")
    assert (ref.name, ref.path, ref.revision, ref.source) == (
        "bert-base",
        str(folder),
        None,
        "local",
    )
    # "main" is the folder itself, as on the hub
    with pytest.warns(HubMirrorWarning):
        assert models.resolve_model("bert-base", "main").path == str(folder)


def test_any_hub_id_and_its_revisions_resolve_in_the_mirror(mirror):
    root = _fake_model(mirror / "EleutherAI" / "pythia-160m")
    _fake_model(root / "revisions" / "step0")
    step = _fake_model(root / "revisions" / "step1000")
    with pytest.warns(HubMirrorWarning, match="EleutherAI/pythia-160m"):
        ref = models.resolve_model("EleutherAI/pythia-160m", "step1000")
    assert (ref.path, ref.revision, ref.source) == (str(step), "step1000", "local")
    with pytest.warns(HubMirrorWarning), pytest.raises(models.ModelNotFoundError) as err:
        models.resolve_model("EleutherAI/pythia-160m", "step512")
    assert "no revision 'step512'" in str(err.value)
    assert "Revisions there: step0, step1000." in str(err.value)


def test_a_model_the_mirror_lacks_is_an_error_naming_the_folder(mirror):
    with pytest.raises(models.ModelUnavailableError) as err:
        models.resolve_model("bert-tiny")
    assert str(mirror / TINY_ID / "config.json") in str(err.value)
    with pytest.raises(models.ModelUnavailableError, match="org/absent"):
        models.resolve_model("org/absent")
    # the package model never goes through the mirror
    assert models.resolve_model("minilm-l6").source == "package"


def test_a_task_the_mirror_lacks_is_an_error_naming_the_folder(mirror):
    with pytest.raises(data.TaskUnavailableError) as err:
        data.load_task("news")
    assert str(mirror / "datasets" / "heegyu" / "news-category-dataset") in str(err.value)
    with pytest.raises(data.TaskUnavailableError, match=str(mirror / "datasets" / "spotify")):
        data.load_task("spotify")


def test_a_file_task_without_the_mirror_names_its_local_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("REPGEO_HUB_MIRROR", raising=False)
    with pytest.raises(data.TaskUnavailableError) as err:
        data.load_task("spotify")
    assert str(tmp_path / "data" / "tasks" / "spotify") in str(err.value)
    assert data.task_folder("spotify") == tmp_path / "data" / "tasks" / "spotify"


# --- the mirror's parts through the real loaders ----------------------------------------------


@pytest.fixture(scope="module")
def datasets_mirror(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("datasets-mirror")
    smoke.build_datasets(folder)
    return folder


def _load(name: str, **kwargs):
    with pytest.warns(HubMirrorWarning, match=f"task {name!r}"):
        return data.load_task(name, max_rows=None, **kwargs)


def _rows(dd) -> int:
    return sum(len(dd[s]) for s in data.SPLITS)


def test_imdb_mirror_reads_as_the_paper_task(datasets_mirror, monkeypatch):
    monkeypatch.setenv("REPGEO_HUB_MIRROR", str(datasets_mirror))
    dd = _load("imdb")
    assert dd["train"].features["label"].names == ["negative", "positive"]
    assert dd["train"].column_names == ["text", "label"]
    # train 100 + test 100 labelled; the 20 unlabelled (-1) reviews are not read
    assert _rows(dd) == 200
    labels = [y for s in data.SPLITS for y in dd[s]["label"]]
    assert sorted(set(labels)) == [0, 1] and labels.count(1) == 100
    # the paper's preprocessing removed the HTML line breaks' punctuation
    assert not any("<" in t for s in data.SPLITS for t in dd[s]["text"])
    with pytest.raises(ValueError, match="revision='refs/pr/1'.*one copy"):
        data.load_task("imdb", revision="refs/pr/1")


def test_news_mirror_keeps_the_papers_five_categories(datasets_mirror, monkeypatch):
    monkeypatch.setenv("REPGEO_HUB_MIRROR", str(datasets_mirror))
    dd = _load("news")
    names = dd["train"].features["label"].names
    assert names == ["wellness", "sports", "entertainment", "politics", "food"]
    # 5 kept categories x 60 headlines; TRAVEL and TECH (20 each) dropped
    assert _rows(dd) == 300
    counts = [sum(1 for s in data.SPLITS for y in dd[s]["label"] if y == i) for i in range(5)]
    assert counts == [60] * 5


def test_spotify_mirror_drops_the_empty_review(datasets_mirror, monkeypatch):
    monkeypatch.setenv("REPGEO_HUB_MIRROR", str(datasets_mirror))
    raw = (datasets_mirror / "datasets" / "spotify" / "reviews.csv").read_text().splitlines()
    assert raw[0] == "Time_submitted,Review,Rating,Total_thumbsup,Reply"
    assert len(raw) == 1 + 5 * 40 + 1
    dd = _load("spotify")
    assert dd["train"].features["label"].names == ["1", "2", "3", "4", "5"]
    texts = [t for s in data.SPLITS for t in dd[s]["text"]]
    # 200 rated reviews; the one empty review is no example (not the text "nan" or "none")
    assert len(texts) == 200
    assert all(t and t not in ("nan", "none") for t in texts)


def test_tiny_berts_load_through_the_registry(mirror):
    smoke.save_tiny_bert(
        mirror / BASE_ID,
        WORDS,
        layers=4,
        hidden=8,
        max_positions=32,
        model_class=smoke.BertForMaskedLM,
        model_max_length=512,
    )
    smoke.save_tiny_bert(
        mirror / TINY_ID, WORDS, hidden=8, model_class=smoke.BertForPreTraining, vocab_only=True
    )
    assert sorted(p.name for p in (mirror / TINY_ID).iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.txt",
    ]
    with pytest.warns(HubMirrorWarning):
        encoder, tokenizer = models.load_model("bert-base")
    assert (encoder.config.num_hidden_layers, encoder.config.hidden_size) == (4, 8)
    assert tokenizer.model_max_length == 512
    ids = tokenizer("The film was GREAT")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "the", "film", "was", "great", "[SEP]"]
    with pytest.warns(HubMirrorWarning):
        clf, tok = models.load_model("bert-tiny", kind="classifier", label_names=["a", "b", "c"])
    assert clf.config.num_labels == 3 and clf.config.num_hidden_layers == 2
    # an unknown word splits into letters, never [UNK]
    assert tok.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"]


def test_wordpiece_vocab_order():
    vocab = smoke.wordpiece_vocab(["Film", "app", "film"])
    assert vocab[:7] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "app", "film"]
    assert len(vocab) == 5 + 2 + 36 + 36


# --- Pythia's revisions -------------------------------------------------------------------------


def test_pythia_revisions_map_onto_the_tiny_run_by_hand():
    tiny = checkpoint_schedule(smoke.PYTHIA_STEPS, smoke.PYTHIA_CONFIG.checkpoint_every)
    mapping = smoke.pythia_step_map(tiny)
    assert len(mapping) == 154
    # Pythia's step N stands for the tiny run's N * 1430 / 143000 = N / 100, rounded down to a save
    assert mapping["step0"] == 0
    assert mapping["step1"] == 0  # 0.01
    assert mapping["step256"] == 2  # 2.56: saves 0, 1, 2, 4, ...
    assert mapping["step512"] == 4  # 5.12
    assert mapping["step1000"] == 10
    assert mapping["step9000"] == 90
    assert mapping["step71000"] == 710
    assert mapping["step143000"] == 1430


# --- building once per fixture version -----------------------------------------------------------


def test_build_reuses_a_mirror_of_this_version_and_rebuilds_another(tmp_path, monkeypatch):
    calls: list[str] = []

    def fake_datasets(folder: Path, seed: int = 0) -> list[str]:
        calls.append("datasets")
        (folder / "datasets").mkdir()
        return ["a text"]

    monkeypatch.setattr(smoke, "build_datasets", fake_datasets)
    monkeypatch.setattr(smoke, "build_berts", lambda folder, words: calls.append("berts"))
    monkeypatch.setattr(smoke, "build_pythia", lambda folder, work: calls.append("pythia"))
    target = tmp_path / "smoke-mirror"
    assert not smoke.is_built(target)
    smoke.build(target)
    assert calls == ["datasets", "berts", "pythia"]
    assert json.loads((target / smoke.STAMP).read_text())["version"] == smoke.FIXTURE_VERSION
    smoke.build(target)
    assert len(calls) == 3  # reused
    (target / smoke.STAMP).write_text(json.dumps({"version": smoke.FIXTURE_VERSION + 1}))
    (target / "stale.txt").write_text("from another version")
    assert not smoke.is_built(target)
    smoke.build(target)
    assert len(calls) == 6 and not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["smoke-mirror"]  # no temporary folder left


def test_a_failed_build_leaves_no_half_mirror(tmp_path, monkeypatch):
    def broken(folder, words):
        raise RuntimeError("disk full")

    monkeypatch.setattr(smoke, "build_berts", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        smoke.build(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_mirror_notice_is_a_warning_naming_the_folder(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config.mirror_notice("task 'x'", tmp_path)
    assert [w.category for w in caught] == [HubMirrorWarning]
    assert str(tmp_path) in str(caught[0].message)


def test_the_smoke_grid_trains_on_the_stand_in_width_where_the_paper_grid_cannot():
    """``make smoke`` passes GRID=smoke: on the stand-ins' 32 dimensions the paper grid's 1,024
    latents start above the divergence limit (so notebook 03 would stop), its 64 latents below."""
    smoke_grid, paper_grid = sg.grid_settings("smoke"), sg.grid_settings("paper")
    assert (smoke_grid.d_sae, paper_grid.d_sae) == (64, 1024)
    # the same texts, preset, epochs and seed as the paper grid: only the width differs
    assert sg.grid_settings("smoke", d_sae=1024) == paper_grid
    torch.manual_seed(0)
    x = torch.randn(2000, smoke.BERT_HIDDEN) * 0.5 + torch.randn(smoke.BERT_HIDDEN)
    fvu = {
        name: float(evaluate_sae(SparseAutoencoder(g.sae_config(smoke.BERT_HIDDEN)), x).fvu)
        for name, g in (("smoke", smoke_grid), ("paper", paper_grid))
    }
    assert fvu["paper"] > DIVERGED_FVU > fvu["smoke"]
