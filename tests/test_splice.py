"""Splice-in fidelity (repgeo_utils.ablation.splice): known answers on tiny models.

An SAE that reconstructs exactly recovers 1.0; an SAE that outputs zero is the zero-ablation
(recovers 0.0); the hook leaves padding alone; the layer means and the probe read-out are
checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from repgeo_utils.ablation.splice import (
    ProbeClassifier,
    classifier_splice_fidelity,
    encoder_batches,
    fit_linear_probe,
    fraction_recovered,
    hidden_state_module,
    layer_means,
    lm_splice_fidelity,
    mean_pool,
    splice,
    splice_fidelity,
)
from repgeo_utils.sae import SAEConfig, SparseAutoencoder

TEXTS = [
    "the movie was great and the acting brilliant",
    "terrible plot and awful acting",
    "the team won the game",
    "the election vote and the market",
    "i love this app",
    "bad update hard to use",
    "sports news",
    "a very good film",
]
LABELS = [1, 0, 2, 2, 1, 0, 2, 1]


def identity_sae(d: int) -> SparseAutoencoder:
    """``ReLU(x) - ReLU(-x) = x``: a 2d-latent SAE that reconstructs every input exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=2 * d, subtract_decoder_bias=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.requires_grad_(False)


def zero_sae(d: int) -> SparseAutoencoder:
    """An SAE whose reconstruction is always 0 (zero decoder, zero bias)."""
    sae = identity_sae(d)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def spread_weights(model, std: float = 1.0) -> None:
    """Large random weights, so the tiny classifier's predictions depend on the text."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)


@pytest.fixture(scope="module")
def classifier(tiny_bert):
    from repgeo_utils.models import load_model

    model, tokenizer = load_model(
        str(tiny_bert), kind="classifier", label_names=["a", "b", "c"], seed=0
    )
    spread_weights(model)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from repgeo_utils.lm import train_tokenizer

    tokenizer = train_tokenizer(TEXTS * 3, vocab_size=300)
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
        initializer_range=0.3,
    )
    return GPTNeoXForCausalLM(config).eval(), tokenizer


def test_hidden_state_module_outputs_are_the_hidden_states(classifier, tiny_lm):
    for model, tokenizer, expected in (
        (*classifier, ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"]),
        (*tiny_lm, ["gpt_neox.emb_dropout", "gpt_neox.layers.0", "gpt_neox.final_layer_norm"]),
    ):
        inputs = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
        inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        captured, handles = {}, []
        for index in range(3):
            path, module = hidden_state_module(model, index)
            assert path == expected[index]
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, index=index, into=captured: into.__setitem__(
                        index, out[0] if isinstance(out, tuple) else out
                    )
                )
            )
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        for handle in handles:
            handle.remove()
        for index in range(3):
            torch.testing.assert_close(captured[index], hidden[index], rtol=0, atol=0)
        assert hidden_state_module(model, -1)[0] == expected[-1]
        with pytest.raises(IndexError, match="out of range"):
            hidden_state_module(model, 3)


def test_the_hook_replaces_real_tokens_and_never_padding(classifier):
    model, tokenizer = classifier
    batch = encoder_batches(tokenizer, TEXTS, max_length=32, batch_size=8)[0]
    _, module = hidden_state_module(model, 1)
    outputs = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    with torch.no_grad(), splice(module, lambda h: h + 100.0) as hook:
        hook.mask = batch.mask
        model(**batch.inputs)
    with torch.no_grad():
        model(**batch.inputs)
    handle.remove()
    spliced, clean = outputs  # the hook registered first sees the module's own output
    assert hook.calls == 1
    assert not batch.mask.all()  # the batch has padding
    torch.testing.assert_close(spliced, clean)  # the capture hook ran before the splice
    # what the next layer receives (transformers records hidden_states with its own hook,
    # which may run before ours, so read the next layer's input instead)
    seen = []
    handle = model.bert.encoder.layer[1].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0])
    )
    with torch.no_grad(), splice(module, lambda h: h + 100.0) as hook:
        hook.mask = batch.mask
        model(**batch.inputs)
    handle.remove()
    hidden = seen[0]
    torch.testing.assert_close(hidden[batch.mask], clean[batch.mask] + 100.0)
    torch.testing.assert_close(hidden[~batch.mask], clean[~batch.mask])


def test_identity_sae_recovers_one_and_zero_sae_is_zero_ablation(classifier):
    from repgeo_utils.finetune import predict_logits

    model, tokenizer = classifier
    d = model.config.hidden_size
    table = classifier_splice_fidelity(
        model, tokenizer, TEXTS, LABELS,
        {1: {"identity": identity_sae(d), "zero SAE": zero_sae(d)}, 2: {"identity": identity_sae(d)}},
        max_length=32, batch_size=3,
    )  # fmt: skip
    clean = table.iloc[0]
    assert (clean["variant"], clean["kind"], clean["kl"]) == ("clean", "model", 0.0)
    predicted = predict_logits(model, tokenizer, TEXTS, max_length=32).argmax(-1)
    assert clean["accuracy"] == pytest.approx(np.mean(predicted == np.array(LABELS)))
    rows = table.set_index(["layer", "variant"])
    for layer in (1, 2):
        identity = rows.loc[(layer, "identity")]
        assert identity["kl"] == pytest.approx(0.0, abs=1e-12)
        assert identity["kl_recovered_zero"] == 1.0 and identity["kl_recovered_mean"] == 1.0
        assert identity["accuracy"] == clean["accuracy"]
        assert rows.loc[(layer, "zero"), "kl"] > 1e-4  # the ablation costs something
    zero = rows.loc[(1, "zero SAE")]
    assert zero["kl"] == pytest.approx(rows.loc[(1, "zero"), "kl"], rel=1e-9)
    assert zero["kl_recovered_zero"] == pytest.approx(0.0, abs=1e-9)
    assert zero["accuracy"] == zero["accuracy_zero"]
    # 3 batches: the clean pass, 2 references a layer, 3 splices, each once a batch
    assert table.attrs["forward_passes"] == {"clean": 3, "means": 3, "reference": 12, "splice": 9}


def test_layer_means_are_the_real_token_means(classifier):
    model, tokenizer = classifier
    batches = encoder_batches(tokenizer, TEXTS, max_length=32, batch_size=3)
    means = layer_means(model, batches, [0, 2])
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            inputs = tokenizer(text, return_tensors="pt")
            rows.append(model(**inputs, output_hidden_states=True).hidden_states[2][0])
    torch.testing.assert_close(means[2], torch.cat(rows).double().mean(0), rtol=1e-5, atol=1e-6)
    # given means are used as they are: mean-ablating with the true mean changes nothing here
    table = splice_fidelity(
        model, batches, {2: {"identity": identity_sae(16)}}, labels=LABELS, means=means,
        references=("mean",),
    )  # fmt: skip
    assert table.attrs["forward_passes"]["means"] == 0
    assert list(table["variant"]) == ["clean", "mean", "identity"]


def test_fraction_recovered_by_hand():
    assert fraction_recovered(0.8, clean=0.9, ablated=0.5) == pytest.approx(0.75)
    # KL: clean = 0; SAELens's kl_div_score = (KL_ablated - KL) / KL_ablated
    assert fraction_recovered(0.2, clean=0.0, ablated=0.8) == pytest.approx(0.75)
    # CE: (CE_ablated - CE) / (CE_ablated - CE_clean)
    assert fraction_recovered(3.0, clean=2.0, ablated=6.0) == pytest.approx(0.75)
    assert math.isnan(fraction_recovered(0.5, clean=0.5, ablated=0.5))


def test_causal_lm_ce_loss_recovered(tiny_lm):
    from repgeo_utils.lm.sweeps import last_token_features

    model, tokenizer = tiny_lm
    table = lm_splice_fidelity(
        model, tokenizer, TEXTS,
        {1: {"identity": identity_sae(16), "zero SAE": zero_sae(16)}, 2: {"identity": identity_sae(16)}},
        max_length=32, batch_size=4,
    )  # fmt: skip
    _, loss, n_tokens = last_token_features(model, tokenizer, TEXTS, [], max_length=32)
    clean = table.iloc[0]
    assert clean["ce_loss"] == pytest.approx(loss, rel=1e-6)
    assert clean["predicted_tokens"] == n_tokens
    rows = table.set_index(["layer", "variant"])
    assert rows.loc[(1, "identity"), "ce_recovered_zero"] == pytest.approx(1.0)
    assert rows.loc[(2, "identity"), "ce_recovered_mean"] == pytest.approx(1.0)
    assert rows.loc[(1, "zero SAE"), "ce_recovered_zero"] == pytest.approx(0.0, abs=1e-9)
    assert rows.loc[(1, "zero"), "ce_loss"] != pytest.approx(clean["ce_loss"])


def test_linear_probe_reads_out_the_pooled_encoder(tiny_bert):
    from repgeo_utils.models import load_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    weight, bias = fit_linear_probe(x * 10 + 3, y, C=100.0)  # raw units: scaling folded in
    assert weight.shape == (2, 5)
    assert ((x * 10 + 3) @ weight.T + bias).argmax(1).tolist() == y.tolist()
    # a feature constant up to rounding (as in MiniLM's mean-pooled last layer) gets weight 0,
    # not coef / 1e-17: a splice that moves it must not swamp the logits
    flat = np.column_stack(
        [x, np.full(60, 0.1) + rng.normal(scale=1e-12, size=60), np.full(60, 2.0)]
    )
    weight_flat, bias_flat = fit_linear_probe(flat, y, C=100.0)
    assert not weight_flat[:, 5:].any() and np.abs(weight_flat).max() < 100
    moved = flat.copy()
    moved[:, 5:] += 1.0
    np.testing.assert_allclose(moved @ weight_flat.T + bias_flat, flat @ weight_flat.T + bias_flat)
    weight3, bias3 = fit_linear_probe(x, y, n_classes=3)
    assert bias3[2] == -1e9 and not weight3[2].any()  # an absent class is never predicted
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe(x, np.zeros(60))

    encoder, tokenizer = load_model(str(tiny_bert), kind="encoder")
    probe = ProbeClassifier(encoder, np.ones((2, 16)), np.array([0.0, 1.0]))
    inputs = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = probe(**inputs).logits
        pooled = mean_pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"])
    torch.testing.assert_close(logits, pooled.sum(1, keepdim=True) + torch.tensor([0.0, 1.0]))
    assert hidden_state_module(probe, 2)[0] == "encoder.encoder.layer.1"


def test_splice_errors(classifier):
    model, tokenizer = classifier
    batches = encoder_batches(tokenizer, TEXTS, max_length=32, batch_size=4)
    with pytest.raises(ValueError, match="needs the labels"):
        splice_fidelity(model, batches, {1: {"a": identity_sae(16)}})
    with pytest.raises(ValueError, match="names a reference"):
        splice_fidelity(model, batches, {1: {"zero": identity_sae(16)}}, labels=LABELS)
    with pytest.raises(ValueError, match="objective"):
        splice_fidelity(model, batches, {}, objective="regression", labels=LABELS)
    with pytest.raises(TypeError, match="SAE or a function"):
        splice_fidelity(model, batches, {1: {"a": 3}}, labels=LABELS)


def _recomputing(monkeypatch):
    """Make every Replay.replayed a no-op, so each variant recomputes the whole model."""
    from contextlib import contextmanager

    from repgeo_utils.ablation.hooks import Replay

    @contextmanager
    def recompute(self, upto=None):
        self.outputs = [[] for _ in self.modules]  # recorded outputs must not be needed
        yield self

    monkeypatch.setattr(Replay, "replayed", recompute)


def test_replayed_splices_give_the_same_bits_as_recomputing(classifier, tiny_lm, monkeypatch):
    """The clean pass's upstream outputs, replayed, change no number of any variant (encoder
    with a pad-bearing batch; causal LM including its final-norm index)."""

    def half_sae(d: int) -> SparseAutoencoder:
        sae = identity_sae(d)
        with torch.no_grad():
            sae.W_dec.mul_(0.5)
        return sae

    d = classifier[0].config.hidden_size
    encoder_splices = {
        0: {"half": half_sae(d)},
        1: {"zero SAE": zero_sae(d)},
        2: {"half": half_sae(d)},
    }
    lm_splices = {1: {"half": half_sae(16)}, 2: {"zero SAE": zero_sae(16)}}

    def run():
        model, tokenizer = classifier
        enc = classifier_splice_fidelity(model, tokenizer, TEXTS, LABELS, encoder_splices,
                                         max_length=32, batch_size=3)  # fmt: skip
        lm, lm_tok = tiny_lm
        dec = lm_splice_fidelity(lm, lm_tok, TEXTS, lm_splices, max_length=32, batch_size=4)
        return enc, dec

    replayed = run()
    with monkeypatch.context() as m:
        _recomputing(m)
        recomputed = run()
    for a, b in zip(replayed, recomputed, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert replayed[0].set_index(["layer", "variant"]).loc[(1, "zero SAE"), "kl"] > 1e-4


def test_upstream_modules_and_replay_errors(classifier, tiny_lm):
    from repgeo_utils.ablation.hooks import Replay
    from repgeo_utils.ablation.splice import upstream_modules

    model, tokenizer = classifier
    bert = model.bert
    assert upstream_modules(model, 0) == [bert.embeddings]
    assert upstream_modules(model, 2) == [bert.embeddings, *bert.encoder.layer[:2]]
    lm, _ = tiny_lm
    neox = lm.gpt_neox
    assert upstream_modules(lm, -1)[-1] is neox.final_layer_norm
    assert upstream_modules(lm, 1)[1:] == [neox.layers[0]]
    assert upstream_modules(lm, 2)[-1] is hidden_state_module(lm, 2)[1]

    replay = Replay(upstream_modules(model, 2))
    a = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    b = tokenizer(TEXTS[2:6], padding=True, return_tensors="pt")
    with torch.inference_mode():
        with replay.record():
            clean = model(**a).logits
        with replay.replayed():
            assert torch.equal(model(**a).logits, clean)
        with pytest.raises(RuntimeError, match="other inputs"), replay.replayed():
            model(**b)
        swapped = {k: v.flip(0) for k, v in a.items()}  # same shapes, other order of texts
        with pytest.raises(RuntimeError, match="other inputs"), replay.replayed():
            model(**swapped)
        with pytest.raises(RuntimeError, match="ran more often"), replay.replayed():
            model(**a)
            model(**a)
        with pytest.raises(RuntimeError, match="ran fewer times"), replay.replayed():
            pass
    assert "forward" not in bert.embeddings.__dict__  # the modules run normally again
    with pytest.raises(ValueError, match="upto must be in"), replay.replayed(upto=9):
        pass
