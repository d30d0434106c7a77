"""The grid-level measures of repgeo_utils.sae.diffing and their figures, on a tiny grid (two
tiny BERTs as the pre-trained and fine-tuned model), plus hand-made tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from repgeo_utils.sae import SAEConfig, evaluate_sae, load_saelens
from repgeo_utils.sae import diffing as sd
from repgeo_utils.sae import grid as sg


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory):
    """A data folder for this module's shared fixtures: they are built before the per-test
    isolation applies, so they must not cache into the repository's data/."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPGEO_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def tiny_grid(module_data_dir, tiny_bert_factory, tmp_path_factory):
    """A one-task SAE grid built by hand from two tiny BERTs of different weights (stand-ins
    for the pre-trained and the fine-tuned model)."""
    from conftest import TINY_WORDS, make_tiny_bert

    from repgeo_utils.activations import extract_activations

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(TINY_WORDS, size=rng.integers(3, 10))) for _ in range(60)]
    labels = np.arange(60) % 2
    task = sg.TaskTexts("toy", texts, labels, ("neg", "pos"), ("test",))
    other = make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-other"), layers=2, hidden=16, seed=1)
    models = {("toy", sg.PRE): tiny_bert_factory(2, 16), ("toy", sg.POST): other}
    acts = {
        k: extract_activations(m, texts, max_length=32, progress=False) for k, m in models.items()
    }
    data = sg.GridData({"toy": task}, models, acts, sg.depth_layers(2), {"toy": 32})
    grid = sg.train_sae_grid(data, SAEConfig(d_in=16, d_sae=24, epochs=2, batch_size=32))
    return grid


@pytest.fixture(scope="module")
def splice_table(tiny_grid):
    return sd.splice_grid(tiny_grid, batch_size=8)


@pytest.fixture(scope="module")
def crosscoder_grid(module_data_dir, tiny_grid):
    config = sd.crosscoder_config(16, sg.GridSettings(d_sae=24, epochs=2), batch_size=32)
    assert (config.d_sae, config.epochs, config.sparsity) == (24, 2, "l1")
    return sd.train_crosscoder_grid(tiny_grid.data, config)


def test_splice_grid_rows_and_the_probe_read_out(tiny_grid, splice_table):
    table = splice_table
    # per depth: the pre-trained model with its SAE; the fine-tuned one with its own and the
    # transferred pre-trained SAE (early and middle share layer 1 in a 2-layer model)
    assert len(table) == 3 * 3
    assert set(table["depth"]) == {"early", "middle", "late"}
    assert table.groupby("model").size().to_dict() == {sg.POST: 6, sg.PRE: 3}
    post = table[table["model"] == sg.POST]
    assert post["transfer"].sum() == 3 and (post.loc[post["transfer"], "sae"] == sg.PRE).all()
    assert not table.loc[table["model"] == sg.PRE, "transfer"].any()
    assert (table["readout"] == table["model"].map(sd.READOUTS)).all()
    for column in ("accuracy_recovered_zero", "kl_recovered_mean", "kl", "kl_zero"):
        assert column in table.columns
    assert (table["kl"] >= -1e-12).all() and (table["kl_recovered_zero"] <= 1 + 1e-9).all()
    # depths at one layer share one splice: identical numbers
    early, middle = (
        table[(table["depth"] == d)].reset_index(drop=True) for d in ("early", "middle")
    )
    assert early["kl"].tolist() == middle["kl"].tolist()
    # the pre-trained model's clean accuracy is its fixed probe's accuracy on pooled features
    data = tiny_grid.data
    held_out = tiny_grid.runs[("toy", "late", sg.PRE)].eval_texts
    weight, bias = sd.fit_grid_probe(data, "toy", held_out)
    pooled = data.activations[("toy", sg.PRE)].pooled(2, "mean")[held_out]
    expected = np.mean((pooled @ weight.T + bias).argmax(1) == data.texts["toy"].labels[held_out])
    pre = table[table["model"] == sg.PRE]
    assert pre["accuracy_clean"].iloc[0] == pytest.approx(expected)


