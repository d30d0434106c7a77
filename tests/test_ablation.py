"""Eigen-direction ablation: EigenBasis, the forward hook, the sweep, LM loss and accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from repgeo_utils import ablation
from repgeo_utils.ablation import (
    EigenBasis,
    ablation_sweep,
    classifier_accuracy_ablation,
    collect_module_outputs,
    eigen_ablation,
    final_representation_module,
    fit_eigenbasis,
    lm_loss_ablation,
)

SQRT2 = np.sqrt(2.0)
U1 = np.array([1.0, 1.0]) / SQRT2  # variance 4
U2 = np.array([1.0, -1.0]) / SQRT2  # variance 1
MEAN = np.array([3.0, -1.0])


def _hand_points() -> np.ndarray:
    """mean +- a*u1, mean +- b*u2 with 2a^2/3 = 4 and 2b^2/3 = 1: covariance 4 u1u1' + u2u2'."""
    a, b = np.sqrt(6.0), np.sqrt(1.5)
    return np.stack([MEAN + a * U1, MEAN - a * U1, MEAN + b * U2, MEAN - b * U2])


def _random_basis(d: int = 5, n: int = 40, seed: int = 0) -> EigenBasis:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.arange(1, d + 1) + rng.standard_normal(d) * 3
    return fit_eigenbasis(x)


# --- EigenBasis by hand --------------------------------------------------------------------


def test_hand_example_vectors_eigenvalues_and_projections():
    basis = fit_eigenbasis(_hand_points())
    assert basis.dim == 2 and basis.n_samples == 4
    np.testing.assert_allclose(basis.mean, MEAN, atol=1e-12)
    np.testing.assert_allclose(basis.eigenvalues, [4.0, 1.0], atol=1e-12)
    assert abs(basis.vectors[:, 0] @ U1) == pytest.approx(1.0, abs=1e-12)
    assert abs(basis.vectors[:, 1] @ U2) == pytest.approx(1.0, abs=1e-12)
    # sign convention: the largest-magnitude entry of each vector is positive
    for j in range(2):
        v = basis.vectors[:, j]
        assert v[np.abs(v).argmax()] > 0
    # x = (5, 2): x - mean = (2, 3), (x-m).u1 = 5/sqrt2, (x-m).u2 = -1/sqrt2
    x = np.array([[5.0, 2.0]])
    np.testing.assert_allclose(basis.apply(x, 1, "keep"), [[5.5, 1.5]], atol=1e-12)
    np.testing.assert_allclose(basis.apply(x, 1, "remove"), [[2.5, -0.5]], atol=1e-12)
    # the points on the (1,1) line through the mean stay put under keep k=1 ...
    pts = _hand_points()
    np.testing.assert_allclose(basis.apply(pts[:2], 1, "keep"), pts[:2], atol=1e-12)
    np.testing.assert_allclose(basis.apply(pts[2:], 1, "keep"), [MEAN, MEAN], atol=1e-12)
    # ... and those on the (1,-1) line under remove k=1
    np.testing.assert_allclose(basis.apply(pts[2:], 1, "remove"), pts[2:], atol=1e-12)
    np.testing.assert_allclose(basis.apply(pts[:2], 1, "remove"), [MEAN, MEAN], atol=1e-12)
    np.testing.assert_allclose(basis.projector(1, "keep"), np.outer(U1, U1), atol=1e-12)
    np.testing.assert_allclose(basis.projector(1, "remove"), np.outer(U2, U2), atol=1e-12)
    assert basis.variance_fraction(1, "keep") == pytest.approx(0.8)
    assert basis.variance_fraction(1, "remove") == pytest.approx(0.2)


def test_projector_limits_and_algebra():
    basis = _random_basis(d=5)
    d = basis.dim
    x = np.random.default_rng(1).standard_normal((7, d)) * 4
    mean_rows = np.broadcast_to(basis.mean, x.shape)
    np.testing.assert_allclose(basis.apply(x, d, "keep"), x, atol=1e-12)
    np.testing.assert_allclose(basis.apply(x, 0, "keep"), mean_rows, atol=1e-12)
    np.testing.assert_allclose(basis.apply(x, 0, "remove"), x, atol=1e-12)
    np.testing.assert_allclose(basis.apply(x, d, "remove"), mean_rows, atol=1e-12)
    np.testing.assert_allclose(basis.projector(0, "keep"), np.zeros((d, d)), atol=1e-15)
    np.testing.assert_allclose(basis.projector(d, "keep"), np.eye(d), atol=1e-12)
    for k in range(d + 1):
        np.testing.assert_allclose(
            basis.apply(x, k, "keep") + basis.apply(x, k, "remove"), x + basis.mean, atol=1e-12
        )
        for mode in ("keep", "remove"):
            p = basis.projector(k, mode)
            assert p.dtype == np.float64 and p.shape == (d, d)
            np.testing.assert_allclose(p @ p, p, atol=1e-12)
            np.testing.assert_allclose(p, p.T, atol=1e-15)
            assert np.trace(p) == pytest.approx(k if mode == "keep" else d - k)
    # eigenvalues descending, vectors orthonormal, the covariance rebuilt
    assert np.all(np.diff(basis.eigenvalues) <= 0)
    np.testing.assert_allclose(basis.vectors.T @ basis.vectors, np.eye(d), atol=1e-12)


def test_fit_matches_numpy_cov_and_streaming():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 4)) @ rng.standard_normal((4, 4)) + 10.0
    basis = fit_eigenbasis(x.astype(np.float32))
    streamed = fit_eigenbasis(x.astype(np.float32), block_rows=7)
    cov = np.cov(x.astype(np.float32).astype(np.float64), rowvar=False)
    rebuilt = basis.vectors @ np.diag(basis.eigenvalues) @ basis.vectors.T
    np.testing.assert_allclose(rebuilt, cov, atol=1e-10)
    np.testing.assert_allclose(streamed.vectors, basis.vectors, atol=1e-9)
    np.testing.assert_allclose(streamed.mean, basis.mean, atol=1e-12)


def test_fit_and_projector_errors():
    with pytest.raises(ValueError, match="NaN"):
        fit_eigenbasis(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        fit_eigenbasis(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fit_eigenbasis(np.ones(3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_eigenbasis(np.ones((1, 3)))
    basis = _random_basis(d=5)
    for bad in (-1, 6, 2.0, True, "3"):
        with pytest.raises(ValueError, match=r"\[0, 5\]"):
            basis.projector(bad)
    with pytest.raises(ValueError, match="mode"):
        basis.projector(2, "drop")
    with pytest.raises(ValueError, match="d = 5"):
        basis.apply(np.ones((2, 4)), 2)
    assert basis.projector(np.int64(2)).shape == (5, 5)


# --- the forward hook ----------------------------------------------------------------------


class _TupleLayer(nn.Module):
    """Returns (hidden, extra) like a Hugging Face layer of older transformers versions."""

    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d)
        self.extra = torch.arange(3.0)

    def forward(self, x):
        return self.lin(x), self.extra


class _DictLayer(nn.Module):
    def forward(self, x):
        return {"h": x}


def test_hook_on_linear_matches_apply_and_is_removed():
    torch.manual_seed(0)
    lin = nn.Linear(3, 5).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    basis = _random_basis(d=5)
    plain = lin(x).detach()
    for k, mode in [(0, "keep"), (2, "keep"), (2, "remove"), (5, "remove")]:
        with eigen_ablation(lin, basis, k, mode) as hook:
            out = lin(x).detach()
        assert hook.calls == 1
        np.testing.assert_allclose(out.numpy(), basis.apply(plain.numpy(), k, mode), atol=1e-12)
        assert not lin._forward_hooks
    np.testing.assert_array_equal(lin(x).detach().numpy(), plain.numpy())
    # float32 module: the projection runs in float32
    lin32 = nn.Linear(3, 5)
    x32 = torch.randn(4, 3)
    with eigen_ablation(lin32, basis, 3, "keep"):
        out32 = lin32(x32).detach()
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(
        out32.numpy(), basis.apply(lin32(x32).detach().numpy(), 3), rtol=1e-5, atol=1e-5
    )


def test_hook_on_tuple_output_replaces_element_0_only():
    layer = _TupleLayer(3, 5)
    x = torch.randn(4, 3)
    basis = _random_basis(d=5)
    plain = layer(x)[0].detach().numpy()
    with eigen_ablation(layer, basis, 1, "remove"):
        h, extra = layer(x)
    assert extra is layer.extra
    np.testing.assert_allclose(h.detach().numpy(), basis.apply(plain, 1, "remove"), atol=1e-5)


def test_hook_removed_after_exception_and_errors():
    lin = nn.Linear(3, 5)
    basis = _random_basis(d=5)
    with pytest.raises(RuntimeError, match="inside"):
        with eigen_ablation(lin, basis, 2):
            raise RuntimeError("inside the block")
    assert not lin._forward_hooks
    wrong = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"4.*d = 5"):
        with eigen_ablation(wrong, basis, 2):
            wrong(torch.randn(2, 3))
    assert not wrong._forward_hooks
    layer = _DictLayer()
    with pytest.raises(TypeError, match="tensor or a tuple"):
        with eigen_ablation(layer, basis, 2):
            layer(torch.randn(2, 5))
    assert not layer._forward_hooks
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        with eigen_ablation(lin, basis, 6):
            pass
    with pytest.raises(ValueError, match="mode"):
        with eigen_ablation(lin, basis, 2, "both"):
            pass
    with pytest.raises(TypeError, match="nn.Module"):
        with eigen_ablation(lambda x: x, basis, 2):
            pass
    assert not lin._forward_hooks


# --- the sweep -----------------------------------------------------------------------------


def test_ablation_sweep_stub_metric():
    torch.manual_seed(0)
    d = 4
    lin = nn.Linear(d, d).double()
    x = torch.randn(30, d, dtype=torch.float64)
    out = lin(x).detach().numpy()
    basis = fit_eigenbasis(out)
    mean_norm = np.sqrt(len(out)) * np.linalg.norm(out.mean(axis=0))  # every row = the mean
    full_norm = np.linalg.norm(out)

    def evaluate() -> float:
        return float(torch.linalg.norm(lin(x).detach()))

    table = ablation_sweep(evaluate, lin, basis, [0, 2, d], progress=False)
    assert list(table.columns) == ["mode", "k", "variance_fraction", "metric"]
    assert list(zip(table["mode"], table["k"], strict=True)) == [
        ("none", d),
        ("keep", 0),
        ("keep", 2),
        ("keep", d),
        ("remove", 0),
        ("remove", 2),
        ("remove", d),
    ]
    metric = dict(zip(zip(table["mode"], table["k"], strict=True), table["metric"], strict=True))
    assert metric[("none", d)] == pytest.approx(full_norm, rel=1e-12)
    assert metric[("keep", d)] == pytest.approx(full_norm, rel=1e-12)
    assert metric[("remove", 0)] == pytest.approx(full_norm, rel=1e-12)
    assert metric[("keep", 0)] == pytest.approx(mean_norm, rel=1e-12)
    assert metric[("remove", d)] == pytest.approx(mean_norm, rel=1e-12)
    # keep(2) and remove(2) split the centred energy: ||keep-mean||^2 + ||remove-mean||^2
    energy = full_norm**2 - mean_norm**2  # centred energy (the rows' mean is basis.mean)
    assert metric[("keep", 2)] ** 2 - mean_norm**2 + metric[("remove", 2)] ** 2 - mean_norm**2 == (
        pytest.approx(energy, rel=1e-10)
    )
    assert table.loc[table["mode"] == "keep", "variance_fraction"].iloc[0] == 0.0
    assert table.attrs["dim"] == d
    assert not lin._forward_hooks

    # a dict metric gives one column per key
    def both() -> dict[str, float]:
        y = lin(x).detach()
        return {"norm": float(torch.linalg.norm(y)), "first": float(y[0, 0])}

    table = ablation_sweep(both, lin, basis, [d], modes=["remove"], progress=False)
    assert list(table.columns) == ["mode", "k", "variance_fraction", "norm", "first"]
    assert table["first"].iloc[1] == pytest.approx(out.mean(axis=0)[0], rel=1e-12)


def test_ablation_sweep_errors():
    lin = nn.Linear(3, 5)
    basis = _random_basis(d=5)
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        ablation_sweep(lambda: 1.0, lin, basis, [1, 6], progress=False)
    with pytest.raises(ValueError, match="empty"):
        ablation_sweep(lambda: 1.0, lin, basis, [], progress=False)
    with pytest.raises(ValueError, match="mode"):
        ablation_sweep(lambda: 1.0, lin, basis, [1], modes=["keep", "x"], progress=False)
    with pytest.raises(RuntimeError, match="never ran"):
        ablation_sweep(lambda: 1.0, lin, basis, [1], progress=False)
    with pytest.raises(TypeError, match="float or a dict"):
        ablation_sweep(lambda: "1", lin, basis, [1], progress=False)


# --- applications --------------------------------------------------------------------------

LM_TEXTS = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird in the hand is worth two in the bush",
    "the quick brown fox jumps over the lazy dog again and again",
    "to be or not to be that is the question",
    "all that glitters is not gold, said the old man",
    "the rain in spain stays mainly in the plain",
    "an apple a day keeps the doctor away they say",
    "the dog and the cat and the bird sat in the sun",
]


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from repgeo_utils.lm import train_tokenizer

    tokenizer = train_tokenizer(LM_TEXTS * 3, vocab_size=300)
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
        initializer_range=0.3,  # large weights, so the mean-state loss differs clearly
    )
    return GPTNeoXForCausalLM(config).eval(), tokenizer


def test_final_representation_module(tiny_lm, tiny_bert):
    from repgeo_utils.models import load_model

    model, _ = tiny_lm
    assert final_representation_module(model) is model.gpt_neox.final_layer_norm
    clf, _ = load_model(str(tiny_bert), kind="classifier", label_names=["a", "b"], seed=0)
    assert final_representation_module(clf) is clf.bert.encoder.layer[-1]
    with pytest.raises(ValueError, match="final representation"):
        final_representation_module(nn.Linear(2, 2))


def test_lm_loss_ablation_keep_all_and_remove_all(tiny_lm):
    model, tokenizer = tiny_lm
    fit, ev = LM_TEXTS[:5], LM_TEXTS[5:]
    table = lm_loss_ablation(model, tokenizer, fit, ev, [0, 16], batch_size=2, progress=False)
    loss = dict(zip(zip(table["mode"], table["k"], strict=True), table["loss"], strict=True))

    # by hand: the final-norm states of all fit tokens (one text at a time, no padding) ...
    with torch.no_grad():
        states = [
            model(torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]]),
                  output_hidden_states=True).hidden_states[-1][0]
            for t in fit
        ]  # fmt: skip
        mean = torch.cat(states).double().mean(0)
        # ... the baseline loss, text by text
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ev]
        nll, n = 0.0, 0
        for seq in ids:
            logits = model(torch.tensor([seq])).logits[0, :-1].double()
            nll += float(
                torch.nn.functional.cross_entropy(logits, torch.tensor(seq[1:]), reduction="sum")
            )
            n += len(seq) - 1
        baseline = nll / n
        # ... and the loss of predicting every token from the mean representation
        unembed = model.get_output_embeddings()
        assert unembed.bias is None
        const = unembed.weight.double() @ mean
        targets = torch.tensor([t for seq in ids for t in seq[1:]])
        mean_loss = float((torch.logsumexp(const, 0) - const[targets]).mean())

    assert loss[("none", 16)] == pytest.approx(baseline, abs=1e-5)
    assert loss[("keep", 16)] == pytest.approx(baseline, abs=1e-5)
    assert loss[("remove", 0)] == pytest.approx(baseline, abs=1e-5)
    assert loss[("remove", 16)] == pytest.approx(mean_loss, abs=1e-5)
    assert loss[("keep", 0)] == pytest.approx(mean_loss, abs=1e-5)
    assert abs(mean_loss - baseline) > 0.1
    assert table.attrs["n_fit_tokens"] == sum(len(s) for s in states)
    assert not model.gpt_neox.final_layer_norm._forward_hooks


def test_collect_module_outputs_drops_padding(tiny_lm):
    model, tokenizer = tiny_lm
    from repgeo_utils.ablation.measures import _causal_batches

    batches = _causal_batches(tokenizer, LM_TEXTS[:3], 128, 3)
    n_real = sum(int(b["attention_mask"].sum()) for b in batches)
    feats = collect_module_outputs(model, model.gpt_neox.final_layer_norm, batches)
    assert feats.shape == (n_real, 16) and feats.dtype == np.float32
    seq = tokenizer(LM_TEXTS[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        alone = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
    # every state of text 0 appears (padding never changes a causal LM's real positions)
    dist = np.abs(feats[:, None, :] - alone.numpy()[None]).max(-1).min(0)
    assert dist.max() < 1e-5


def test_lm_loss_ablation_errors(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="fit_texts is empty"):
        lm_loss_ablation(model, tokenizer, [], LM_TEXTS, [1], progress=False)
    with pytest.raises(ValueError, match="eval_texts is empty"):
        lm_loss_ablation(model, tokenizer, LM_TEXTS, [], [1], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        lm_loss_ablation(model, tokenizer, LM_TEXTS, LM_TEXTS, [17], progress=False)


CLF_TEXTS = [
    "the movie was very good",
    "terrible acting and a predictable plot",
    "i love this app",
    "the election vote was lost",
    "market shares and business news",
    "the team won the game",
]
CLF_LABELS = [2, 2, 0, 1, 1, 0]


def _spread_weights(model, std: float = 1.0) -> None:
    """Large random weights: with BERT's 0.02 init the [CLS] state barely depends on the
    text and every text gets the same class even without an ablation."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)


