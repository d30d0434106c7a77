"""Tests of repgeo_utils.sae: known answers on synthetic dictionaries and hand-made latents."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from repgeo_utils.sae import (
    SAEConfig,
    SparseAutoencoder,
    decoder_directions,
    evaluate_sae,
    fraction_of_variance_unexplained,
    latent_statistics,
    load_sae,
    match_features,
    reconstruction_cosine,
    save_sae,
    shrinkage,
    sparsity_stats,
    split_texts,
    top_activating_tokens,
    top_variance_features,
    train_sae,
    train_sae_on_activations,
)
from repgeo_utils.sae import cached as sae_cached
from repgeo_utils.sae import training as sae_training
from repgeo_utils.sae.model import _activation
from repgeo_utils.sae.training import _grad_step


def sparse_dictionary_data(
    n: int, d: int, atoms: int, per_token: float, seed: int
) -> tuple[Float[Tensor, "n d"], Float[Tensor, "atoms d"]]:
    """Tokens that are sparse non-negative combinations of random unit atoms (a known truth)."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    active = torch.rand(n, atoms, generator=g) < per_token / atoms
    coefficients = 0.5 + 1.5 * torch.rand(n, atoms, generator=g)
    return (active * coefficients) @ dictionary, dictionary


@pytest.fixture(scope="module")
def synthetic() -> tuple[Tensor, Tensor]:
    return sparse_dictionary_data(n=24_000, d=32, atoms=64, per_token=3, seed=1)


def recovered_share(sae: SparseAutoencoder, dictionary: Tensor, cutoff: float = 0.9) -> float:
    """Share of true atoms that some decoder direction matches with cosine above ``cutoff``."""
    cos = decoder_directions(sae).float() @ dictionary.T
    return float((cos.max(dim=0).values > cutoff).float().mean())


# --- training recovers a planted dictionary ------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(architecture="relu", l1_coefficient=3e-2),
        dict(architecture="topk", k=3),
    ],
    ids=["relu", "topk"],
)
def test_sae_recovers_known_sparse_dictionary(synthetic, settings):
    x, dictionary = synthetic
    config = SAEConfig(d_in=32, d_sae=128, lr=3e-3, epochs=20, batch_size=256, seed=0, **settings)
    untrained = SparseAutoencoder(config)
    untrained.reset_parameters(torch.Generator().manual_seed(config.seed))
    assert recovered_share(untrained, dictionary) == 0.0  # the initialisation knows nothing
    sae, history = train_sae(config, x[:20_000], progress=False)
    assert recovered_share(sae, dictionary) >= 0.9
    metrics = evaluate_sae(sae, x[20_000:])
    assert metrics.fvu < 0.2
    assert metrics.mean_l0 < 16  # the truth has 3 atoms a token
    assert history.epoch_loss[-1] < history.epoch_loss[0]
    assert len(history.step_loss) == 20 * math.ceil(20_000 / 256)
    assert history.tokens_seen == 20 * 20_000


def test_topk_has_exactly_k_active_latents(synthetic):
    x, _ = synthetic
    config = SAEConfig(d_in=32, d_sae=128, architecture="topk", k=5, epochs=1, lr=3e-3)
    sae, _ = train_sae(config, x[:4096], progress=False)
    with torch.no_grad():
        pre = sae.pre_activations(x[:2000])
        latents = sae.encode(x[:2000])
    l0 = (latents != 0).sum(dim=1)
    enough_positive = (pre > 0).sum(dim=1) >= 5
    assert enough_positive.float().mean() > 0.99
    assert (l0[enough_positive] == 5).all()
    assert (l0 <= 5).all()
    # the surviving latents are the k largest pre-activations of each token
    top = pre.topk(5, dim=1).indices
    assert torch.equal((latents != 0).sum(1), torch.gather(latents, 1, top).ne(0).sum(1))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-route", "sparse-route"])
