"""The task x depth x model SAE grid of notebooks 03-04, on tiny BERTs and hand-made numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from repgeo_utils.sae import LatentStatistics, SAEConfig, SparseAutoencoder, TrainHistory
from repgeo_utils.sae import grid as sg


def test_depth_layers_known_answers():
    assert sg.depth_layers(12) == {"early": 3, "middle": 6, "late": 12}  # the paper's 3, 6, 12
    assert sg.depth_layers(6) == {"early": 2, "middle": 3, "late": 6}  # MiniLM-L6
    assert sg.depth_layers(8) == {"early": 2, "middle": 4, "late": 8}
    assert sg.depth_layers(2) == {"early": 1, "middle": 1, "late": 2}
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            sg.depth_layers(bad)


def test_class_preference_hand_computed():
    labels = np.array([0, 0, 1, 1, 2, 2])
    # class 1 texts average 3, the rest average (1 + 1 + 0 + 2) / 4 = 1
    assert sg.class_preference([1, 1, 3, 3, 0, 2], labels, ["a", "b", "c"]) == ("b", 3.0)
    assert sg.class_preference([0, 0, 5, 5, 0, 0], labels, ["a", "b", "c"]) == ("b", np.inf)
    name, ratio = sg.class_preference(np.zeros(6), labels, ["a", "b", "c"])
    assert name == "-" and np.isnan(ratio)
    with pytest.raises(ValueError, match="5 values but 6 labels"):
        sg.class_preference(np.ones(5), labels, ["a", "b", "c"])


def test_summarize_tokens_counts_and_keeps_first_seen_order():
    tokens = ["great", "[CLS]", "good", "great", "good", "fun", "great"]
    assert sg.summarize_tokens(tokens) == "great ×3, good ×2, [CLS], fun"
    assert sg.summarize_tokens(tokens, n=1) == "great ×3"
    assert sg.summarize_tokens([]) == ""


def test_top_features_from_statistics_ties_by_index():
    variance = torch.tensor([0.5, 2.0, 0.5, 3.0], dtype=torch.float64)
    stats = LatentStatistics(4, torch.ones(4), torch.zeros(4), variance)
    assert sg.top_features(stats, 3) == [3, 1, 0]
    with pytest.raises(ValueError, match="between 1 and 4"):
        sg.top_features(stats, 5)


def test_fvu_curve_and_mean_squared_deviation_hand_computed():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert sg.mean_squared_deviation(x) == pytest.approx(2.5)  # (1 + 1 + 4 + 4) / 4
    raw = TrainHistory(step_mse=[0.25, 0.125], input_scale=1.0)
    np.testing.assert_allclose(sg.fvu_curve(raw, msd=2.5, d_in=2), [0.2, 0.1])
    # scaled training: inputs times s, MSE times s^2, so the same FVU
    scaled = TrainHistory(step_mse=[0.25 * 4, 0.125 * 4], input_scale=2.0)
    np.testing.assert_allclose(sg.fvu_curve(scaled, msd=2.5, d_in=2), [0.2, 0.1])


class _Run:
    def __init__(self, sae, layer=1):
        self.sae, self.layer = sae, layer


def test_match_grid_recovers_a_planted_permutation_and_respects_dead_latents():
    a = SparseAutoencoder(SAEConfig(d_in=16, d_sae=6))
    a.reset_parameters(torch.Generator().manual_seed(0))
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    b = SparseAutoencoder(SAEConfig(d_in=16, d_sae=6))
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[perm] * 3.0)  # scale does not matter, direction does
    key_a, key_b = ("t", "late", "pre-trained"), ("t", "late", "fine-tuned")
    table = sg.match_grid({key_a: _Run(a)}, {key_b: _Run(b)}, [(key_a, key_b)])
    assert table["twin"].tolist() == perm.tolist()
    np.testing.assert_allclose(table["cosine"], 1.0)
    summary = sg.matching_summary(table)
    assert summary.loc[0, ["features", "share_with_twin"]].tolist() == [6, 1.0]
    # latents that never fire take no part
    fires = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.float64)
    stats = LatentStatistics(10, fires, torch.zeros(6), torch.zeros(6))
    table = sg.match_grid(
        {key_a: _Run(a)}, {key_b: _Run(b)}, [(key_a, key_b)], stats_a={key_a: stats}
    )
    # a's feature 2 is dead, so b's copy of it (b's feature 1) is left without a twin
    assert table["twin"].tolist() == [4, -1, 0, 5, 1, 3]
    assert table.loc[1, "cosine"] == -1 and (table["cosine"].drop(1) > 0.999).all()


def test_matching_summary_threshold():
    table = pd.DataFrame(
        {
            "task": ["x"] * 4,
            "depth": ["late"] * 4,
            "layer": [6] * 4,
            "cosine": [0.9, 0.71, 0.69, 0.1],
            "nearest_cosine": [0.9, 0.8, 0.7, 0.3],
        }
    )
    row = sg.matching_summary(table, threshold=0.7).iloc[0]
    assert row["share_with_twin"] == 0.5 and row["median_nearest"] == pytest.approx(0.75)


@pytest.fixture
def tiny_grid_data(tiny_bert_factory):
    """A GridData built by hand from two tiny BERTs (stand-ins for pre-trained / fine-tuned)."""
    from conftest import TINY_WORDS

    from repgeo_utils.activations import extract_activations

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(TINY_WORDS, size=rng.integers(3, 10))) for _ in range(60)]
    labels = np.arange(60) % 2
    task = sg.TaskTexts("toy", texts, labels, ("neg", "pos"), ("test",))
    models = {("toy", sg.PRE): tiny_bert_factory(2, 16), ("toy", sg.POST): tiny_bert_factory(2, 16)}
    acts = {
        k: extract_activations(m, texts, max_length=32, progress=False) for k, m in models.items()
    }
    return sg.GridData({"toy": task}, models, acts, sg.depth_layers(2), {"toy": 32})


def test_train_sae_grid_metrics_statistics_and_cache(tiny_grid_data):
    config = SAEConfig(d_in=16, d_sae=24, epochs=2, batch_size=32)
    grid = sg.train_sae_grid(tiny_grid_data, config)
    assert len(grid.runs) == 6  # 1 task x 3 depths x 2 models
    assert grid[("toy", "late", sg.POST)].layer == 2
    table = grid.metrics_table()
    assert list(table.columns[:4]) == ["task", "depth", "layer", "model"]
    assert table["layer"].tolist() == [1, 1, 1, 1, 2, 2]
    assert ((table["FVU"] > 0) & (table["FVU"] < 1.5)).all()
    again = sg.train_sae_grid(tiny_grid_data, config)  # cache hits: same entries
    assert [r.path for r in again.runs.values()] == [r.path for r in grid.runs.values()]

    stats = sg.grid_statistics(grid)
    acts = tiny_grid_data.activations[("toy", sg.PRE)]
    assert stats[("toy", "early", sg.PRE)].n_tokens == acts.n_tokens
    no_special = sg.grid_statistics(grid, exclude_special=True)
    assert no_special[("toy", "early", sg.PRE)].n_tokens == acts.n_tokens - acts.special_mask.sum()

    pairs = sg.key_pairs(grid)
    assert pairs[0] == (("toy", "early", sg.PRE), ("toy", "early", sg.POST))
    assert sg.key_pairs(grid, sg.PRE, sg.PRE)[2] == (("toy", "late", sg.PRE),) * 2
    matched = sg.match_grid(grid.runs, grid.runs, pairs, stats_a=stats, stats_b=stats)
    assert set(matched["depth"]) == {"early", "middle", "late"}
    assert matched["cosine"].between(-1, 1.000001).all()


def test_describe_features_and_sentence_activations(tiny_grid_data):
    config = SAEConfig(d_in=16, d_sae=24, epochs=2, batch_size=32)
    grid = sg.train_sae_grid(tiny_grid_data, config, depths=("late",), models=(sg.POST,))
    run = grid[("toy", "late", sg.POST)]
    acts = tiny_grid_data.activations[("toy", sg.POST)]
    task = tiny_grid_data.texts["toy"]
    stats = sg.grid_statistics(grid)[("toy", "late", sg.POST)]
    features = sg.top_features(stats, 2)
    table = sg.describe_features(run.sae, acts, 2, features, task.labels, task.label_names)
    assert table["feature"].tolist() == features
    # the variance column is the latent statistics' variance (same tokens, same definition)
    np.testing.assert_allclose(table["variance"], stats.variance[features].numpy(), rtol=1e-5)
    assert table["prefers class"].isin(["neg", "pos", "-"]).all()
    # the strongest token of the first feature, found again in a window around it
    first = table.iloc[0]
    tokens, values = sg.context_strip(
        acts, 2, run.sae, features[0], first["top text"], first["top position"], context=2
    )
    assert len(tokens) == len(values) <= 5 and values.max() == pytest.approx(first["max"])
    text_tokens = acts.tokenizer().convert_ids_to_tokens(
        acts.token_ids[acts.text_rows(first["top text"])].tolist()
    )
    assert tokens[min(2, first["top position"])] == text_tokens[first["top position"]]
    peak = sg.latent_max(run.sae, np.asarray(acts.tokens(2)))
    np.testing.assert_allclose(table["max"], peak[features], rtol=1e-6)
    assert (peak[stats.firing_frequency.numpy() == 0] == 0).all()
    assert (table["on [CLS]/[SEP]"].between(0, 1) | table["on [CLS]/[SEP]"].isna()).all()

    from repgeo_utils.activations import extract_activations

    sentences = ["the movie was great", "the plot was terrible"]
    model = tiny_grid_data.models[("toy", sg.POST)]
    sent = extract_activations(model, sentences, max_length=32, progress=False)
    strips = sg.sentence_activations(sent, 2, run.sae, features, sentences)
    assert strips[0].tokens == ["[CLS]", "the", "movie", "was", "great", "[SEP]"]
    assert strips[1].values.shape == (2, 6)
    expected = run.sae.encode(torch.from_numpy(np.asarray(sent.tokens(2))[sent.text_rows(1)]))
    np.testing.assert_allclose(strips[1].values, expected[:, features].T.numpy(), rtol=1e-5)


def test_compare_settings_and_sequence_means(tiny_grid_data):
    acts = tiny_grid_data.activations[("toy", sg.PRE)]
    fast = SAEConfig(d_in=16, d_sae=24, epochs=2, batch_size=32)
    small_batch = SAEConfig(d_in=16, d_sae=24, epochs=2, batch_size=8, scale_inputs=False)
    result = sg.compare_settings(acts, 2, {"fast": fast, "small batch": small_batch})
    assert result.table["setting"].tolist() == ["fast", "small batch"]
    steps = result.table.set_index("setting")["steps"]
    assert steps["small batch"] > 3 * steps["fast"]
    for epochs, fvu in result.curves.values():
        assert epochs[-1] == pytest.approx(2.0, rel=0.05) and np.isfinite(fvu).all()

    table, runs = sg.sequence_mean_comparison(acts, 2, fast)
    assert table["trained on"].tolist() == [
        "tokens",
        "sequence means, same epochs",
        "sequence means, same steps",
    ]
    rows = table.set_index("trained on")
    assert rows.loc["sequence means, same epochs", "training examples"] == 54  # 60 texts - 10%
    assert rows.loc["sequence means, same epochs", "epochs"] == 2
    same_steps = rows.loc["sequence means, same steps", "steps"]
    assert abs(same_steps - rows.loc["tokens", "steps"]) <= 2
    assert runs["sequence means, same steps"].sae.config.train_on == "sequence_means"


def test_task_texts_fills_a_token_budget_split_by_split():
    from repgeo_utils.data import load_profile_task
    from repgeo_utils.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    chosen = sg.task_texts(
        "bbc-news", splits=("validation", "test"), max_tokens=2500, tokenizer=tokenizer,
        max_length=64,
    )  # fmt: skip
    dataset = load_profile_task("bbc-news", "quick")
    validation = dataset["validation"].to_dict()
    test = dataset["test"].to_dict()
    lengths = [
        len(ids) for ids in tokenizer(chosen.texts, truncation=True, max_length=64)["input_ids"]
    ]
    # every validation headline, then test headlines until the budget is just reached
    assert set(validation["text"]) <= set(chosen.texts)
    assert set(chosen.texts) <= set(validation["text"]) | set(test["text"])
    assert 2500 <= sum(lengths) < 2500 + max(lengths)  # stops once the budget is reached
    label_of = dict(
        zip(validation["text"] + test["text"], validation["label"] + test["label"], strict=True)
    )
    assert [label_of[t] for t in chosen.texts] == chosen.labels.tolist()
    assert chosen.label_names == ("business", "entertainment", "politics", "sport", "tech")
    # shuffled: the classes are mixed, not in split order
    assert chosen.labels[:20].tolist() != sorted(chosen.labels[:20].tolist())
    everything = sg.task_texts("bbc-news", splits=("validation", "test"))
    assert len(everything.texts) == len(validation["text"]) + len(test["text"])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        sg.task_texts("bbc-news", max_tokens=100)
    with pytest.raises(ValueError, match="Unknown splits"):
        sg.task_texts("bbc-news", splits=("dev",))


def test_notebook_figures_draw_from_the_grid(tiny_grid_data):
    import matplotlib.pyplot as plt

    from repgeo_utils import plotting

    config = SAEConfig(d_in=16, d_sae=24, epochs=2, batch_size=32)
    grid = sg.train_sae_grid(tiny_grid_data, config)
    fig = plotting.plot_sae_training_grid({k: r.history for k, r in grid.runs.items()}, smooth=2)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 6  # 1 task: 3 depths x 2 models
    stats = sg.grid_statistics(grid)
    fig = plotting.plot_latent_density_grid({k: s.firing_frequency for k, s in stats.items()})
    assert len(fig.axes) == 3  # 1 task x 3 depths
    assert "dead" in fig.axes[0].get_legend().get_texts()[0].get_text()
    table = sg.match_grid(grid.runs, grid.runs, sg.key_pairs(grid), stats_a=stats, stats_b=stats)
    control = sg.match_grid(grid.runs, grid.runs, sg.key_pairs(grid, sg.PRE, sg.PRE))
    fig = plotting.plot_feature_matching(table, control, threshold=0.7)
    dashed = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    np.testing.assert_allclose(dashed[0].get_ydata(), 1.0)  # an SAE matches itself exactly
    hatched = [p for p in fig.axes[1].patches if p.get_hatch()]
    assert len(hatched) == len(set(table["layer"]))  # one control box per layer (1 task)
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("control" in t for t in legend) and any("threshold 0.7" in t for t in legend)
    fig = plotting.plot_feature_matching(table, threshold=0.7)  # no control: no hatched boxes
    assert not [p for p in fig.axes[1].patches if p.get_hatch()]
    acts = tiny_grid_data.activations[("toy", sg.PRE)]
    small = SAEConfig(d_in=16, d_sae=24, epochs=1, batch_size=16)
    result = sg.compare_settings(acts, 2, {"a": config, "b": small})
    fig = plotting.plot_sae_settings(result.curves, result.l0)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
    rows = [("#1", ["[CLS]", "good", "[SEP]"], np.array([0.0, 0.5, 2.0]))]
    fig = plotting.plot_token_strip_pairs(rows, rows * 2)
    assert len(fig.axes) == 3  # two panels and the colour bar
    assert sum(len(ax.patches) for ax in fig.axes[:2]) == 9
    with pytest.raises(ValueError, match="Nothing to draw"):
        plotting.plot_token_strip_pairs([], [])
    plt.close("all")


def test_grid_settings_name_one_grid_for_notebooks_03_and_04():
    quick = sg.grid_settings("quick")
    assert quick is sg.GRID_SETTINGS["quick"]
    assert quick.splits == ("validation", "test", "train") and quick.max_tokens == 15_000
    config = quick.sae_config(384)
    assert config == SAEConfig.preset("l1-sparse", d_in=384, d_sae=1024, epochs=10, seed=0)
    assert sg.grid_settings("quick", epochs=3).epochs == 3
    assert sg.grid_settings(quick) is quick
    assert sg.GridSettings(splits=["test"]).splits == ("test",)  # hashable, like the others
    with pytest.raises(ValueError, match="Known grids: paper, quick"):
        sg.grid_settings("huge")
    with pytest.raises(ValueError, match="splits"):
        sg.GridSettings(splits=())


def test_old_import_path_still_works_and_warns():
    from conftest import import_afresh_warns

    old = import_afresh_warns("repgeo_utils.sae_experiments", r"repgeo_utils\.sae\.grid")
    assert old.GridData is sg.GridData and old.sae_grid is sg.sae_grid
    from repgeo_utils.sae_experiments import depth_layers

    assert depth_layers is sg.depth_layers
