"""Similarity measures: known answers, invariances, one-pass chunking, and the per-layer table."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from repgeo_utils.activations import ShardedArray, extract_activations
from repgeo_utils.plotting import plot_layer_similarity, plot_similarity_by_size
from repgeo_utils.similarity import (
    MEASURES,
    compare_models,
    cosine_of_means,
    layer_similarity,
    linear_cka,
    mean_token_cosine,
    similarity_measures,
)

ALL = (cosine_of_means, mean_token_cosine, linear_cka)
TEXTS = [
    "the movie was very good",
    "i hate this app",
    "the director and the cast were brilliant but the plot was predictable",
    "the team lost the game",
    "news on sport , politics and tech for business",
    "awful acting , terrible film",
    "this update is not easy to use",
    "love it",
]


def random_pair(n: int = 500, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related, non-centred float32 matrices (b is a noisy linear map of a)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)) + rng.standard_normal(d)
    b = a @ rng.standard_normal((d, d)) * 0.5 + rng.standard_normal((n, d)) + 2.0
    return a.astype(np.float32), b.astype(np.float32)


def naive_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from its definition with N x N Gram matrices: HSIC(K, L) / sqrt(HSIC(K,K) HSIC(L,L))."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / math.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


# --- known answers ----------------------------------------------------------------------------


def test_identical_inputs_give_one():
    a, _ = random_pair()
    for measure in ALL:
        assert measure(a, a.copy()) == pytest.approx(1.0, abs=1e-6)


def test_orthogonal_rotation_keeps_cka_and_changes_the_cosines():
    a, _ = random_pair(d=16)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((16, 16)))
    rotated = (a @ q).astype(np.float32)
    assert linear_cka(a, rotated) == pytest.approx(1.0, abs=1e-5)
    assert cosine_of_means(a, rotated) < 0.9
    assert mean_token_cosine(a, rotated) < 0.9


def test_scaling_one_side_changes_nothing():
    a, b = random_pair()
    for measure in ALL:
        reference = measure(a, b)
        assert measure(a, 3.5 * b) == pytest.approx(reference, abs=1e-6)
        assert measure(0.01 * a, b) == pytest.approx(reference, abs=1e-6)


# Three tokens, two features, worked by hand:
#   a = [[1, 0], [0, 1], [1, 1]]     b = [[2, 0], [1, 1], [0, 1]]
HAND_A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
HAND_B = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def test_cosine_of_means_by_hand():
    # sums (2, 2) and (3, 2): cos = (6 + 4) / (sqrt(8) sqrt(13)) = 10 / sqrt(104)
    assert cosine_of_means(HAND_A, HAND_B) == pytest.approx(10 / math.sqrt(104), abs=1e-12)
    assert cosine_of_means(HAND_A, HAND_B) == pytest.approx(0.980581, abs=1e-6)


def test_mean_token_cosine_by_hand():
    # token cosines: (1,0)~(2,0) = 1; (0,1)~(1,1) = 1/sqrt2; (1,1)~(0,1) = 1/sqrt2
    expected = (1 + 2 / math.sqrt(2)) / 3
    assert mean_token_cosine(HAND_A, HAND_B) == pytest.approx(expected, abs=1e-12)
    assert mean_token_cosine(HAND_A, HAND_B) == pytest.approx(0.804738, abs=1e-6)


def test_linear_cka_by_hand():
    # centred and times 3: A = [[1,-2],[-2,1],[1,1]], B = [[3,-2],[0,1],[-3,1]]
    # A^T B = [[0,-3],[-9,6]] -> ||.||^2 = 126; A^T A = [[6,-3],[-3,6]] -> ||.|| = sqrt(90);
    # B^T B = [[18,-9],[-9,6]] -> ||.|| = sqrt(522); CKA = 126 / sqrt(90 * 522)
    assert linear_cka(HAND_A, HAND_B) == pytest.approx(126 / math.sqrt(90 * 522), abs=1e-12)
    assert linear_cka(HAND_A, HAND_B) == pytest.approx(0.581318, abs=1e-6)


def test_linear_cka_matches_the_n_by_n_definition_also_for_different_widths():
    a, b = random_pair(n=300, d=12)
    wide = np.concatenate([b, b[:, :5] ** 2], axis=1)
    assert linear_cka(a, b) == pytest.approx(naive_cka(a, b), abs=1e-6)
    assert linear_cka(a, wide) == pytest.approx(naive_cka(a, wide), abs=1e-6)


def test_cka_is_accurate_with_a_large_mean_offset():
    a, b = random_pair(n=4000, d=8)
    offset_a, offset_b = a + 1e3, b - 5e2
    expected = naive_cka(a[:1000], b[:1000])
    assert linear_cka(offset_a[:1000], offset_b[:1000], chunk_rows=97) == pytest.approx(
        expected, abs=1e-5
    )


# --- one pass, chunks, storage ----------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_chunk_size_does_not_change_results(chunk_rows):
    a, b = random_pair(n=257)
    reference = similarity_measures(a.astype(np.float64), b.astype(np.float64))
    values = similarity_measures(a, b, chunk_rows=chunk_rows)
    for measure in MEASURES:
        assert values[measure] == pytest.approx(reference[measure], abs=1e-6)


def test_memmap_sharded_and_tensor_inputs(tmp_path):
    a, b = random_pair(n=300)
    reference = similarity_measures(a, b)
    path = tmp_path / "a.f32"
    mapped = np.memmap(path, dtype=np.float32, mode="w+", shape=a.shape)
    mapped[:] = a
    mapped.flush()
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=a.shape)
    sharded = ShardedArray([b[:100], b[100:101], b[101:]])
    for x, y in [(mapped, b), (a, sharded), (torch.from_numpy(a), torch.from_numpy(b))]:
        values = similarity_measures(x, y, chunk_rows=64)
        for measure in MEASURES:
            assert values[measure] == pytest.approx(reference[measure], abs=1e-6)


def test_mask_keeps_only_the_chosen_rows():
    a, b = random_pair(n=100)
    keep = np.arange(100) % 3 != 0
    masked = similarity_measures(a, b, mask=keep, chunk_rows=16)
    direct = similarity_measures(a[keep], b[keep])
    for measure in MEASURES:
        assert masked[measure] == pytest.approx(direct[measure], abs=1e-6)


# --- errors -----------------------------------------------------------------------------------


def test_mismatched_pairs_are_errors():
    a, b = random_pair(n=50)
    for measure in ALL:
        with pytest.raises(ValueError, match="Not paired"):
            measure(a, b[:49])
    with pytest.raises(ValueError, match="same width"):
        cosine_of_means(a, b[:, :8])
    with pytest.raises(ValueError, match="same width"):
        mean_token_cosine(a, b[:, :8])
    with pytest.raises(ValueError, match="2-d"):
        linear_cka(a[:, 0], b[:, 0])
    with pytest.raises(ValueError, match="Unknown measures"):
        similarity_measures(a, b, ["cosine"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_an_error(bad):
    a, b = random_pair(n=50)
    b[17, 3] = bad
    for measure in ALL:
        with pytest.raises(ValueError, match="NaN"):
            measure(a, b, chunk_rows=8)


def test_undefined_cases_are_errors():
    a, b = random_pair(n=20)
    b[4] = 0.0
    with pytest.raises(ValueError, match="zero activation"):
        mean_token_cosine(a, b)
    with pytest.raises(ValueError, match="no variance"):
        linear_cka(a, np.ones_like(b))
    with pytest.raises(ValueError, match="mean activation is zero"):
        cosine_of_means(a, np.concatenate([b[:10], -b[:10]]))


# --- per-layer tables from activation sets --------------------------------------------------


def finetuned_copy(folder: Path, out: Path, noise: float = 0.2, seed: int = 0) -> Path:
    """A stand-in for a fine-tuned checkpoint: the encoder layers' weights perturbed, the
    embeddings untouched (so hidden state 0 is unchanged), saved in hub layout."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("encoder.") and name.endswith("weight") and param.ndim == 2:
                param.add_(noise * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


def test_layer_similarity_of_a_model_with_itself_is_one(tiny_bert):
    a = extract_activations(tiny_bert, TEXTS, max_length=64, progress=False)
    table = layer_similarity(a, a)
    assert list(table.columns) == ["layer", "relative_depth", "measure", "value", "n_tokens"]
    assert len(table) == 3 * len(MEASURES)
    assert set(table["measure"]) == set(MEASURES)
    np.testing.assert_allclose(table["value"], 1.0, atol=1e-5)
    assert list(table.drop_duplicates("layer")["relative_depth"]) == [0.0, 0.5, 1.0]


def test_layer_similarity_pre_vs_finetuned(tiny_bert, tmp_path):
    tuned = finetuned_copy(tiny_bert, tmp_path / "tuned")
    table = compare_models(tiny_bert, tuned, TEXTS, max_length=64, progress=False)
    wide = table.pivot(index="layer", columns="measure", values="value")
    np.testing.assert_allclose(wide.loc[0], 1.0, atol=1e-6)  # embeddings untouched
    assert (wide.loc[2] < 0.999).all()  # the perturbed layers moved
    without = compare_models(
        tiny_bert, tuned, TEXTS, max_length=64, exclude_special=True, progress=False
    )
    assert (without["n_tokens"] < table["n_tokens"]).all()
    assert without["n_tokens"].iloc[0] == table["n_tokens"].iloc[0] - 2 * len(TEXTS)


def test_unpaired_sets_are_errors(tiny_bert):
    a = extract_activations(tiny_bert, TEXTS, max_length=64, progress=False)
    other_texts = extract_activations(
        tiny_bert, [*TEXTS[:-1], "hate it"], max_length=64, progress=False
    )
    truncated = extract_activations(tiny_bert, TEXTS, max_length=6, progress=False)
    reordered = extract_activations(tiny_bert, TEXTS[::-1], max_length=64, progress=False)
    with pytest.raises(ValueError, match="token ids differ"):
        layer_similarity(a, other_texts)
    with pytest.raises(ValueError, match="Not paired"):
        layer_similarity(a, truncated)
    with pytest.raises(ValueError, match="Not paired"):
        layer_similarity(a, reordered)


def test_model_size_comparison_path_with_different_depths(tiny_bert_factory, tmp_path):
    """The paper profile's Fig 2 loop (one fine-tuned copy per model size), on tiny BERTs."""
    tables = []
    for depth in (1, 2, 3):
        pre = tiny_bert_factory(layers=depth, hidden=16)
        tuned = finetuned_copy(pre, tmp_path / f"tuned-{depth}", seed=depth)
        table = compare_models(pre, tuned, TEXTS, max_length=64, progress=False)
        tables.append(table.assign(model=f"L{depth}"))
    sizes = pd.concat(tables, ignore_index=True)
    assert sizes.groupby("model")["layer"].max().to_dict() == {"L1": 1, "L2": 2, "L3": 3}
    last = sizes[sizes["relative_depth"] == 1.0]
    assert len(last) == 3 * len(MEASURES)
    first = sizes[sizes["layer"] == 0]
    np.testing.assert_allclose(first["value"], 1.0, atol=1e-6)
    # the notebook's two figures draw from these tables
    fig = plot_similarity_by_size(sizes.assign(task="tiny task"), "linear_cka")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 3
    fig = plot_layer_similarity(sizes.rename(columns={"model": "task"}), "mean_token_cosine",
                                paper={"L3": 0.28})  # fmt: skip
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert len(fig.axes[0].lines) == 3 and legend == [
        "L1",
        "L2",
        "L3",
        "paper 1, bert-base, layer 12",
    ]
    with pytest.raises(ValueError, match="No rows"):
        plot_layer_similarity(sizes, "cosine")
    plt.close("all")