def test_hand_written_gradients_match_autograd(sparse):
    torch.manual_seed(0)
    for settings in (
        dict(architecture="relu", l1_coefficient=0.02, normalize_decoder=False),
        dict(architecture="relu", l1_coefficient=0.02, subtract_decoder_bias=False),
        dict(architecture="relu", l1_coefficient=0.4, l1_reduction="mean"),
        dict(architecture="topk", k=4),
    ):
        config = SAEConfig(d_in=6, d_sae=20, **settings)
        sae = SparseAutoencoder(config).double()
        with torch.no_grad():
            sae.b_enc.normal_(0, 0.3)
            sae.b_dec.normal_()
        x = torch.randn(17, 6, dtype=torch.float64)
        l1 = config.l1_weight
        mse, l1_term, density = _grad_step(sae, x, l1, sparse=sparse)
        by_hand = {name: p.grad.clone() for name, p in sae.named_parameters()}
        sae.zero_grad(set_to_none=True)
        centre = sae.b_dec.detach() if config.subtract_decoder_bias else 0.0
        h = _activation((x - centre) @ sae.W_enc + sae.b_enc, config)
        # the loss as written: lambda * sum over latents, or lambda * mean over latents
        pooled = h.sum(1) if config.l1_reduction == "sum" else h.mean(1)
        coefficient = config.l1_coefficient if config.architecture == "relu" else 0.0
        loss = ((h @ sae.W_dec + sae.b_dec - x) ** 2).mean() + coefficient * pooled.mean()
        loss.backward()
        for name, p in sae.named_parameters():
            expected = p.grad
            if name == "W_dec" and config.normalize_decoder:  # tangent to the unit sphere
                w = sae.W_dec.detach()
                expected = expected - (expected * w).sum(1, keepdim=True) * w
            torch.testing.assert_close(by_hand[name], expected, rtol=1e-9, atol=1e-12)
        with torch.no_grad():
            expected_mse = float(((h @ sae.W_dec + sae.b_dec - x) ** 2).mean())
            assert float(mse) == pytest.approx(expected_mse, rel=1e-12)
            assert float(l1_term) == pytest.approx(float(h.sum(1).mean()), rel=1e-12)
            assert density == pytest.approx(float((h != 0).double().mean()))


@pytest.mark.parametrize(
    "settings",
    [dict(architecture="topk", k=4), dict(architecture="relu", l1_coefficient=0.1)],
    ids=["topk", "relu"],
)
def test_sparse_route_trains_like_dense_route(synthetic, settings, monkeypatch):
    """On the CPU, steps with few active latents take the sparse route; the same training
    forced onto the dense route ends at the same weights (up to float rounding)."""
    x, _ = synthetic
    config = SAEConfig(d_in=32, d_sae=128, epochs=4, batch_size=128, lr=3e-3, **settings)
    monkeypatch.setattr(sae_training, "SPARSE_DENSITY", 0.25)  # sparse below 32 active latents
    sparse, history = train_sae(config, x[:8000], progress=False)
    assert sum(v < 32 for v in history.step_l0) > 50  # many steps ran sparse
    if config.architecture == "topk":
        assert max(history.step_l0) <= 4
    monkeypatch.setattr(sae_training, "SPARSE_DENSITY", 0.0)
    dense, dense_history = train_sae(config, x[:8000], progress=False)
    torch.testing.assert_close(sparse.W_dec, dense.W_dec, rtol=0, atol=1e-4)
    torch.testing.assert_close(sparse.W_enc, dense.W_enc, rtol=0, atol=1e-4)
    np.testing.assert_allclose(history.step_l0, dense_history.step_l0, atol=0.05)


def test_training_is_seeded_and_streams_shards(synthetic):
    x, _ = synthetic
    config = SAEConfig(d_in=32, d_sae=64, epochs=2, batch_size=512, seed=3)
    a, _ = train_sae(config, x[:6000], progress=False)
    b, _ = train_sae(config, x[:6000], progress=False)
    assert torch.equal(a.W_dec, b.W_dec)
    shards = [x[i : i + 1500].numpy() for i in range(0, 6000, 1500)]
    streamed, history = train_sae(config, shards, progress=False)
    assert history.tokens_seen == 2 * 6000
    # streaming shuffles within shards only, so the weights differ, but not the quality
    fvu_matrix = evaluate_sae(a, x[20_000:]).fvu
    assert evaluate_sae(streamed, x[20_000:]).fvu == pytest.approx(fvu_matrix, abs=0.05)
    # a function returning fresh iterators works as a stream too
    gen, _ = train_sae(config, lambda: iter(shards), progress=False)
    assert torch.isfinite(gen.W_enc).all()


