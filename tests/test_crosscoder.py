"""The crosscoder (repgeo_utils.sae.crosscoder): hand-written gradients against autograd,
relative decoder norms and latent scaling on crosscoders set by hand, a planted pre-only /
shared / post-only structure recovered by training, and the cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repgeo_utils.sae.crosscoder import (
    RELATIVE_NORM_BANDS,
    Crosscoder,
    CrosscoderConfig,
    PairedRows,
    _grad_step,
    band_counts,
    check_row_paired,
    evaluate_crosscoder,
    latent_scaling,
    latent_table,
    load_crosscoder,
    relative_norm_band,
    save_crosscoder,
    train_crosscoder,
    train_crosscoder_on_activations,
)


def planted_pairs(
    n: int, d: int = 48, shared: int = 24, only: int = 8, seed: int = 0, with_atoms: bool = False
):
    """Row-paired activations from orthonormal concepts: ``shared`` in both models, ``only``
    in the pre-trained model alone and ``only`` in the fine-tuned model alone; ~3 a token.
    With ``with_atoms``, also the concepts' directions (shared, pre-only, post-only in that order)."""
    g = torch.Generator().manual_seed(seed)
    k = shared + 2 * only
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    atoms = q.T[:k].float()
    a_pre, a_post = atoms.clone(), atoms.clone()
    a_post[shared : shared + only] = 0  # pre-only concepts
    a_pre[shared + only :] = 0  # post-only concepts
    active = torch.rand(n, k, generator=g) < 3 / k
    c = active * (0.5 + 1.5 * torch.rand(n, k, generator=g))
    if with_atoms:
        return c @ a_pre, c @ a_post, atoms
    return c @ a_pre, c @ a_post