def test_sae_transfer_table(tiny_grid):
    table = sd.sae_transfer_table(tiny_grid)
    assert list(table["depth"]) == ["early", "middle", "late"]
    row = table.iloc[-1]
    pre_run = tiny_grid.runs[("toy", "late", sg.PRE)]
    post_run = tiny_grid.runs[("toy", "late", sg.POST)]
    acts = tiny_grid.data.activations[("toy", sg.POST)]
    x = np.asarray(acts.tokens(2))[np.repeat(post_run.eval_texts, acts.lengths)]
    assert row["fvu_transfer"] == pytest.approx(evaluate_sae(pre_run.sae, x).fvu, rel=1e-6)
    assert row["fvu_lost"] == pytest.approx(row["fvu_transfer"] - post_run.metrics.fvu)
    assert row["fvu_pre_own"] == pre_run.metrics.fvu
    splice = pd.DataFrame(
        {
            "task": ["toy"] * 2, "depth": ["late"] * 2, "model": [sg.POST] * 2,
            "transfer": [False, True], "kl_recovered_zero": [0.9, 0.6],
            "accuracy_recovered_zero": [1.0, 0.5],
        }
    )  # fmt: skip
    with_splice = sd.sae_transfer_table(tiny_grid, splice)
    late = with_splice.set_index("depth").loc["late"]
    assert late["kl_recovered_lost"] == pytest.approx(0.3)
    assert late["accuracy_recovered_lost"] == pytest.approx(0.5)
    assert np.isnan(with_splice.set_index("depth").loc["early", "kl_recovered_zero_own"])


def test_crosscoder_grid_summary_and_matching(tiny_grid, crosscoder_grid):
    cc_grid = crosscoder_grid
    assert set(cc_grid.runs) == {("toy", "early"), ("toy", "middle"), ("toy", "late")}
    # the crosscoders hold out the SAEs' texts
    assert np.array_equal(
        cc_grid.runs[("toy", "late")].eval_texts, tiny_grid.runs[("toy", "late", sg.PRE)].eval_texts
    )
    assert {"FVU pre", "FVU post", "L0"} <= set(cc_grid.metrics_table().columns)
    latents = sd.crosscoder_latents(cc_grid)
    assert len(latents[("toy", "late")]) == 24
    summary = sd.crosscoder_summary(latents, cc_grid)
    bands = ["pre-only", "pre-leaning", "shared", "post-leaning", "post-only", "dead"]
    assert (summary[bands].sum(1) == 24).all()
    matched = sg.match_grid(tiny_grid.runs, tiny_grid.runs, sg.key_pairs(tiny_grid))
    side_by_side = sd.crosscoder_vs_matching(summary, sg.matching_summary(matched))
    assert {"share_kept", "share_with_twin", "matching_trend", "crosscoder_trend", "agree"} <= set(
        side_by_side.columns
    )
    assert len(side_by_side) == 3


def test_crosscoder_vs_matching_trends_by_hand():
    summary = pd.DataFrame(
        {
            "task": ["a", "a", "b", "b"], "depth": ["early", "late"] * 2, "layer": [2, 6] * 2,
            "share_kept": [0.9, 0.5, 0.4, 0.6],
        }
    )  # fmt: skip
    matching = pd.DataFrame(
        {
            "task": ["a", "a", "b", "b"], "depth": ["early", "late"] * 2, "layer": [2, 6] * 2,
            "share_with_twin": [0.8, 0.3, 0.7, 0.2], "median_cosine": [0.9, 0.5, 0.9, 0.4],
        }
    )  # fmt: skip
    out = sd.crosscoder_vs_matching(summary, matching).set_index("task")
    assert out.loc["a", "matching_trend"].tolist() == ["keeps early, replaces late"] * 2
    assert out.loc["a", "agree"].all()
    assert out.loc["b", "crosscoder_trend"].iloc[0] == "replaces early"
    assert not out.loc["b", "agree"].any()


def test_export_grid_saelens(tiny_grid, tmp_path):
    table = sd.export_grid_saelens(tiny_grid, tmp_path)
    assert len(table) == 6
    row = table[(table["depth"] == "late") & (table["model"] == sg.POST)].iloc[0]
    cfg = json.loads((row["folder"] / "cfg.json").read_text())
    meta = cfg["metadata"]
    assert meta["hook_name"] == "hidden_states.2 = encoder.layer.1 output"
    assert (meta["context_size"], meta["prepend_bos"], meta["exclude_special_tokens"]) == (
        32, True, False,
    )  # fmt: skip
    assert meta["task"] == "toy" and meta["model_role"] == sg.POST
    assert meta["model_name"].endswith("fine-tuned on toy")
    assert meta["dataset_path"] == "repgeo:toy/test"
    assert (row["folder"] / "sparsity.safetensors").is_file()
    run = tiny_grid.runs[("toy", "late", sg.POST)]
    x = torch.randn(20, 16)
    torch.testing.assert_close(load_saelens(row["folder"])(x)[0], run.sae(x)[0], atol=1e-5, rtol=0)
    assert sd.module_path(tiny_grid.data.models[("toy", sg.PRE)], 0) == "embeddings"