def test_classifier_accuracy_ablation_keep_all_and_keep_none(tiny_bert):
    from repgeo_utils.finetune import predict_logits
    from repgeo_utils.models import load_model

    model, tokenizer = load_model(
        str(tiny_bert), kind="classifier", label_names=["a", "b", "c"], seed=0
    )
    _spread_weights(model)
    fit = CLF_TEXTS + ["i hate this film", "sports and politics"]
    table = classifier_accuracy_ablation(
        model, tokenizer, fit, CLF_TEXTS, CLF_LABELS, [0, 16], batch_size=4, progress=False
    )
    acc = dict(zip(zip(table["mode"], table["k"], strict=True), table["accuracy"], strict=True))
    labels = np.array(CLF_LABELS)
    predicted = predict_logits(model, tokenizer, CLF_TEXTS).argmax(-1)
    assert len(set(predicted.tolist())) > 1  # without ablation the classes differ
    baseline = float(np.mean(predicted == labels))
    assert acc[("none", 16)] == pytest.approx(baseline)
    assert acc[("keep", 16)] == pytest.approx(baseline)

    # by hand: every token state becomes the mean of the last layer over all fit tokens,
    # so the pooler and the head see one vector and every text gets one class c
    with torch.no_grad():
        states = [model.bert(**tokenizer(t, return_tensors="pt")).last_hidden_state[0] for t in fit]
        mean = torch.cat(states).mean(0)
        constant_logits = model.classifier(model.bert.pooler(mean[None, None, :]))[0]
    c = int(constant_logits.argmax())
    assert acc[("keep", 0)] == pytest.approx(float(np.mean(labels == c)))
    assert acc[("keep", 0)] != pytest.approx(baseline)  # the labels tell the two apart
    assert acc[("remove", 16)] == pytest.approx(float(np.mean(labels == c)))
    layer = final_representation_module(model)
    basis = fit_eigenbasis(torch.cat(states))
    with eigen_ablation(layer, basis, 0, "keep"):
        logits = predict_logits(model, tokenizer, CLF_TEXTS)
    assert (logits.argmax(-1) == c).all()
    np.testing.assert_allclose(logits, np.broadcast_to(logits[0], logits.shape), atol=1e-5)
    np.testing.assert_allclose(logits[0], constant_logits.numpy(), rtol=1e-5, atol=1e-5)