def test_sequence_mean_training_needs_offsets(synthetic):
    x, _ = synthetic
    config = SAEConfig(d_in=32, d_sae=64, epochs=1, train_on="sequence_means")
    offsets = torch.arange(0, 6001, 6)
    sae, history = train_sae(config, x[:6000], offsets=offsets, progress=False)
    assert history.tokens_seen == 1000  # one row per sequence
    with pytest.raises(ValueError, match="offsets"):
        train_sae(config, x[:6000], progress=False)


def test_trained_sae_takes_raw_activations(synthetic):
    """Centring and scaling make training blind to an affine change of units, and the scale is
    folded into the weights: an SAE trained on 7 x + 3 gives, on 7 x + 3, the latents that one
    trained on x gives on x, and reconstructs in raw units."""
    x, _ = synthetic
    config = SAEConfig(d_in=32, d_sae=64, epochs=2, lr=3e-3)
    sae, history = train_sae(config, x[:4000], progress=False)
    raw_sae, raw_history = train_sae(config, 7.0 * x[:4000] + 3.0, progress=False)
    assert raw_history.input_scale == pytest.approx(history.input_scale / 7, rel=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(
            raw_sae.encode(7.0 * x[:500] + 3.0), sae.encode(x[:500]), rtol=1e-3, atol=1e-3
        )
        torch.testing.assert_close(
            raw_sae(7.0 * x[:500] + 3.0)[0], 7.0 * sae(x[:500])[0] + 3.0, rtol=1e-3, atol=1e-2
        )
    assert history.input_scale == pytest.approx(math.sqrt(32 / _msd(x[:4000])), rel=1e-6)


def test_init_density_sets_the_first_steps_sparsity(synthetic):
    x, _ = synthetic
    config = SAEConfig(d_in=32, d_sae=128, epochs=1, init_density=0.1)
    _, history = train_sae(config, x[:2048], progress=False)
    assert history.step_l0[0] == pytest.approx(0.1 * 128, rel=0.25)
    _, zero_bias = train_sae(replace(config, init_density=None), x[:2048], progress=False)
    assert zero_bias.step_l0[0] == pytest.approx(0.5 * 128, rel=0.25)  # half the latents fire


def _msd(x: Tensor) -> float:
    x = x.double()
    return float(((x - x.mean(0)) ** 2).sum(1).mean())


# --- metrics on hand-made latents ----------------------------------------------------------


def test_sparsity_stats_hand_computed():
    latents = torch.tensor(
        [
            [0.0, 1.0, 0.0, 2.0, 0.0],
            [0.0, 3.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.5, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0, 0.0],
        ]
    )
    # L0 per token 2, 1, 2, 1 -> 1.5; latent 0 and 4 never fire; frequencies 0, 1, .25, .25, 0
    stats = sparsity_stats(latents, dense_threshold=0.3)
    assert stats.mean_l0 == 1.5
    assert stats.dead == 2
    assert stats.dense == 1
    torch.testing.assert_close(
        stats.firing_frequency, torch.tensor([0, 1, 0.25, 0.25, 0], dtype=torch.float64)
    )
    assert sparsity_stats(latents, dense_threshold=0.2).dense == 3


def test_fraction_of_variance_unexplained_hand_computed():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [2.0, -2.0]])
    # mean (2, 0); total squared deviation 1 + 1 + 4 + 4 = 10
    x_hat = x.clone()
    x_hat[0, 0] += 1.0  # error 1
    x_hat[2, 1] -= 2.0  # error 4
    assert fraction_of_variance_unexplained(x, x_hat) == pytest.approx(0.5)
    assert fraction_of_variance_unexplained(x, x) == 0.0
    # predicting the mean explains nothing
    assert fraction_of_variance_unexplained(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)


