"""The SAE feature explorer: numbers, HTML and the widget callback, without a browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repgeo_utils.data import Preprocess
from repgeo_utils.explorer import FeatureExplorer, Selection, widget_frontend_attached
from repgeo_utils.models import load_model
from repgeo_utils.sae import SAEConfig, SparseAutoencoder

D_SAE = 8


def _sae(seed: int, d_in: int = 16) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=D_SAE, seed=seed))
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # some latents fire on every token
    return sae.requires_grad_(False).eval()


@pytest.fixture
def explorer(tiny_bert_factory):
    pre, post = tiny_bert_factory(2, 16), tiny_bert_factory(3, 16)  # two distinct "models"
    saes = {
        ("sentiment", "early", "pre-trained"): _sae(0),
        ("sentiment", "early", "fine-tuned"): _sae(1),
        ("sentiment", "late", "pre-trained"): _sae(2),
        ("sentiment", "late", "fine-tuned"): _sae(3),
        ("topic", "late", "fine-tuned"): _sae(4),
    }
    models = {
        ("sentiment", "pre-trained"): pre,
        ("sentiment", "fine-tuned"): post,
        ("topic", "fine-tuned"): post,
    }
    features = {key: [5, 2, 7] for key in saes}
    features[("topic", "late", "fine-tuned")] = [3]
    return FeatureExplorer(
        saes,
        {"early": 1, "late": 2},
        models,
        features=features,
        notes={("sentiment", "early", "pre-trained", 5): "fires on <good> & great"},
        preprocess=Preprocess(),
        sentence="The acting was GREAT!",
    )


def test_token_values_are_the_sae_latent_of_the_layer(explorer, tiny_bert_factory):
    tokens, values = explorer.token_values("sentiment", "late", "fine-tuned", 2, "A good movie")
    net, tokenizer = load_model(tiny_bert_factory(3, 16))
    enc = tokenizer("a good movie", return_tensors="pt")  # preprocessing lowercased it
    with torch.no_grad():
        hidden = net(**enc, output_hidden_states=True).hidden_states[2][0]
    expected = explorer.saes[("sentiment", "late", "fine-tuned")].encode(hidden)[:, 2]
    assert tokens == ["[CLS]", "a", "good", "movie", "[SEP]"]
    np.testing.assert_allclose(values, expected.double().numpy(), rtol=1e-5, atol=1e-6)


def test_models_are_loaded_once_per_checkpoint(tiny_bert):
    calls = []

    def loader(name):
        calls.append(name)
        return load_model(name)

    ex = FeatureExplorer(
        {("t", "late", "m"): _sae(0)}, {"late": 2}, {("t", "m"): tiny_bert}, loader=loader
    )
    for sentence in ("good movie", "bad movie", "a film"):
        ex.token_values("t", "late", "m", 0, sentence)
    assert calls == [tiny_bert]


def test_render_html_colours_by_scale_and_escapes(explorer):
    key = ("sentiment", "early", "pre-trained")
    page = explorer.render_html(*key, 5, "the acting was great")
    assert "feature #5" in page and "fires on &lt;good&gt; &amp; great" in page
    assert page.count("<span title=") == 6  # [CLS] the acting was great [SEP]
    # a known data-set scale sets full colour; values above it saturate at alpha 1
    explorer.feature_scale[key] = np.full(D_SAE, 1e-9)
    assert "rgba(214, 39, 40, 1.00)" in explorer.render_html(*key, 5, "the acting was great")
    assert "(no tokens)" in explorer.render_html(*key, 5, "  !!! ")  # preprocessed to nothing


def test_bad_selections_fail_clearly(explorer):
    with pytest.raises(KeyError, match="No SAE for task 'topic', depth 'early'"):
        explorer.token_values("topic", "early", "fine-tuned", 0, "x")
    with pytest.raises(ValueError, match="feature must be in 0..7"):
        explorer.token_values("sentiment", "late", "fine-tuned", D_SAE, "x")
    with pytest.raises(ValueError, match="No layer given for depth 'middle'"):
        FeatureExplorer({("t", "middle", "m"): _sae(0)}, {"late": 2}, {("t", "m"): "x"})
    with pytest.raises(ValueError, match="No model given"):
        FeatureExplorer({("t", "late", "m"): _sae(0)}, {"late": 2}, {})


def test_widget_callback_follows_the_controls(explorer):
    box = explorer.widget()
    c = explorer._controls
    assert explorer.selection == Selection(
        "sentiment", "early", "pre-trained", 5, "The acting was GREAT!"
    )
    assert "great" in explorer._output.value and "feature #5" in explorer._output.value

    c["sentence"].value = "the plot was terrible"
    assert explorer.selection.sentence == "the plot was terrible"
    assert ">terrible</span>" in explorer._output.value

    c["feature"].value = 7
    assert explorer.selection.feature == 7 and "feature #7" in explorer._output.value

    # a new task narrows the depth and model choices and jumps to that SAE's top feature
    c["task"].value = "topic"
    assert list(c["depth"].options) == ["late"] and list(c["model"].options) == ["fine-tuned"]
    assert explorer.selection == Selection(
        "topic", "late", "fine-tuned", 3, "the plot was terrible"
    )
    assert "<b>topic</b> · late layer (2) · fine-tuned · feature #3" in explorer._output.value
    assert len(box.children) == 4


def test_update_reports_errors_in_the_output_instead_of_raising(explorer):
    explorer.widget()
    explorer._controls["feature"].max = 100
    explorer._controls["feature"].value = 50  # beyond this SAE's 8 latents
    assert "feature must be in 0..7" in explorer._output.value


def test_select_without_and_with_widget(explorer):
    page = explorer.select(depth="late", model="fine-tuned", feature=7)
    assert "late layer (2) · fine-tuned · feature #7" in page
    explorer.widget()
    explorer.select(task="sentiment", depth="early", model="fine-tuned", feature=2)
    assert explorer._controls["model"].value == "fine-tuned"
    assert explorer.selection.feature == 2
    with pytest.raises(TypeError, match="Unknown selection fields: colour"):
        explorer.select(colour="red")


def test_show_is_static_without_a_frontend(explorer, monkeypatch):
    shown = []
    monkeypatch.setattr("repgeo_utils.explorer.display", lambda obj: shown.append(obj))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not widget_frontend_attached()
    explorer.show()
    assert type(shown[-1]).__name__ == "HTML" and "Static picture" in shown[-1].data
    explorer.show(live=True)
    assert type(shown[-1]).__name__ == "VBox"
    # a kernel a Jupyter server started for a notebook session: live without being asked
    monkeypatch.setenv("JPY_SESSION_NAME", "/notebooks/04_token_visualization.ipynb")
    assert widget_frontend_attached()
    explorer.show()
    assert type(shown[-1]).__name__ == "VBox"