def test_classifier_accuracy_ablation_errors(tiny_bert):
    from repgeo_utils.models import load_model

    model, tokenizer = load_model(str(tiny_bert), kind="classifier", label_names=["a", "b"])
    with pytest.raises(ValueError, match="one label per eval text"):
        classifier_accuracy_ablation(model, tokenizer, CLF_TEXTS, CLF_TEXTS, [0, 1], [1])
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        classifier_accuracy_ablation(model, tokenizer, CLF_TEXTS, CLF_TEXTS, [0, 1, 2] * 2, [1])
    with pytest.raises(ValueError, match="eval_texts is empty"):
        classifier_accuracy_ablation(model, tokenizer, CLF_TEXTS, [], [], [1])
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        classifier_accuracy_ablation(model, tokenizer, CLF_TEXTS, CLF_TEXTS, [0] * 6, [-1])
    assert ablation.ABLATION_MODES == ("keep", "remove")


def test_default_ks_and_table2_row():
    import pandas as pd

    from repgeo_utils.ablation import default_ks, table2_row

    assert default_ks(32) == [0, 1, 2, 4, 8, 10, 16, 32]
    assert default_ks(8) == [0, 1, 2, 4, 8]
    assert default_ks(1) == [0, 1]
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        default_ks(0)
    table = pd.DataFrame(
        {
            "mode": ["none", "keep", "keep", "remove"],
            "k": [4, 0, 1, 1],
            "acc": [0.9, 0.2, 0.5, 0.8],
        }
    )
    assert table2_row(table, "acc", [1]) == {
        "original": 0.9,
        "top-1 removed": 0.8,
        "top-1 retained": 0.5,
        "mean only": 0.2,
    }
    with pytest.raises(ValueError, match="no row for mode 'remove', k = 2"):
        table2_row(table, "acc", [2])