def test_evaluate_sae_hand_made():
    """A 2 -> 3 SAE whose latents and reconstruction error are known exactly."""
    config = SAEConfig(d_in=2, d_sae=3, subtract_decoder_bias=False)
    sae = SparseAutoencoder(config)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]))
        sae.b_dec.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -2.0], [0.0, 0.0]])
    # latents: [1,0,0], [0,2,0], [0,0,0], [0,0,0] -> L0 0.5, latent 2 dead, none above 25%
    # reconstruction: [1,0], [0,1], [0,0], [0,0] -> squared errors 0, 1, 5, 0 = 6
    # x mean (0, 0): total squared deviation 1 + 4 + 5 + 0 = 10
    m = evaluate_sae(sae, x, batch_size=3, dense_threshold=0.25)
    assert (m.n_tokens, m.dead, m.dense, m.d_sae) == (4, 1, 0, 3)
    assert m.mean_l0 == pytest.approx(0.5)
    assert m.mse == pytest.approx(6 / 8)
    assert m.fvu == pytest.approx(0.6)
    assert m.fve == pytest.approx(0.4)
    # ||x_hat|| / ||x|| per token: 1, 1/2, 0, 0 (zero input divides by 1) -> 0.375
    # cosines: 1, 1, 0 (x_hat = 0), 0 -> 0.5; bias: sum ||x_hat||^2 / sum <x, x_hat> = 2 / 3
    assert m.shrinkage == pytest.approx(0.375)
    assert m.cosine == pytest.approx(0.5)
    assert m.relative_reconstruction_bias == pytest.approx(2 / 3)
    # per latent over the 4 tokens: values (1,0,0,0), (0,2,0,0), (0,0,0,0)
    stats = latent_statistics(sae, [x[:1], x[1:]])
    assert stats.n_tokens == 4
    torch.testing.assert_close(stats.firing_frequency, torch.tensor([0.25, 0.25, 0.0]).double())
    torch.testing.assert_close(stats.mean, torch.tensor([0.25, 0.5, 0.0]).double())
    torch.testing.assert_close(stats.variance, torch.tensor([0.1875, 0.75, 0.0]).double())


def test_shrinkage_and_cosine_known_answers():
    x = torch.randn(50, 8)
    assert shrinkage(x, 0.5 * x) == pytest.approx(0.5)
    assert reconstruction_cosine(x, 0.5 * x) == pytest.approx(1.0)
    assert reconstruction_cosine(x, -x) == pytest.approx(-1.0)
    # a reconstruction orthogonal to every token, of the same length
    flipped = torch.stack([x[:, 1], -x[:, 0]], 1)
    assert shrinkage(x[:, :2], flipped) == pytest.approx(1.0)
    assert reconstruction_cosine(x[:, :2], flipped) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        shrinkage(x, x[:, :4])


def test_top_variance_features_hand_computed():
    latents = torch.tensor([[0.0, 1.0, 5.0, 2.0], [0.0, 3.0, 5.0, 2.0], [0.0, 2.0, 5.0, -4.0]])
    # variances: 0, 2/3, 0, 8
    assert top_variance_features(latents, 2).tolist() == [3, 1]
    assert top_variance_features(latents, 4).tolist() == [3, 1, 0, 2]  # ties: lower index first
    batches = [latents[:1], latents[1:]]  # streaming gives the same answer
    assert top_variance_features(iter(batches), 2).tolist() == [3, 1]
    with pytest.raises(ValueError, match="between 1 and"):
        top_variance_features(latents, 5)


class _TinyTokenizer:
    """Just enough of a tokenizer for top_activating_tokens."""

    vocab = ["[CLS]", "[SEP]", "the", "plot", "was", "terrible", "great", "##ly"]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.vocab[ids]
        return [self.vocab[i] for i in ids]

    def convert_tokens_to_string(self, tokens):
        return " ".join(tokens).replace(" ##", "")


def test_top_activating_tokens_with_context():
    # sequence 0: [CLS] the plot was terrible [SEP]; sequence 1: [CLS] great ##ly [SEP]
    token_ids = torch.tensor([0, 2, 3, 4, 5, 1, 0, 6, 7, 1])
    offsets = torch.tensor([0, 6, 10])
    acts = torch.tensor([0.0, 0.0, 0.1, 0.0, 3.0, 0.0, 0.0, 2.0, 0.5, 0.0])
    top = top_activating_tokens(acts, token_ids, offsets, _TinyTokenizer(), n=5, context=2)
    assert [t.token for t in top] == ["terrible", "great", "##ly", "plot"]  # zeros never listed
    first = top[0]
    assert (first.activation, first.sequence, first.position) == (3.0, 0, 4)
    assert (first.left, first.right) == ("plot was", "[SEP]")
    assert str(top[1]) == "[CLS] «great» ##ly [SEP]"  # context stops at its own sequence
    assert top[2].left == "[CLS] great"