@pytest.mark.parametrize("sparsity", ["l1", "batchtopk"])
def test_hand_written_gradients_match_autograd(sparsity):
    config = CrosscoderConfig(
        d_in=5, d_sae=12, sparsity=sparsity, k=3 if sparsity == "batchtopk" else None,
        l1_coefficient=0.05,
    )  # fmt: skip
    cc = Crosscoder(config).double()
    with torch.no_grad():
        cc.b_enc.normal_(0, 0.3)
        cc.b_dec.normal_()
        cc.W_dec.mul_(torch.rand(12, 1, dtype=torch.float64) + 0.5)  # free norms
    x = torch.randn(17, 10, dtype=torch.float64)
    mse, l1_term, _, density = _grad_step(cc, x)
    by_hand = {name: p.grad.clone() for name, p in cc.named_parameters()}
    cc.zero_grad(set_to_none=True)
    w = cc.W_dec
    weight = w[:, :5].norm(dim=1) + w[:, 5:].norm(dim=1)  # sum of the two decoder norms
    f = torch.relu((x - cc.b_dec.detach()) @ cc.W_enc + cc.b_enc)
    if sparsity == "batchtopk":  # the batch's 3 x 17 largest f * weight survive
        score = (f * weight).detach()
        f = f * (score >= score.flatten().sort(descending=True).values[3 * 17 - 1])
    error = f @ w + cc.b_dec - x
    l1 = 0.05 if sparsity == "l1" else 0.0
    loss = error.square().sum() / (17 * 5) + l1 * (f * weight).sum() / 17
    loss.backward()
    for name, p in cc.named_parameters():
        torch.testing.assert_close(by_hand[name], p.grad, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        assert float(mse) == pytest.approx(float(error.square().sum() / (17 * 5)))
        assert float(l1_term) == pytest.approx(float((f * weight).sum() / 17))
    assert density == pytest.approx(float((f != 0).double().mean()))


def hand_crosscoder(decoders_pre, decoders_post, d_in: int = 4) -> Crosscoder:
    """A crosscoder whose latent i reads ``x_pre[i] + x_post[i]`` and writes the given
    decoder rows (no biases, no input scaling)."""
    d_sae = len(decoders_pre)
    cc = Crosscoder(CrosscoderConfig(d_in=d_in, d_sae=d_sae, subtract_decoder_bias=False))
    with torch.no_grad():
        cc.W_enc.zero_()
        for i in range(d_sae):
            cc.W_enc[i, i] = 1.0
            cc.W_enc[d_in + i, i] = 1.0
        cc.W_dec.copy_(torch.cat([torch.tensor(decoders_pre), torch.tensor(decoders_post)], 1))
        cc.b_enc.zero_()
        cc.b_dec.zero_()
    return cc.requires_grad_(False)


def test_relative_norms_and_bands_of_a_crosscoder_set_by_hand():
    e = torch.eye(4).tolist()
    zero = [0.0] * 4
    cc = hand_crosscoder(
        [e[0], zero, e[2], e[3]],  # pre decoders: norms 1, 0, 1, 1
        [zero, [0.0, 2.0, 0.0, 0.0], e[2], [0.0, 0.0, 0.0, 3.0]],  # post: 0, 2, 1, 3
    )
    np.testing.assert_allclose(cc.relative_norms().numpy(), [0.0, 1.0, 0.5, 0.75])
    np.testing.assert_allclose(cc.decoder_cosines().numpy(), [0.0, 0.0, 1.0, 1.0])
    assert [relative_norm_band(r) for r in (0.0, 0.05, 0.2, 0.5, 0.75, 0.95, 1.0)] == [
        "pre-only", "pre-only", "pre-leaning", "shared", "post-leaning", "post-only", "post-only",
    ]  # fmt: skip
    assert relative_norm_band(math.nan) == "none"
    assert list(RELATIVE_NORM_BANDS) == [
        "pre-only", "pre-leaning", "shared", "post-leaning", "post-only",
    ]  # fmt: skip
    x = torch.rand(50, 4) + 0.1  # every latent fires on every token
    table = latent_table(cc, x, x)
    assert table["band"].tolist() == ["pre-only", "post-only", "shared", "post-leaning"]
    counts = band_counts(table)
    assert (counts["pre-only"], counts["shared"], counts["post-only"], counts["dead"]) == (
        1,
        1,
        1,
        0,
    )
    # latents the fine-tuned model uses (r >= 0.1): 3; of those used by both (r <= 0.9): 2
    assert counts["share_kept"] == pytest.approx(2 / 3)
    silent = hand_crosscoder([e[0], e[1]], [e[0], e[1]])
    with torch.no_grad():
        silent.b_enc[1] = -100.0  # latent 1 never fires
    assert latent_table(silent, x, x)["band"].tolist() == ["shared", "dead"]


def test_latent_scaling_recovers_a_known_beta():
    """Latent 0 writes e_0 into the fine-tuned model only (post-only by its norms). The
    pre-trained activations carry beta0 = 0.3 of it: latent scaling's error ratio finds 0.3
    (complete shrinkage); its reconstruction ratio finds 0 (nothing else reconstructs it)."""
    g = torch.Generator().manual_seed(0)
    n, beta0 = 400, 0.3
    c = torch.rand(n, generator=g) * (torch.rand(n, generator=g) < 0.5)
    noise_pre, noise_post = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    noise_pre[:, 0] = noise_post[:, 0] = 0  # the other directions are orthogonal to e_0
    x_post = noise_post.clone()
    x_post[:, 0] = c
    x_pre = noise_pre.clone()
    x_pre[:, 0] = beta0 * c
    zero = [0.0] * 4
    cc = hand_crosscoder([zero, zero], [[1.0, 0, 0, 0], zero])
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_enc[4, 0] = 1.0  # latent 0 = ReLU(x_post[0]) = c
        cc.b_enc[1] = -1e3  # latent 1 never fires
    scaling = latent_scaling(cc, x_pre, x_post, [0], own=1)
    assert scaling.beta_error[0, 1].item() == pytest.approx(1.0)  # its own model: all of it
    assert scaling.beta_error[0, 0].item() == pytest.approx(beta0)
    assert scaling.nu_error.item() == pytest.approx(beta0)
    assert scaling.nu_reconstruction.item() == pytest.approx(0.0, abs=1e-12)
    assert scaling.active_tokens.item() == int((c > 0).sum())
    # decoupling: a second latent that reconstructs the same direction in the pre-trained model
    cc2 = hand_crosscoder([zero, [1.0, 0, 0, 0]], [[1.0, 0, 0, 0], zero])
    with torch.no_grad():
        cc2.W_enc.zero_()
        cc2.W_enc[4, 0] = 1.0  # latent 0 = c
        cc2.W_enc[0, 1] = 1.0  # latent 1 = ReLU(x_pre[0]) = beta0 c: writes e_0 in pre
    again = latent_scaling(cc2, x_pre, x_post, [0], own=1)
    assert again.nu_reconstruction.item() == pytest.approx(beta0)
    assert again.nu_error.item() == pytest.approx(0.0, abs=1e-6)  # the pre error has none left
    table = latent_table(cc2, x_pre, x_post, shared_nu=0.25)
    assert table.loc[0, "band"] == "post-only" and bool(table.loc[0, "really_shared"])
    assert not latent_table(cc2, x_pre, x_post, shared_nu=0.5).loc[0, "really_shared"]


@pytest.mark.parametrize("sparsity", ["batchtopk", "l1"])
def test_training_recovers_planted_pre_only_shared_and_post_only_concepts(sparsity):
    x_pre, x_post, concepts = planted_pairs(10_000, with_atoms=True)
    config = CrosscoderConfig(
        d_in=48, d_sae=64, sparsity=sparsity, k=3 if sparsity == "batchtopk" else None,
        lr=3e-3, epochs=10,
    )  # fmt: skip
    cc, history = train_crosscoder(config, x_pre[:8000], x_post[:8000], progress=False)
    assert history.tokens_seen == config.epochs * 8000
    metrics = evaluate_crosscoder(cc, x_pre[8000:], x_post[8000:])
    assert metrics.fvu_pre < 0.05 and metrics.fvu_post < 0.05
    # each planted concept's latent (best decoder cosine in a model that has the concept) sits
    # on the right side of the relative-norm histogram
    relative = cc.relative_norms()
    w = cc.W_dec.detach()
    directions = {
        0: w[:, :48] / w[:, :48].norm(dim=1, keepdim=True).clamp(min=1e-12),
        1: w[:, 48:] / w[:, 48:].norm(dim=1, keepdim=True).clamp(min=1e-12),
    }
    for kind, atoms_of, model, (low, high) in (
        ("shared", concepts[:24], 0, (0.3, 0.7)),
        ("pre-only", concepts[24:32], 0, (0.0, 0.3)),
        ("post-only", concepts[32:40], 1, (0.7, 1.0)),
    ):
        best = (atoms_of @ directions[model].T).argmax(1)
        r = relative[best]
        assert ((r >= low) & (r <= high)).all(), f"{kind}: relative norms {r.tolist()}"
    counts = band_counts(latent_table(cc, x_pre[8000:], x_post[8000:]))
    assert counts["pre-only"] >= 7 and counts["post-only"] >= 7 and counts["shared"] >= 23
    # the planted specific concepts really are specific: latent scaling agrees
    assert counts["post-only really shared"] == 0 and counts["pre-only really shared"] == 0


def test_save_load_round_trip_and_paired_rows(tmp_path):
    x_pre, x_post = planted_pairs(2000, d=8, shared=4, only=2)
    config = CrosscoderConfig(d_in=8, d_sae=16, sparsity="batchtopk", k=2, epochs=2)
    cc, _ = train_crosscoder(config, x_pre, x_post, progress=False)
    loaded = load_crosscoder(save_crosscoder(cc, tmp_path / "cc"))
    assert loaded.config == cc.config
    assert torch.equal(loaded.threshold, cc.threshold) and float(cc.threshold) > 0
    for a, b in zip(loaded(x_pre, x_post), cc(x_pre, x_post), strict=True):
        assert torch.equal(a, b)
    # paired shards: the same rows of each model, concatenated
    rows = PairedRows(x_pre.numpy(), x_post.numpy(), np.array([3, 1]))
    np.testing.assert_array_equal(rows.load(), np.hstack([x_pre.numpy(), x_post.numpy()])[[3, 1]])
    with pytest.raises(ValueError, match="row-paired"):
        train_crosscoder(config, x_pre, x_post[:10], progress=False)
    with pytest.raises(ValueError, match="needs a positive int k"):
        CrosscoderConfig(d_in=8, d_sae=16, sparsity="batchtopk")
    with pytest.raises(ValueError, match="only applies to sparsity 'batchtopk'"):
        CrosscoderConfig(d_in=8, d_sae=16, k=3)


@pytest.fixture
def paired_activations(tiny_bert_factory):
    from conftest import TINY_WORDS

    from repgeo_utils.activations import extract_activations

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(TINY_WORDS, size=rng.integers(3, 10))) for _ in range(50)]
    pre = extract_activations(tiny_bert_factory(2, 16), texts, max_length=32, progress=False,
                              shard_mb=0.01)  # fmt: skip
    post = extract_activations(tiny_bert_factory(3, 16), texts, [0, 1, 2], max_length=32,
                               progress=False, shard_mb=0.01)  # fmt: skip
    other = extract_activations(tiny_bert_factory(2, 16), texts[::-1], max_length=32,
                                progress=False)  # fmt: skip
    return pre, post, other


