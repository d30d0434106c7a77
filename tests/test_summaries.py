"""Notebook summaries: every sentence follows the numbers it is given (flip the numbers, the
sentence flips), and the findings record what the sentences quote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repgeo_utils.config import FinetuneSettings
from repgeo_utils.finetune import EvalReport, FinetuneResult
from repgeo_utils.summaries import features, finetuning, sae, similarity, spectral


def _result(task, y_true, pre_pred, post_pred, names):
    return FinetuneResult(
        model="m", task=task, seed=0, settings=FinetuneSettings(), checkpoint=None,
        pre=EvalReport.from_predictions(y_true, pre_pred, names),
        post=EvalReport.from_predictions(y_true, post_pred, names),
        history=pd.DataFrame(), train_seconds=1.0, train_tokens=1,
    )  # fmt: skip


def _task(task, n, post_correct, names=("neg", "pos"), skew=0.6, rng=None):
    rng = rng or np.random.default_rng(0)
    k = len(names)
    y = np.array([0] * int(n * skew) + list(rng.integers(1, k, n - int(n * skew))))
    pre = np.zeros(n, dtype=int)  # the untrained head says class 0 for everything
    post = y.copy()
    wrong = rng.permutation(n)[: n - post_correct]
    post[wrong] = (y[wrong] + 1) % k
    return _result(task, y, pre, post, list(names))


def test_binomial_standard_error_by_hand():
    assert finetuning.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert finetuning.binomial_se(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        finetuning.binomial_se(0.5, 0)


STANDS = {"bin": "imdb", "three": "spotify", "topic": "news"}


def test_finetuning_summary_follows_the_numbers():
    results = {
        "bin": _task("bin", 300, 270),
        "three": _task("three", 300, 210, names=("neg", "neu", "pos")),
        "topic": _task("topic", 200, 186, names=("a", "b", "c", "d", "e")),
    }
    text = finetuning.summary(results, STANDS)
    assert "lifts every task above its untrained-head baseline" in text
    assert (
        "The multi-class sentiment task (three) is the hardest of the three, as in the paper."
        in text
    )
    assert "100% of its test predictions are `neg`, a class that is 60% of the test texts" in text
    assert "0.60 → 0.900 ± 0.017 (± binomial standard error on 300 test texts)" in text
    # the multi-class task is no longer the hardest, and one task barely learns
    results["three"] = _task("three", 300, 285, names=("neg", "neu", "pos"))
    results["bin"] = _task("bin", 300, 185)
    text = finetuning.summary(results, STANDS)
    assert "Unlike the paper, the hardest task here is bin" in text
    assert "does not clearly lift bin above its untrained-head baseline" in text
    found = finetuning.findings(results)
    assert found["every_task_learned"].value == "no"
    assert found["bin.post_accuracy"].spread == pytest.approx(
        finetuning.binomial_se(185 / 300, 300)
    )


def _sim(values_by_task):
    rows = []
    for task, per_measure in values_by_task.items():
        for measure, values in per_measure.items():
            rows += [
                {"task": task, "layer": i, "measure": measure, "value": v}
                for i, v in enumerate(values)
            ]
    return pd.DataFrame(rows)


FALLING = {
    "cosine_of_means": [0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.05],
    "mean_token_cosine": [1.0, 0.99, 0.97, 0.9, 0.8, 0.6, 0.25],
    "linear_cka": [1.0, 0.99, 0.98, 0.85, 0.65, 0.3, 0.2],
}


def test_similarity_summary_follows_the_numbers():
    sim = _sim(
        {"topic": FALLING, "bin": {m: [min(1, v + 0.1) for v in vs] for m, vs in FALLING.items()}}
    )
    text = similarity.summary(sim, {"topic": "news", "bin": "imdb"})
    assert "every measure falls with depth, layer by layer, for every task" in text
    assert "the task that moves the last layer most is the topic task (topic)" in text
    assert "On topic the cosine of means at the last layer is 0.05" in text
    assert "linear CKA is already 0.30-0.40 while the per-token cosine is 0.60-0.70" in text
    assert "Offline there is one pre-trained model size" in text
    rising = {**FALLING, "linear_cka": [1.0, 0.99, 0.98, 0.85, 0.65, 0.9, 0.2]}
    text = similarity.summary(_sim({"topic": rising}), {"topic": "news"})
    assert "except linear_cka on topic" in text
    assert "linear CKA is not below the per-token cosine for every task" in text
    found = similarity.findings(_sim({"topic": rising}))
    assert found["topic.linear_cka.layer6"].value == pytest.approx(0.2)
    assert found["falls_with_depth"].value == "yes"  # first to last still falls


def _spectra(tasks, post_scale):
    rows = []
    for t in tasks:
        for layer in range(7):
            pre = {"rankme_covariance": 80.0, "rankme_singular": 200.0, "alpha": 1.0}
            factor = post_scale(layer)
            post = {"rankme_covariance": 80.0 * factor, "rankme_singular": 200.0 * (1 + factor) / 2,
                    "alpha": 1.0 + (1 - factor)}  # fmt: skip
            rows += [{"task": t, "model": "pre-trained", "layer": layer, **pre},
                     {"task": t, "model": "fine-tuned", "layer": layer, **post}]  # fmt: skip
    return pd.DataFrame(rows)


def _noise(tasks, sd):
    return pd.DataFrame([{"task": t, "metric_name": m, "post - pre (all texts)": 0.0, "sd over halves": sd}
                         for t in tasks for m in ("rankme_covariance", "rankme_singular", "alpha")])  # fmt: skip


def test_spectral_summary_follows_the_numbers():
    tasks = ["a", "b"]
    late = _spectra(tasks, lambda layer: 1.0 if layer < 4 else 0.1)
    reps = pd.DataFrame({"pre": [80.0] * 4, "post": [8.0] * 4},
                        index=pd.MultiIndex.from_product([tasks, ["mean", "cls"]]))  # fmt: skip
    share = {"a": (1, 0.1, 0.8), "b": (4, 0.2, 0.9)}
    text = spectral.summary(late, reps, _noise(tasks, 0.3), share)
    assert "**Fine-tuning compresses the late layers, and only the late layers.**" in text
    assert "keeps 10%-10% of its pre-trained value" in text
    assert "alpha goes up in a, up in b" in text
    assert "a: the top 1 directions carry 10% → 80% of the variance" in text
    assert "does not hinge on the pooling" in text
    everywhere = _spectra(tasks, lambda layer: 0.5)
    text = spectral.summary(everywhere, reps, _noise(tasks, 0.5), {"a": (1, 0.1, 0.15)})
    assert "**Fine-tuning compresses the last layer**, and some earlier ones too." in text
    assert "The top classes-minus-one directions of the last layer: a: the top 1" in text
    found = spectral.findings(late, _noise(tasks, 0.5))
    assert found["a.rankme_covariance.direction"].value == "down"
    assert (
        found["a.alpha.change"].value == pytest.approx(0.9)
        and found["a.alpha.change"].spread == 0.5
    )
    found = spectral.findings(late, _noise(tasks, 10.0))
    assert found["a.rankme_covariance.direction"].value == "down"  # -72 beats 2 x 10
    assert found["a.alpha.direction"].value == "no clear change"  # 0.9 does not beat 2 x 10


@pytest.mark.parametrize(
    ("count", "total", "word"),
    [(6, 9, "most"), (5, 9, "some"), (3, 9, "few"), (0, 9, "few"), (9, 9, "most")],
)
def test_share_word_by_hand(count, total, word):
    assert features.share_word(count, total) == word


def test_sentence_verdicts_by_hand():
    table = pd.DataFrame([
        {"task": "t", "model": "fine-tuned", "feature": 7, "prefers class": "pos", "s1": 0.0, "s2": 0.4, "s3": 0.02, "s4": 0.3},
        {"task": "t", "model": "fine-tuned", "feature": 8, "prefers class": "neg", "s1": 0.2, "s2": 0.3, "s3": 0.0, "s4": 0.0},
        {"task": "t", "model": "pre-trained", "feature": 9, "prefers class": "neg", "s1": 0.05, "s2": 0.0, "s3": 0.0, "s4": 0.0},
    ])  # fmt: skip
    v = features.sentence_verdicts(table, {"t": ["neg", "pos", "neg", "pos"]}, fires_at=0.1)
    assert v["fires on"].tolist() == ["s2, s4", "s1, s2", "none"]
    assert v["only its class"].tolist() == [True, False, False]
    assert v["all of its class"].tolist() == [True, False, False]
    assert v["silent"].tolist() == [False, False, True]


def _condensed(late_post_selective):
    rows = []
    for depth in ("early", "late"):
        for model in ("pre-trained", "fine-tuned"):
            sel = late_post_selective if (depth, model) == ("late", "fine-tuned") else 1
            rows.append({"depth": depth, "layer": 2 if depth == "early" else 6, "model": model,
                         "class_selective": sel, "median_fires_on": 0.02, "median_class_ratio": 1.5})  # fmt: skip
    return pd.DataFrame(rows).set_index(["depth", "layer", "model"])


def test_features_summary_follows_the_numbers():
    counts = pd.DataFrame({"all tokens (paper)": [7, 7, 0, 5], "ordinary tokens": [0, 0, 0, 0]},
                          index=pd.MultiIndex.from_tuples([("early", "fine-tuned"), ("early", "pre-trained"),
                                                           ("late", "fine-tuned"), ("late", "pre-trained")]))  # fmt: skip
    empty = pd.DataFrame(columns=["task", "model"])
    args = dict(n_per_row=9, class_ratio=2.0, fires_at=0.1, rank_over_special=False)
    text = features.summary(_condensed(8), counts, empty, {"early": 2, "late": 6}, **args)
    assert "The **last layer of the fine-tuned models** is different in kind: 8 of its 9" in text
    assert "most top features of the early layer(s) are [CLS]/[SEP] detectors" in text
    text = features.summary(_condensed(4), counts, empty, {"early": 2, "late": 6}, **args)
    assert "does not turn most of its top features class-selective (4 of 9" in text
    assert (
        features.findings(_condensed(8), counts, n_per_row=9)[
            "late_layer_turns_class_selective"
        ].value
        == "yes"
    )


@pytest.mark.parametrize(
    ("mse", "trend"),
    [([1.0, 0.9], "falling"), ([1.0, 0.998], "flat"), ([1.0, 1.02], "rising"), ([1.0], "flat")],
)
def test_curve_trend_by_hand(mse, trend):
    assert sae.curve_trend(mse) == trend


@pytest.mark.parametrize(
    ("ft", "control", "word"),
    [(0.46, 0.48, "keeps"), (0.04, 0.22, "replaces"), (0.30, 0.42, "changes part")],
)
def test_keeps_or_replaces_by_hand(ft, control, word):
    assert sae.keeps_or_replaces(ft, control) == word


def _sae_tables(late_share):
    metrics = pd.DataFrame([
        {"task": "t", "depth": d, "model": m, "FVU": 0.3 if m == "pre-trained" else 0.2, "L0": 20.0, "dead": 300 if (d, m) == ("late", "fine-tuned") else 1}
        for d in ("early", "late") for m in ("pre-trained", "fine-tuned")
    ])  # fmt: skip
    matching = pd.DataFrame([
        {"task": "t", "depth": "early", "layer": 2, "fine-tuned: share with twin": 0.46, "pre-trained (control): share": 0.48, "fine-tuned vs same-seed pre-trained: share": 0.85},
        {"task": "t", "depth": "late", "layer": 6, "fine-tuned: share with twin": late_share, "pre-trained (control): share": 0.22, "fine-tuned vs same-seed pre-trained: share": 0.05},
    ])  # fmt: skip
    comparison = pd.DataFrame([
        {"steps": 8480, "FVU": 0.19, "L0": 206.0, "dense": 1023},
        {"steps": 530, "FVU": 0.38, "L0": 361.0, "dense": 1020},
        {"steps": 530, "FVU": 0.13, "L0": 139.5, "dense": 986},
        {"steps": 530, "FVU": 0.27, "L0": 21.5, "dense": 10},
        {"steps": 530, "FVU": 0.21, "L0": 32.0, "dense": 11},
    ])  # fmt: skip
    means = pd.DataFrame([
        {"trained on": "tokens", "FVU on tokens": 0.27, "L0 on tokens": 21.5, "FVU on means": 1.01, "L0 on means": 0.19},
        {"trained on": "sequence means, same epochs", "FVU on tokens": 0.66, "L0 on tokens": 363.0, "FVU on means": 0.61, "L0 on means": 71.5},
        {"trained on": "sequence means, same steps", "FVU on tokens": 1.90, "L0 on tokens": 370.0, "FVU on means": 0.43, "L0 on means": 76.5},
    ])  # fmt: skip
    histories = {("t", "early", "pre-trained"): [1.0, 0.9], ("t", "late", "fine-tuned"): [1.0, 1.0]}
    dead_all = {("t", "late", "fine-tuned"): 179}
    return metrics, matching, comparison, means, histories, dead_all


def test_sae_summary_follows_the_numbers():
    text = sae.summary(*_sae_tables(0.04), d_sae=1024, case="t, pre-trained, layer 2")
    assert "at the early layer the fine-tuned SAE **keeps** (t 46% (control 48%))" in text
    assert "at the late layer the fine-tuned SAE **replaces**" in text
    assert (
        "300 of 1024 latents of the fine-tuned last-layer SAE never fire on the held-out tokens (179 never fire on any"
        in text
    )
    assert "1 of 2 training curves are still falling" in text
    assert "but is not sparse: 206 latents fire on a token and 1023 of 1024 are dense" in text
    assert (
        "sequence means, same steps is worse than predicting each token by the mean (FVU above 1)"
        in text
    )
    assert "the same-seed shares are higher at every layer below the last" in text
    text = sae.summary(*_sae_tables(0.14), d_sae=1024, case="c")
    assert "at the late layer the fine-tuned SAE **changes part**" in text
    found = sae.findings(*_sae_tables(0.04)[:2])
    assert found["early.features"].value == "keeps" and found["late.features"].value == "replaces"


@pytest.mark.parametrize(
    "accuracy, clean, kl, word",
    [
        (0.90, 0.91, 0.95, "stands in"),
        (0.85, 0.91, 0.95, "stands in partly"),  # accuracy 6 points below the clean model
        (0.91, 0.91, 0.60, "stands in partly"),
        (0.91, 0.91, 0.40, "does not stand in"),
        (0.91, 0.91, float("nan"), "does not stand in"),
    ],
)
def test_stands_in_by_hand(accuracy, clean, kl, word):
    assert sae.stands_in(accuracy, clean, kl) == word


def _splice_table():
    """Two tasks, two depths; the fine-tuned classifier with its own and the transferred SAE."""
    rows = []
    own = {  # (task, depth, model): accuracy, clean, KL recovered vs mean
        ("a", "early", PRE): (0.80, 0.80, 0.97), ("a", "early", POST): (0.90, 0.90, 0.99),
        ("b", "early", PRE): (0.70, 0.71, 0.93), ("b", "early", POST): (0.88, 0.90, 0.92),
        ("a", "late", PRE): (0.60, 0.80, 0.40), ("a", "late", POST): (0.85, 0.90, 0.80),
        ("b", "late", PRE): (0.65, 0.71, 0.45), ("b", "late", POST): (0.80, 0.90, 0.70),
    }  # fmt: skip
    for (task, depth, model), (acc, clean, kl) in own.items():
        layer = {"early": 2, "late": 6}[depth]
        rows.append(dict(task=task, depth=depth, layer=layer, model=model, sae=model,
                         transfer=False, accuracy=acc, accuracy_clean=clean,
                         kl_recovered_mean=kl, kl_recovered_zero=min(1.0, kl + 0.02)))  # fmt: skip
        if model == POST:  # a transfer row that must not count
            rows.append(dict(rows[-1], sae=PRE, transfer=True, accuracy=0.1, kl_recovered_mean=0.0))
    return pd.DataFrame(rows)


PRE, POST = "pre-trained", "fine-tuned"


def test_splice_text_and_verdicts_by_hand():
    table = _splice_table()
    verdicts = sae.splice_verdicts(table)
    assert verdicts[("early", PRE)] == "stands in"
    # b's fine-tuned early SAE: KL 0.92 and 2 points below clean -> stands in (tie-free majority)
    assert verdicts[("early", POST)] == "stands in"
    assert verdicts[("late", PRE)] == "does not stand in"
    assert verdicts[("late", POST)] == "stands in partly"
    text = sae.splice_text(table)
    assert (
        "at the early layer (2) the pre-trained model's SAE stands in (KL recovered 0.93-0.97, "
        "accuracy 0.0-1.0 points below the clean model)" in text
    )
    assert "and the fine-tuned model's SAE stands in partly (KL recovered 0.70-0.80" in text
    # post - pre: a early +0.02, b early -0.01 (same), a late +0.40, b late +0.25 (more)
    assert "more KL at 2, as much (within 0.05) at 2 and less at 0 of 4" in text
    # mean post - pre: early +0.005 (as faithful), late +0.325 (more faithful)
    assert "**as faithful at the early layer, more faithful at the late layer** after" in text
    lower = table.copy()
    lower.loc[(lower["model"] == POST) & ~lower["transfer"], "kl_recovered_mean"] = 0.1
    assert "**less faithful at the early layer, less faithful at the late layer**" in (
        sae.splice_text(lower)
    )


def _side_table(b_crosscoder_trend="keeps early, replaces late"):
    keep = "keeps early, replaces late"
    return pd.DataFrame(
        {
            "task": ["a", "a", "b", "b"], "depth": ["early", "late"] * 2, "layer": [2, 6] * 2,
            "pre-only": [1, 5, 0, 7], "shared": [800, 500, 700, 400], "post-only": [2, 60, 3, 40],
            "pre-only really shared": [0, 1, 0, 2], "post-only really shared": [1, 10, 0, 5],
            "share_kept": [0.99, 0.85, 0.99, 0.7], "share_with_twin": [0.5, 0.1, 0.45, 0.12],
            "matching_trend": [keep] * 4,
            "crosscoder_trend": [keep, keep, b_crosscoder_trend, b_crosscoder_trend],
            "agree": [True, True, b_crosscoder_trend == keep, b_crosscoder_trend == keep],
        }
    )  # fmt: skip


def test_crosscoder_text_by_hand():
    text = sae.crosscoder_text(_side_table())
    assert "early (layer 2) 1 / 1500 / 5, 1 of the 6 model-specific really shared" in text
    assert "late (layer 6) 12 / 900 / 100, 18 of the 112 model-specific really shared" in text
    assert "agree on the direction from the first layer to the last in 2 of 2 tasks." in text
    assert "**both say early layers keep and late layers replace, in every task**" in text
    text = sae.crosscoder_text(_side_table("replaces early"))
    assert "in 1 of 2 tasks; they disagree on b (matching: keeps early, replaces late; " in text
    assert "**both say early layers keep and late layers replace in 1 of 2 tasks (a)**" in text


def test_transfer_text_by_hand():
    table = pd.DataFrame(
        {
            "task": ["a", "a", "b", "b"], "depth": ["early", "late"] * 2, "layer": [2, 6] * 2,
            "fvu_post_own": [0.25, 0.30, 0.27, 0.35], "fvu_transfer": [0.27, 0.60, 0.29, 0.45],
            "fvu_lost": [0.02, 0.30, 0.02, 0.10], "kl_recovered_lost": [0.01, 0.3, 0.01, np.nan],
        }
    )  # fmt: skip
    text = sae.transfer_text(table)
    assert "early (layer 2) FVU 0.25-0.27 → 0.27-0.29, KL recovered lost 0.01" in text
    assert "late (layer 6) FVU 0.30-0.35 → 0.45-0.60, KL recovered lost 0.30" in text
    assert "Transfer loses most at the **late** layer (FVU up by 0.20 on average" in text


def test_paper_conventions_text_by_hand():
    table = pd.DataFrame(
        {
            "setting": ["paper-text row", "paper-code row"], "FVU": [0.19, 0.05],
            "L0": [206.0, 600.0], "dense": [1023, 1024],
        }
    )  # fmt: skip
    text = sae.paper_conventions_text(
        table, text="paper-text row", code="paper-code row", d_sae=1024
    )
    assert (
        "(summed over latents): FVU 0.19 at L0 206 with 1023 of 1024 latents dense (not sparse)"
        in text
    )
    assert "1024 times weaker): FVU 0.05 at L0 600" in text
    assert "**Neither convention of the paper gives a sparse SAE here.**" in text
    both = table.assign(L0=[50.0, 90.0], dense=[10, 500])  # 500 of 1024 dense: still sparse
    assert (
        sae.paper_conventions_verdict(
            both, text="paper-text row", code="paper-code row", d_sae=1024
        )
        == "both conventions of the paper give a sparse SAE here"
    )
    sparse = table.assign(L0=[50.0, 600.0], dense=[10, 1024])
    assert "**Only the text's convention gives" in sae.paper_conventions_text(
        sparse, text="paper-text row", code="paper-code row", d_sae=1024
    )
    with pytest.raises(KeyError, match="paper-code"):
        sae.paper_conventions_text(table, text="paper-text row", code="paper-code", d_sae=1024)


def test_diffing_findings_by_hand():
    from repgeo_utils.report import Findings

    found = sae.diffing_findings(
        Findings(sae.NOTEBOOK),
        _splice_table(),
        _side_table("replaces early"),
        pd.DataFrame({"task": ["a"], "depth": ["late"], "fvu_lost": [0.3]}),
    )
    assert found["a.late.fine-tuned.kl_recovered_mean"].value == pytest.approx(0.80)
    assert found["a.late.fine-tuned.splice_accuracy"].value == pytest.approx(0.85)
    assert found["late.splice.pre-trained"].value == "does not stand in"
    assert found["b.late.crosscoder.post-only"].value == 40
    assert found["a.crosscoder_vs_matching"].value == "agree"
    assert found["b.crosscoder_vs_matching"].value == "disagree"
    assert found["a.late.transfer_fvu_lost"].value == pytest.approx(0.3)