# --- feature matching ----------------------------------------------------------------------


def test_match_features_recovers_planted_permutation():
    g = torch.Generator().manual_seed(0)
    sae_a = SparseAutoencoder(SAEConfig(d_in=16, d_sae=40))
    sae_a.reset_parameters(g)
    perm = torch.randperm(40, generator=g)
    sae_b = SparseAutoencoder(SAEConfig(d_in=16, d_sae=40))
    with torch.no_grad():
        noise = 0.05 * torch.randn(40, 16, generator=g)
        sae_b.W_dec.copy_(3.0 * (sae_a.W_dec[perm] + noise))  # scale must not matter
        sae_b.W_dec[:5] = torch.randn(5, 16, generator=g)  # five features with no twin
    match = match_features(sae_a, sae_b, threshold=0.9)
    assert torch.equal(match.index_a[5:], perm[5:])
    assert (match.cosine[5:] > 0.95).all()
    assert match.share_above == pytest.approx(35 / 40)
    assert (match.nearest_cosine >= match.cosine - 1e-12).all()
    assert len(set(match.index_a.tolist())) == 40  # one-to-one
    # restricting to a subset of b's features
    alive = torch.zeros(40, dtype=torch.bool)
    alive[10:20] = True
    sub = match_features(sae_a, sae_b, alive_b=alive)
    assert sub.features_b.tolist() == list(range(10, 20))
    assert torch.equal(sub.index_a, perm[10:20])


def test_match_features_more_b_than_a_leaves_surplus_unmatched():
    a = SparseAutoencoder(SAEConfig(d_in=8, d_sae=4))
    b = SparseAutoencoder(SAEConfig(d_in=8, d_sae=6))
    match = match_features(a, b, threshold=0.5)
    assert (match.index_a == -1).sum() == 2
    assert (match.cosine[match.index_a == -1] == -1).all()