def test_train_crosscoder_on_activations_caches(paired_activations, monkeypatch):
    from repgeo_utils.sae import crosscoder as cc_module
    from repgeo_utils.sae import split_texts

    pre, post, other = paired_activations
    assert len(pre.meta["shards"]) > 1  # training streams paired shards
    config = CrosscoderConfig(d_in=16, d_sae=24, epochs=2, batch_size=64)
    calls = []
    real = cc_module._train
    monkeypatch.setattr(cc_module, "_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = train_crosscoder_on_activations(pre, post, 2, config, progress=False)
    assert first.layer == 2 and first.eval_texts.sum() == 5
    assert np.array_equal(first.eval_texts, split_texts(50, 0.1, 0))  # the SAEs' split
    assert first.metrics.n_tokens == int(pre.lengths[first.eval_texts].sum())
    assert first.history.tokens_seen == 2 * (pre.n_tokens - first.metrics.n_tokens)
    again = train_crosscoder_on_activations(pre, post, -1 % 3, config, progress=False)
    assert again.path == first.path and len(calls) == 1
    assert torch.equal(again.crosscoder.W_dec, first.crosscoder.W_dec)
    other_layer = train_crosscoder_on_activations(pre, post, 1, config, progress=False)
    assert other_layer.path != first.path and len(calls) == 2
    check_row_paired(pre, post)
    with pytest.raises(ValueError, match="different texts"):
        train_crosscoder_on_activations(pre, other, 1, config, progress=False)
    with pytest.raises(ValueError, match="d_in=32"):
        train_crosscoder_on_activations(pre, post, 1, CrosscoderConfig(d_in=32, d_sae=8))
