"""Model registry and loader: offline MiniLM, local folders, revisions, clear errors."""

from __future__ import annotations

import shutil

import pytest

from repgeo_utils.models import (
    MODELS,
    ModelNotFoundError,
    ModelUnavailableError,
    load_model,
    resolve_model,
)


def test_registry_has_the_paper_sizes():
    assert MODELS["bert-base"].location == "google-bert/bert-base-uncased"
    for size in ("bert-medium", "bert-small", "bert-mini", "bert-tiny"):
        assert MODELS[size].location.startswith("google/bert_uncased_L-")
    assert [MODELS[k].layers for k in ("bert-tiny", "bert-mini", "bert-medium", "bert-base")] == [
        2,
        4,
        8,
        12,
    ]


def test_offline_minilm_loads_as_bert():
    model, tok = load_model("minilm-l6")
    assert type(model).__name__ == "BertModel"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_classifier_head_is_seeded(tiny_bert):
    a, _ = load_model(tiny_bert, kind="classifier", label_names=["x", "y", "z"], seed=3)
    b, _ = load_model(tiny_bert, kind="classifier", label_names=["x", "y", "z"], seed=3)
    assert a.config.id2label == {0: "x", 1: "y", 2: "z"}
    assert (a.classifier.weight == b.classifier.weight).all()


def test_local_folder_and_revisions(tiny_bert, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_bert, run / "revisions" / "step4")
    ref = resolve_model(run, revision="step4")
    assert ref.source == "local" and ref.path.endswith("revisions/step4")
    model, _ = load_model(run, revision="step4")
    assert model.config.num_hidden_layers == 2
    with pytest.raises(ModelNotFoundError, match="no revision 'step8'.*step4"):
        resolve_model(run, revision="step8")


def test_unknown_model_lists_known_ones(tmp_path):
    with pytest.raises(ModelNotFoundError, match="minilm-l6, bert-base"):
        resolve_model("gpt-17")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path / "empty")


def test_hub_model_offline_fails_clearly():
    assert resolve_model("bert-tiny").path == "google/bert_uncased_L-2_H-128_A-2"
    assert resolve_model("EleutherAI/pythia-160m", "step1000").revision == "step1000"
    with pytest.raises(ModelUnavailableError, match="offline model.*minilm-l6"):
        load_model("bert-tiny")


def test_bad_kind_and_labels(tiny_bert):
    with pytest.raises(ValueError, match="Unknown kind"):
        load_model(tiny_bert, kind="decoder")
    with pytest.raises(ValueError, match="at least 2 labels"):
        load_model(tiny_bert, kind="classifier", label_names=["only"])