def test_figures_draw_from_the_tiny_grid(tiny_grid, splice_table, crosscoder_grid):
    import matplotlib.pyplot as plt

    from repgeo_utils import plotting

    fig = plotting.plot_splice_fidelity(splice_table)
    assert len(fig.axes) == 2  # one task: accuracy and KL recovered
    # pre-trained (own), fine-tuned (own), fine-tuned with the pre-trained SAE: 3 solid lines,
    # each over the 2 distinct layers
    solid = [line for line in fig.axes[1].lines if line.get_marker() == "o"]
    assert len(solid) == 3 and all(len(line.get_xdata()) == 2 for line in solid)
    latents = sd.crosscoder_latents(crosscoder_grid)
    fig = plotting.plot_relative_norms(latents)
    assert len(fig.axes) == 3 and "/" in fig.axes[0].get_title()
    summary = sd.crosscoder_summary(latents, crosscoder_grid)
    matched = sg.match_grid(tiny_grid.runs, tiny_grid.runs, sg.key_pairs(tiny_grid))
    side = sd.crosscoder_vs_matching(summary, sg.matching_summary(matched))
    fig = plotting.plot_crosscoder_vs_matching(side)
    assert "agree" in fig.axes[0].get_legend().get_texts()[0].get_text()
    fig = plotting.plot_sae_transfer(sd.sae_transfer_table(tiny_grid, splice_table))
    assert len(fig.axes) == 2
    fig = plotting.plot_sae_transfer(sd.sae_transfer_table(tiny_grid))
    assert len(fig.axes) == 1
    plt.close("all")


def test_notebook_03_closing_text_from_the_tiny_grid(tiny_grid, splice_table, crosscoder_grid):
    """Notebook 03's diffing sections end to end on the tiny grid: the closing sentences and
    findings are built from the real tables (columns and keys as splice_grid,
    crosscoder_vs_matching and sae_transfer_table give them)."""
    from repgeo_utils.report import Findings
    from repgeo_utils.summaries import sae as summary

    verdicts = summary.splice_verdicts(splice_table)
    assert set(verdicts) == {(d, m) for d in ("early", "middle", "late") for m in sg.MODELS}
    own = splice_table[~splice_table["transfer"]]
    late_pre = own[(own["depth"] == "late") & (own["model"] == sg.PRE)].iloc[0]
    expected = summary.stands_in(
        late_pre["accuracy"], late_pre["accuracy_clean"], late_pre["kl_recovered_mean"]
    )
    assert verdicts[("late", sg.PRE)] == expected  # one task: its own verdict
    text = summary.splice_text(splice_table)
    assert f"at the late layer (2) the pre-trained model's SAE {expected}" in text
    assert "of 3 task-layer pairs" in text  # the three depths, transfer rows left out
    latents = sd.crosscoder_latents(crosscoder_grid)
    matched = sg.match_grid(tiny_grid.runs, tiny_grid.runs, sg.key_pairs(tiny_grid))
    side = sd.crosscoder_vs_matching(
        sd.crosscoder_summary(latents, crosscoder_grid), sg.matching_summary(matched)
    )
    text = summary.crosscoder_text(side)
    late = side[side["depth"] == "late"].iloc[0]
    assert (
        f"late (layer 2) {int(late['pre-only'])} / {int(late['shared'])} / "
        f"{int(late['post-only'])}" in text
    )
    assert "in 1 of 1 tasks" in text or "in 0 of 1 tasks" in text
    transfer = sd.sae_transfer_table(tiny_grid, splice_table)
    assert "Transfer loses most at the **" in summary.transfer_text(transfer)
    found = summary.diffing_findings(Findings(summary.NOTEBOOK), splice_table, side, transfer)
    assert found["toy.late.fine-tuned.splice_accuracy"].value == pytest.approx(
        own[(own["depth"] == "late") & (own["model"] == sg.POST)]["accuracy"].iloc[0]
    )
    assert found["toy.crosscoder_vs_matching"].value in ("agree", "disagree")