# --- save / load ---------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["relu", "topk"])
def test_save_load_round_trip(tmp_path, synthetic, architecture):
    x, _ = synthetic
    k = 4 if architecture == "topk" else None
    config = SAEConfig(d_in=32, d_sae=48, architecture=architecture, k=k, epochs=1)
    sae, history = train_sae(config, x[:3000], progress=False)
    folder = save_sae(sae, tmp_path / "sae")
    from safetensors import safe_open

    with safe_open(str(folder / "repgeo_sae.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["W_dec", "W_enc", "b_dec", "b_enc"]
        assert f.get_tensor("W_enc").shape == (32, 48)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["architecture"] == architecture
    loaded = load_sae(folder)
    assert loaded.config == sae.config
    assert loaded.input_scale == pytest.approx(history.input_scale)
    with torch.no_grad():
        for out, expected in zip(loaded(x[:500]), sae(x[:500]), strict=True):
            assert torch.equal(out, expected)


def test_load_sae_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="No SAE"):
        load_sae(tmp_path)


# --- bad inputs fail clearly ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(architecture="topk", k=2000), "k=2000 is larger than d_sae=1024"),
        (dict(architecture="topk"), "needs k"),
        (dict(k=8), "only applies to architecture 'topk'"),
        (dict(architecture="gated"), "architecture must be"),
        (dict(l1_coefficient=-1.0), "l1_coefficient must be >= 0"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(train_on="sentences"), "train_on must be"),
        (dict(seed=-1), "seed must be"),
        (dict(init_density=1.5), "init_density must be in"),
        (dict(l1_reduction="max"), "l1_reduction must be 'sum' or 'mean'"),
    ],
)
def test_bad_configs_fail_with_messages(settings, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(d_in=384, d_sae=1024, **settings)


def test_presets():
    paper = SAEConfig.preset("paper-text", 768, 1024)
    assert (paper.lr, paper.epochs, paper.batch_size, paper.l1_coefficient) == (2e-5, 10, 16, 1e-3)
    assert paper.l1_reduction == "sum" and paper.l1_weight == 1e-3
    code = SAEConfig.preset("paper-code", 768, 1024)
    assert replace(code, l1_reduction="sum") == paper  # the L1 pooling is the only difference
    assert code.l1_weight == pytest.approx(1e-3 / 1024)  # 1,024 times weaker per latent
    assert SAEConfig.preset("default", 384, 1024) == SAEConfig(d_in=384, d_sae=1024)
    assert SAEConfig.preset("paper-text", 8, 16, epochs=2).epochs == 2
    with pytest.warns(DeprecationWarning, match="paper-text"):
        assert SAEConfig.preset("paper", 768, 1024) == paper
    # the cache key: the new field is left out at its old behaviour (old entries stay valid)
    # and written when it differs, so the two conventions never share an entry
    assert "l1_reduction" not in paper.to_dict()
    assert code.to_dict()["l1_reduction"] == "mean"
    assert SAEConfig.from_dict(code.to_dict()) == code
    assert SAEConfig.preset("topk-32", 384, 1024).l1_weight == 0.0
    assert SAEConfig.preset("topk-32", 384, 1024).k == 32
    assert SAEConfig.preset("l1-sparse", 384, 1024).l1_coefficient == 1e-2
    with pytest.raises(ValueError, match="Known presets"):
        SAEConfig.preset("fast", 8, 16)
    assert SAEConfig.from_dict(paper.to_dict()) == paper


def test_d_in_mismatch_fails_clearly():
    config = SAEConfig(d_in=32, d_sae=64, epochs=1)
    with pytest.raises(ValueError, match="d_in=32"):
        train_sae(config, torch.randn(100, 31), progress=False)
    with pytest.raises(ValueError, match="shard 1"):
        train_sae(config, [torch.randn(100, 32), torch.randn(100, 30)], progress=False)
    sae = SparseAutoencoder(config)
    with pytest.raises(ValueError, match="d_in=32"):
        sae.encode(torch.randn(3, 30))


def test_nan_activations_fail_clearly():
    config = SAEConfig(d_in=8, d_sae=16, epochs=1)
    x = torch.randn(50, 8)
    x[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values: 1 rows .*first rows \[7\]"):
        train_sae(config, x, progress=False)
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x[2, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_sae(SparseAutoencoder(config), [x])


def test_one_shot_iterator_only_for_one_epoch():
    x = torch.randn(600, 8)
    one_epoch = SAEConfig(d_in=8, d_sae=16, epochs=1, batch_size=64)
    _, history = train_sae(one_epoch, iter(x.split(200)), progress=False)
    assert history.tokens_seen == 600  # the chunks read for the input statistics are replayed
    two_epochs = SAEConfig(d_in=8, d_sae=16, epochs=2, batch_size=64)
    with pytest.raises(ValueError, match="one-shot iterator"):
        train_sae(two_epochs, iter(x.split(200)), progress=False)


# --- SAEs on the activation cache ----------------------------------------------------------


def test_split_texts_is_seeded_and_keeps_both_sides():
    held_out = split_texts(50, 0.1, seed=3)
    assert held_out.sum() == 5
    assert np.array_equal(held_out, split_texts(50, 0.1, seed=3))
    assert not np.array_equal(held_out, split_texts(50, 0.1, seed=4))
    assert split_texts(2, 0.9, seed=0).sum() == 1
    with pytest.raises(ValueError, match="eval_fraction"):
        split_texts(10, 1.0, seed=0)


@pytest.fixture
def tiny_activations(tiny_bert):
    from conftest import TINY_WORDS

    from repgeo_utils.activations import extract_activations

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(TINY_WORDS, size=rng.integers(3, 12))) for _ in range(80)]
    # a tiny shard size forces several shards, so training streams across files
    return extract_activations(
        tiny_bert, texts, [1, -1], max_length=64, shard_mb=0.02, progress=False
    )


def test_train_sae_on_activations_streams_and_caches(tiny_activations, monkeypatch):
    acts = tiny_activations
    assert len(acts.meta["shards"]) > 1
    config = SAEConfig(d_in=16, d_sae=32, epochs=2, batch_size=64)
    calls = []
    real_train = sae_cached.train_on_source
    monkeypatch.setattr(
        sae_cached, "train_on_source", lambda *a, **k: calls.append(1) or real_train(*a, **k)
    )
    first = train_sae_on_activations(acts, -1, config, progress=False)
    held_out_tokens = int(acts.lengths[first.eval_texts].sum())
    assert first.layer == 2
    assert first.metrics.n_tokens == held_out_tokens
    assert first.history.tokens_seen == 2 * (acts.n_tokens - held_out_tokens)
    assert 0 <= first.metrics.fvu < 1
    # the same request is a cache hit: same entry, same weights, no training
    again = train_sae_on_activations(acts, 2, config, progress=False)
    assert len(calls) == 1
    assert again.path == first.path
    assert torch.equal(again.sae.W_dec, first.sae.W_dec)
    assert again.metrics == first.metrics
    # any change of layer, config or split is a new entry
    other_layer = train_sae_on_activations(acts, 1, config, progress=False)
    other_seed = train_sae_on_activations(acts, -1, config, split_seed=1, progress=False)
    other_config = train_sae_on_activations(
        acts, -1, SAEConfig(d_in=16, d_sae=32, epochs=2, batch_size=64, seed=1), progress=False
    )
    assert len({first.path, other_layer.path, other_seed.path, other_config.path}) == 4
    assert len(calls) == 4
    # the cached SAE evaluates like the record says
    eval_rows = np.repeat(first.eval_texts, acts.lengths)
    recomputed = evaluate_sae(first.sae, np.asarray(acts.tokens(-1))[eval_rows])
    assert recomputed.fvu == pytest.approx(first.metrics.fvu, rel=1e-5)
    assert recomputed.shrinkage == pytest.approx(first.metrics.shrinkage, rel=1e-5)


def test_entries_cached_before_shrinkage_existed_are_measured_on_load(
    tiny_activations, monkeypatch
):
    from repgeo_utils.sae.metrics import SAEMetrics

    acts = tiny_activations
    config = SAEConfig(d_in=16, d_sae=32, epochs=1, batch_size=64, seed=5)
    old_record = SAEMetrics.as_dict

    def without_new_fields(self):
        out = old_record(self)
        for name in sae_cached.LATER_METRICS:
            del out[name]
        return out

    with monkeypatch.context() as patch:
        patch.setattr(SAEMetrics, "as_dict", without_new_fields)
        first = train_sae_on_activations(acts, -1, config, progress=False)
    stored = json.loads((first.path / "metrics.json").read_text())
    assert "shrinkage" not in stored
    again = train_sae_on_activations(acts, -1, config, progress=False)  # a cache hit
    assert again.path == first.path
    assert 0 < again.metrics.shrinkage < 2 and 0 < again.metrics.cosine <= 1
    assert again.metrics.fvu == pytest.approx(stored["fvu"], rel=1e-6)


def test_train_sae_on_activations_sequence_means_and_errors(tiny_activations):
    acts = tiny_activations
    config = SAEConfig(d_in=16, d_sae=32, epochs=3, batch_size=16, train_on="sequence_means")
    trained = train_sae_on_activations(acts, -1, config, progress=False)
    assert trained.history.tokens_seen == 3 * int((~trained.eval_texts).sum())  # one row a text
    assert trained.metrics.n_tokens == int(acts.lengths[trained.eval_texts].sum())  # on tokens
    without_special = train_sae_on_activations(
        acts, -1, SAEConfig(d_in=16, d_sae=32, epochs=1), exclude_special=True, progress=False
    )
    special_eval = (np.repeat(without_special.eval_texts, acts.lengths) & acts.special_mask).sum()
    assert without_special.metrics.n_tokens == acts.lengths[without_special.eval_texts].sum() - (
        special_eval
    )
    # a ShardedArray streams straight into train_sae, one memory-mapped shard at a time
    direct, history = train_sae(
        SAEConfig(d_in=16, d_sae=32, epochs=1), acts.tokens(-1), progress=False
    )
    assert history.tokens_seen == acts.n_tokens
    with torch.no_grad():
        assert direct.encode(acts.tokens(-1)[:5]).shape == (5, 32)  # NumPy rows in, latents out
    with pytest.raises(ValueError, match="d_model=16"):
        train_sae_on_activations(acts, -1, SAEConfig(d_in=32, d_sae=64), progress=False)
    with pytest.raises(KeyError, match="not extracted"):
        train_sae_on_activations(acts, 0, SAEConfig(d_in=16, d_sae=32), progress=False)