def test_old_spectral_names_forward_to_ablation_and_warn():
    from repgeo_utils import spectral

    with pytest.warns(DeprecationWarning, match=r"repgeo_utils\.ablation\.eigen_ablation"):
        assert spectral.eigen_ablation is eigen_ablation
    with pytest.warns(DeprecationWarning, match="moved"):
        from repgeo_utils.spectral import EigenBasis as Old
    assert Old is EigenBasis
    with pytest.raises(AttributeError, match="no attribute 'eigen_nothing'"):
        spectral.eigen_nothing  # noqa: B018


def test_replayed_ablation_sweeps_give_the_same_bits(tiny_lm, tiny_bert):
    """Replaying the unablated part of the model (upstream=...) changes no number of the sweep."""
    from repgeo_utils.ablation import hooks
    from repgeo_utils.models import load_model

    model, tokenizer = tiny_lm

    def lm_run():
        return lm_loss_ablation(
            model, tokenizer, LM_TEXTS[:5], LM_TEXTS[5:], [0, 3, 16], batch_size=2, progress=False
        )

    clf, clf_tok = load_model(
        str(tiny_bert), kind="classifier", label_names=["a", "b", "c"], seed=0
    )
    _spread_weights(clf)

    def clf_run():
        return classifier_accuracy_ablation(
            clf, clf_tok, CLF_TEXTS, CLF_TEXTS, CLF_LABELS, [0, 2, 16], batch_size=4, progress=False
        )

    replayed = [lm_run(), clf_run()]
    original = hooks.ablation_sweep

    def without_replay(*args, upstream=None, **kwargs):
        return original(*args, **kwargs)

    import repgeo_utils.ablation.measures as measures

    measures.ablation_sweep, saved = without_replay, measures.ablation_sweep
    try:
        recomputed = [lm_run(), clf_run()]
    finally:
        measures.ablation_sweep = saved
    for a, b in zip(replayed, recomputed, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    with pytest.raises(ValueError, match="end with the ablated module"):
        hooks.ablation_sweep(lambda: 0.0, clf.bert.encoder.layer[-1],
                             fit_eigenbasis(torch.randn(40, 16)), [1],
                             upstream=[clf.bert.embeddings])  # fmt: skip
