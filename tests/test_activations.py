"""Activations: the rows are the model's hidden states of real tokens, whatever the batching;
the cache reuses exactly what the same inputs made, and nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from repgeo_utils import activations as act
from repgeo_utils.activations import (
    ActivationSet,
    ShardedArray,
    extract_activations,
    length_buckets,
    resolve_layers,
)
from repgeo_utils.cache import META
from repgeo_utils.config import cache_dir

TEXTS = [
    "the movie was very good",
    "i hate this app",
    "great",
    "the director and the cast were brilliant but the plot was predictable",
    "vote",
    "the team lost the game and the team won the election of the market",
    "love it",
    "this update is not easy to use",
    "news on sport , politics and tech for business",
    "awful acting , terrible film",
]


def extract(model, texts, layers=None, **kwargs) -> ActivationSet:
    """extract_activations with the tiny models' settings: 64 positions, no progress bar."""
    kwargs.setdefault("max_length", 64)
    kwargs.setdefault("progress", False)
    return extract_activations(model, texts, layers, **kwargs)


def direct_hidden_states(folder: Path, text: str) -> list[np.ndarray]:
    """Hidden states of one text, run alone (no padding), straight from transformers."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        out = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


@pytest.fixture
def count_loads(monkeypatch):
    """Count how often extraction loads a model (a cache hit loads none)."""
    calls = []
    real = act.load_model

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(act, "load_model", counting)
    return calls


def complete_entries() -> list[Path]:
    folder = cache_dir() / "activations"
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if (p / META).is_file() and not p.name.startswith(".")]


# --- what is stored ---------------------------------------------------------------------------


def test_rows_are_the_unpadded_hidden_states_of_real_tokens(tiny_bert):
    acts = extract(tiny_bert, TEXTS)
    assert acts.layers == (0, 1, 2)
    assert acts.n_texts == len(TEXTS)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    expected_ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert list(acts.lengths) == [len(ids) for ids in expected_ids]
    assert acts.offsets[0] == 0 and acts.offsets[-1] == acts.n_tokens
    np.testing.assert_array_equal(acts.token_ids, np.concatenate(expected_ids))
    for i, text in enumerate(TEXTS):
        rows = acts.text_rows(i)
        special = acts.special_mask[rows]
        # [CLS] first, [SEP] last, nothing special in between
        assert special[0] and special[-1] and not special[1:-1].any()
        for layer, hidden in enumerate(direct_hidden_states(tiny_bert, text)):
            np.testing.assert_allclose(acts.tokens(layer)[rows], hidden, atol=1e-5)
            np.testing.assert_allclose(acts.pooled(layer, "mean")[i], hidden.mean(0), atol=1e-5)
            np.testing.assert_allclose(acts.pooled(layer, "cls")[i], hidden[0], atol=1e-6)
            np.testing.assert_allclose(acts.pooled(layer, "last")[i], hidden[-1], atol=1e-6)


def test_batching_padding_and_max_length_do_not_change_activations(tiny_bert):
    # one text per batch, no padding at all ...
    alone = extract(tiny_bert, TEXTS, max_length=64, batch_tokens=1)
    # ... versus every text in one padded batch, with a different (non-truncating) max_length
    together = extract(tiny_bert, TEXTS, max_length=40, batch_tokens=10_000, progress=False)
    assert alone.path != together.path  # max_length is part of the key: both were computed
    np.testing.assert_array_equal(alone.offsets, together.offsets)
    np.testing.assert_array_equal(alone.token_ids, together.token_ids)
    for layer in alone.layers:
        np.testing.assert_allclose(
            np.asarray(alone.tokens(layer)), np.asarray(together.tokens(layer)), atol=1e-5
        )
        for how in ("mean", "cls", "last"):
            np.testing.assert_allclose(
                alone.pooled(layer, how), together.pooled(layer, how), atol=1e-5
            )


def test_max_length_truncates_and_keeps_the_final_sep(tiny_bert):
    acts = extract(tiny_bert, TEXTS, layers=[-1], max_length=5)
    assert acts.lengths.max() == 5
    ends = acts.offsets[1:] - 1
    assert acts.special_mask[ends].all()
    tokens = acts.locate(ends)["token"]
    assert set(tokens) == {"[SEP]"}


def test_layers_negative_indices_and_range_errors(tiny_bert):
    assert resolve_layers([-1, 0, 2], 3) == (0, 2)
    assert resolve_layers(None, 3) == (0, 1, 2)
    with pytest.raises(IndexError, match=r"0\.\.2.*-3\.\.-1"):
        resolve_layers([3], 3)
    with pytest.raises(IndexError, match="out of range"):
        extract(tiny_bert, TEXTS, layers=[-4])
    acts = extract(tiny_bert, TEXTS, layers=[-1, 0])
    assert acts.layers == (0, 2)
    np.testing.assert_array_equal(np.asarray(acts.tokens(-1)), np.asarray(acts.tokens(2)))
    with pytest.raises(KeyError, match=r"holds layers \[0, 2\]"):
        acts.tokens(1)
    with pytest.raises(IndexError, match="out of range"):
        acts.tokens(5)
    with pytest.raises(ValueError, match="Unknown pooling"):
        acts.pooled(0, "max")


def test_bad_inputs_are_errors(tiny_bert):
    with pytest.raises(ValueError, match="empty"):
        extract(tiny_bert, [])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        extract(tiny_bert, ["fine", 3])
    with pytest.raises(ValueError, match="dtype"):
        extract(tiny_bert, TEXTS, dtype="float16")
    with pytest.raises(ValueError, match="positions"):
        extract(tiny_bert, TEXTS, max_length=65)


def test_bfloat16_compute_is_close_to_float32(tiny_bert):
    full = extract(tiny_bert, TEXTS, layers=[-1])
    half = extract(tiny_bert, TEXTS, layers=[-1], dtype="bfloat16")
    assert half.path != full.path and half.key["dtype"] == "bfloat16"
    a, b = np.asarray(full.tokens(-1)), np.asarray(half.tokens(-1))
    assert b.dtype == np.float32
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=0.1)


def test_shards_are_valid_safetensors_read_memory_mapped(tiny_bert, tmp_path):
    single = extract(tiny_bert, TEXTS)
    # a tiny shard size puts (about) one text per shard; another cache root forces a rerun
    sharded = extract(tiny_bert, TEXTS, shard_mb=0.004, root=tmp_path / "other")
    assert len(sharded.meta["shards"]) > 3
    tokens = sharded.tokens(1)
    assert isinstance(tokens, ShardedArray) and tokens.shape == (single.n_tokens, 16)
    assert all(isinstance(p, np.memmap) for p in tokens.parts())
    full = np.asarray(single.tokens(1))
    np.testing.assert_allclose(np.asarray(tokens), full, atol=1e-6)
    np.testing.assert_array_equal(sharded.offsets, single.offsets)
    np.testing.assert_array_equal(sharded.token_ids, single.token_ids)
    np.testing.assert_allclose(sharded.pooled(1, "mean"), single.pooled(1, "mean"), atol=1e-6)
    # slices across shard boundaries, fancy, boolean and negative indices
    np.testing.assert_allclose(tokens[3:40], full[3:40], atol=1e-6)
    np.testing.assert_allclose(tokens[5:50:7], full[5:50:7], atol=1e-6)
    pick = np.array([40, 0, -1, 17])
    np.testing.assert_allclose(tokens[pick], full[pick], atol=1e-6)
    np.testing.assert_allclose(tokens[sharded.special_mask], full[single.special_mask], atol=1e-6)
    np.testing.assert_allclose(tokens[-1], full[-1], atol=1e-6)
    np.testing.assert_allclose(tokens[2:9, 3], full[2:9, 3], atol=1e-6)
    assert tokens[9:9].shape == (0, 16)
    # every shard opens with the safetensors library and agrees with the memmap
    first = 0
    for shard in sharded.meta["shards"]:
        with safe_open(str(sharded.path / shard["file"]), framework="np") as handle:
            rows = handle.get_tensor("tokens.1")
            np.testing.assert_array_equal(rows, tokens[first : first + len(rows)])
            lo, hi = shard["texts"]
            assert handle.get_tensor("offsets").shape == (hi - lo + 1,)
            assert handle.metadata()["format"] == "repgeo-activations"
        first += len(rows)
    assert first == sharded.n_tokens


def test_locate_maps_rows_back_to_text_position_and_token(tiny_bert):
    acts = extract(tiny_bert, TEXTS, layers=[0])
    second = acts.text_rows(1)  # "i hate this app"
    table = acts.locate(np.arange(second.start, second.stop))
    assert list(table["token"]) == ["[CLS]", "i", "hate", "this", "app", "[SEP]"]
    assert set(table["text_index"]) == {1}
    assert list(table["position"]) == [0, 1, 2, 3, 4, 5]
    assert list(table["special"]) == [True, False, False, False, False, True]
    assert list(acts.locate([acts.n_tokens - 1])["text_index"]) == [len(TEXTS) - 1]
    with pytest.raises(IndexError):
        acts.locate([acts.n_tokens])


def test_length_buckets_cover_every_text_once_within_the_budget():
    lengths = np.array([5, 30, 7, 7, 12, 64, 3, 30, 9])
    batches = length_buckets(lengths, batch_tokens=64, max_batch_size=3)
    order = np.concatenate(batches)
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[batches[0][0]] == 64  # longest first
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 64
    # long texts: the attention term (texts x length^2) binds before the token budget
    long = np.full(40, 256)
    batches = length_buckets(long, batch_tokens=8192, max_batch_size=256)
    assert {len(b) for b in batches} == {8192 * act.ATTENTION_REFERENCE_LENGTH // 256**2}
    assert [len(b) for b in length_buckets(np.full(40, 32), 8192, 256)] == [40]


# --- the cache --------------------------------------------------------------------------------


def test_second_call_hits_the_cache(tiny_bert, count_loads):
    first = extract(tiny_bert, TEXTS, layers=[0, 2])
    second = extract(tiny_bert, list(TEXTS), layers=[2, -3])
    assert len(count_loads) == 1
    assert second.path == first.path
    assert isinstance(second, ActivationSet)
    assert len(complete_entries()) == 1


def _revisions_folder(tiny_bert: Path, root: Path) -> Path:
    for revision in ("step1", "step2"):
        shutil.copytree(tiny_bert, root / "revisions" / revision)
    return root


@pytest.mark.parametrize(
    "change",
    ["texts", "text_order", "max_length", "layers", "dtype", "model", "revision", "rewritten"],
)
def test_changing_any_key_recomputes(tiny_bert, tmp_path, count_loads, change):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    base = dict(model=folder, texts=TEXTS[:4], layers=[0, 2], max_length=32, dtype="float32")
    if change == "revision":
        base["model"] = _revisions_folder(tiny_bert, tmp_path / "with-revisions")
        base["revision"] = "step1"

    def run(**kw):
        args = {**base, **kw}
        return extract(args.pop("model"), args.pop("texts"), **args)

    first = run()
    if change == "texts":
        second = run(texts=[*TEXTS[:3], "the movie was very bad"])
    elif change == "text_order":
        second = run(texts=TEXTS[:4][::-1])
    elif change == "max_length":
        second = run(max_length=31)
    elif change == "layers":
        second = run(layers=[0, 1, 2])
    elif change == "dtype":
        second = run(dtype="bfloat16")
    elif change == "model":
        other = tmp_path / "other-model"
        shutil.copytree(tiny_bert, other)
        second = run(model=other)
    elif change == "revision":
        second = run(revision="step2")
    else:  # the same folder, its weights overwritten in place (a re-run of fine-tuning)
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder)
        with torch.no_grad():
            model.encoder.layer[0].output.dense.weight.mul_(2.0)
        model.save_pretrained(folder)
        second = run()
        assert not np.allclose(np.asarray(first.tokens(2)), np.asarray(second.tokens(2)))
    assert len(count_loads) == 2
    assert second.path != first.path
    assert len(complete_entries()) == 2


def test_exception_mid_write_leaves_no_reusable_entry(tiny_bert, monkeypatch, count_loads):
    real = act._ShardSet.write_text
    written = []

    def crash_after_two(self, *args, **kwargs):
        if len(written) == 2:
            raise RuntimeError("simulated crash")
        written.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(act._ShardSet, "write_text", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(tiny_bert, TEXTS, batch_tokens=1)
    assert complete_entries() == []
    assert not any((cache_dir() / "activations").glob(".tmp-*"))  # cleaned up
    monkeypatch.setattr(act._ShardSet, "write_text", real)
    acts = extract(tiny_bert, TEXTS, batch_tokens=1)
    assert len(count_loads) == 2  # recomputed, not reused
    assert acts.n_texts == len(TEXTS)


def test_killed_process_leaves_no_reusable_entry(tiny_bert, count_loads):
    """A process killed half-way (no Python clean-up at all) leaves only a .tmp folder."""
    script = textwrap.dedent(
        f"""
        import os
        from repgeo_utils import activations as act
        real = act._ShardSet.write_text
        done = []
        def die_after_three(self, *args, **kwargs):
            if len(done) == 3:
                os._exit(9)
            done.append(1)
            return real(self, *args, **kwargs)
        act._ShardSet.write_text = die_after_three
        act.extract_activations(
            {str(tiny_bert)!r}, {TEXTS!r}, max_length=64, batch_tokens=1, progress=False
        )
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    leftovers = [p for p in (cache_dir() / "activations").iterdir() if p.is_dir()]
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    assert complete_entries() == []
    acts = extract(tiny_bert, TEXTS)
    assert len(count_loads) == 1  # computed here, nothing reused from the killed run
    assert acts.n_tokens == int(acts.lengths.sum())
