"""Distributional memorization: the infini-gram index agrees exactly with brute-force n-gram
counts on a small corpus, and the metric and tables behave as defined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repgeo_utils.lm import memorization as M

pytest.importorskip("infini_gram")


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    """30 documents of 5-60 tokens over a 12-token alphabet (many repeated n-grams, some long
    matches), indexed by the package's suffix-array builder."""
    rng = np.random.default_rng(0)
    motif = rng.integers(1, 12, size=20)
    docs = []
    for i in range(30):
        doc = rng.integers(1, 12, size=int(rng.integers(5, 60)))
        if i % 3 == 0:  # plant a shared 20-token motif: long suffix matches exist
            start = int(rng.integers(0, max(1, len(doc) - 20)))
            doc[start : start + 20] = motif[: len(doc[start : start + 20])]
        docs.append(doc.astype(np.uint16))
    folder = tmp_path_factory.mktemp("ngram") / "index"
    info = M.build_ngram_index(docs, folder)
    index = M.NgramIndex(folder, info["tokens"], info["documents"], eos_token_id=0)
    return docs, index


def test_token_files_have_the_indexers_layout(small_index):
    docs, index = small_index
    arr = index.token_array()
    offsets = np.fromfile(index.path / "offset.0", dtype="<u8")
    assert index.documents == len(docs) + 1  # the trailing empty document
    assert len(offsets) == index.documents and arr.size == index.tokens
    assert arr[0] == M.DOC_SEPARATOR and arr[-1] == M.DOC_SEPARATOR
    for doc, offset in zip(docs, offsets, strict=False):
        start = int(offset) // 2
        assert arr[start] == M.DOC_SEPARATOR
        np.testing.assert_array_equal(arr[start + 1 : start + 1 + len(doc)], doc)


def test_infgram_estimates_equal_brute_force_counts(small_index):
    """Every context (all suffixes of every prefix of a few documents, plus unseen contexts)
    and every next token: the engine and the brute-force scan agree exactly."""
    docs, index = small_index
    engine, arr = index.engine(), index.token_array()
    rng = np.random.default_rng(1)
    checked = 0
    contexts = []
    for doc in docs[:6]:
        for end in range(1, len(doc)):
            contexts.append((doc[max(0, end - 25) : end].tolist(), int(doc[end])))
    for _ in range(40):  # contexts that mostly do not occur, tokens 1..12 (12 never occurs)
        contexts.append((rng.integers(1, 13, size=int(rng.integers(1, 9))).tolist(),
                         int(rng.integers(1, 13))))  # fmt: skip
    for context, token in contexts:
        got = M.infgram_estimate(engine, context, token)
        want = M.brute_force_infgram(arr, context, token)
        assert got == want, (context, token, got, want)
        checked += 1
    assert checked > 100
    lengths = [M.brute_force_infgram(arr, c, t).suffix_len for c, t in contexts]
    assert max(lengths) >= 10  # the planted motif gives long matches


def test_brute_force_by_hand():
    sep = M.DOC_SEPARATOR
    arr = np.array([sep, 1, 2, 3, sep, 1, 2, 4, sep, 2, 3, sep], dtype=np.uint16)
    # "1 2" occurs twice, followed by 3 and by 4
    assert M.brute_force_infgram(arr, [1, 2], 3) == M.InfgramEstimate(0.5, 2, 2, 1)
    # "5 1 2" does not occur; its longest occurring suffix is "1 2"
    assert M.brute_force_infgram(arr, [5, 1, 2], 4) == M.InfgramEstimate(0.5, 2, 2, 1)
    # "2" occurs three times: followed by 3, 4, 3
    assert M.brute_force_infgram(arr, [2], 3) == M.InfgramEstimate(2 / 3, 1, 3, 2)
    # nothing matches: the unigram frequency over all positions
    est = M.brute_force_infgram(arr, [9], 2)
    assert est.suffix_len == 0 and est.prob == pytest.approx(3 / len(arr))


def test_split_documents_and_target_sequences(tmp_path):
    stream = np.array([5, 6, 0, 7, 0, 0, 8, 9, 10, 0], dtype=np.uint16)
    docs = M.split_documents(stream, separator=0)
    assert [d.tolist() for d in docs] == [[5, 6], [7], [8, 9, 10]]
    seqs = M.target_sequences(docs, n=5, max_tokens=2, min_tokens=2, seed=0)
    assert sorted(seqs) == [[5, 6], [8, 9]]
    with pytest.raises(ValueError, match="no document has 4 tokens"):
        M.target_sequences(docs, n=1, max_tokens=2, min_tokens=4)
    with pytest.raises(ValueError, match=f"\\[0, {M.DOC_SEPARATOR - 1}\\]"):
        M.write_token_files([np.array([M.DOC_SEPARATOR], dtype=np.uint16)], tmp_path)


def test_memorization_row_is_spearman_over_tokens():
    estimates = pd.DataFrame(
        {"sequence": [0, 0, 0, 1, 1, 1], "ig_prob": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}
    )
    same_order = [np.array([0.01, 0.02, 0.03]), np.array([0.04, 0.05, 0.06])]
    row = M.memorization_row(estimates, same_order)
    assert row["spearman"] == pytest.approx(1.0) and row["tokens"] == 6
    reversed_order = [np.array([0.06, 0.05, 0.04]), np.array([0.03, 0.02, 0.01])]
    assert M.memorization_row(estimates, reversed_order)["spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="5 LM probabilities for 6 estimates"):
        M.memorization_row(estimates, [np.ones(5)])


def test_suffix_length_table_buckets_by_hand():
    table = M.suffix_length_table([0, 1, 3, 4, 4, 5, 8, 9, 30, 6])
    assert list(table["suffix_length"]) == ["<=3", "4", "5", "6", "7", "8", ">=9"]
    assert list(table["tokens"]) == [3, 2, 1, 1, 0, 1, 2]
    assert table["percent"].sum() == pytest.approx(100.0)


def test_memorization_peak_ignores_the_initialisation():
    traj = pd.DataFrame({"split": "held-out", "step": [0, 10, 20, 30],
                         "spearman": [0.9, 0.3, 0.5, 0.4],
                         "spearman_spread": [0.01, 0.02, 0.03, 0.04]})  # fmt: skip
    peak = M.memorization_peak(traj)
    assert peak["peak_step"] == 20 and peak["peak_spearman"] == 0.5
    assert peak["final_step"] == 30 and peak["final_spread"] == 0.04
