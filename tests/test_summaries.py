"""Notebook summaries: every sentence follows the numbers it is given (flip the numbers, the
sentence flips), and the findings record what the sentences quote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repgeo_utils.config import FinetuneSettings
from repgeo_utils.finetune import EvalReport, FinetuneResult
from repgeo_utils.summaries import features, finetuning, sae, similarity, spectral, toy


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
    unfitted = late.copy()  # alpha is NaN where the spectrum is shorter than the fit range
    unfitted["alpha"] = float("nan")
    found = spectral.findings(unfitted, _noise(tasks, 0.5))
    assert found["a.alpha.direction"].value == "not measured"
    text = spectral.summary(unfitted, reps, _noise(tasks, 0.3), share)
    assert "alpha goes unmeasured in a (no fit), unmeasured in b (no fit)" in text
    assert found["a.rankme_covariance.direction"].value == "down"


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
        "accuracy -1.0 to +0.0 points against the clean model)" in text
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


# --- notebook 08: post-training ---------------------------------------------------------------


def _changes(per_seed):
    """posttrain_changes.csv rows from {(variant, stage, measure): [(start, end), ...]}."""
    rows = []
    for (variant, stage, measure), pairs in per_seed.items():
        for seed, (start, end) in enumerate(pairs):
            rows.append(
                {"stage": stage, "measure": measure, "start": start, "end": end,
                 "change": end - start, "relative": (end - start) / abs(start) if start else np.nan,
                 "direction": "", "variant": variant, "seed": seed}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_seed_verdicts_by_hand():
    from repgeo_utils.posttrain import summarise_changes
    from repgeo_utils.summaries import posttraining as pt

    changes = _changes(
        {
            # +10, +11, +12 on 100: mean 11, sd 1 -> up, as the paper (SFT RankMe up)
            ("no KL", "SFT", "rankme_covariance_probe"): [(100, 110), (100, 111), (100, 112)],
            # -1.0, -1.1, -1.2% : small but consistent -> down, against DPO's RankMe up
            ("no KL", "DPO", "rankme_covariance_probe"): [(100, 99.0), (100, 98.9), (100, 98.8)],
            # +5, -5, +3: mean 1, sd 5.3 -> within the seed spread
            ("no KL", "RL (GRPO)", "rankme_covariance_probe"): [(100, 105), (100, 95), (100, 103)],
            ("no KL", "RL (GRPO)", "alpha_probe"): [(np.nan, np.nan)] * 3,
        }
    )
    v = pt.seed_verdicts(summarise_changes(changes), changes).set_index(["stage", "measure"])
    sft = v.loc[("SFT", "RankMe, probe texts")]
    assert sft["verdict"] == "direction as in the paper" and sft["ours"] == "up"
    assert sft["change"] == "11.0 ± 1.0" and sft["relative"] == "11.0 ± 1.0%"
    assert sft["signal_to_spread"] == pytest.approx(11.0)
    dpo = v.loc[("DPO", "RankMe, probe texts")]
    assert dpo["verdict"] == "opposite to the paper" and dpo["ours"] == "down"
    assert dpo["inside 2% in every seed"] and dpo["same sign in all seeds"]
    rl = v.loc[("RL (GRPO)", "RankMe, probe texts")]
    assert rl["verdict"] == "change within seed spread" and not rl["same sign in all seeds"]
    assert v.loc[("RL (GRPO)", "alpha, probe texts"), "verdict"] == "not measured"
    side = pt.kl_side_by_side(pt.seed_verdicts(summarise_changes(changes), changes))
    assert list(side.columns) == ["no KL: change", "no KL: verdict"]
    with pytest.raises(ValueError, match="no rows for stage 'PPO'"):
        pt.kl_side_by_side(pt.seed_verdicts(summarise_changes(changes), changes), "PPO")


def test_band_verdicts_and_paper_directions():
    from repgeo_utils.summaries import posttraining as pt

    summary = pd.DataFrame(
        {
            "stage": ["SFT", "SFT", "RL (GRPO)", "DPO"],
            "measure": ["rankme_covariance_probe", "alpha_prompts", "id_accuracy", "alpha_probe"],
            "start": [10.0, 4.0, 0.4, 2.0],
            "end": [11.0, 4.4, 0.5, 1.99],
            "change": [1.0, 0.4, 0.1, -0.01],
            "relative": [0.1, 0.1, 0.25, -0.005],
            "direction": ["up", "up", "up", "no clear change"],
        }
    )
    out = pt.band_verdicts(summary)
    assert list(out["verdict"]) == [
        "direction as in the paper",  # SFT RankMe up
        "opposite to the paper",  # SFT alpha: paper down (implied)
        "up (paper: none stated)",
        "within the 2% band",
    ]
    assert list(out["paper"])[:2] == ["up", "down (implied by Fig 6A)"]
    assert out["measure"].iloc[0] == "RankMe, probe texts"
    assert pt.paper_direction("RL (GRPO)", "RankMe, ID prompts") == ("down", "stated")
    nan_row = summary.iloc[:1].assign(start=np.nan, end=np.nan, change=np.nan, relative=np.nan)
    assert pt.band_verdicts(nan_row)["verdict"].iloc[0] == "not measured"
    with pytest.raises(ValueError, match="stage must be one of .* got 'PPO'"):
        pt.paper_direction("PPO", "rankme_covariance_probe")
    with pytest.raises(ValueError, match=r"lacks columns \['direction'\]"):
        pt.band_verdicts(summary.drop(columns="direction"))


def _bench(values):
    """A posttrain_seeds.json record: {(stage, measure): [relative per seed]}."""
    runs = []
    for seed in range(3):
        changes = [
            {"stage": s, "measure": m, "start": 1.0, "end": 1.0 + rel[seed], "relative": rel[seed]}
            for (s, m), rel in values.items()
        ]
        runs.append({"label": f"seed {seed}", "seed": seed, "stage_changes": changes})
    runs.append({"label": "seed 0, RL lr 0.0001", "seed": 0, "stage_changes": []})  # left out
    return {"runs": runs}


def test_benchmark_seed_table_and_text_by_hand():
    from repgeo_utils.summaries import posttraining as pt

    bench = pt.benchmark_seed_table(
        _bench(
            {
                ("SFT", "RankMe, probe texts"): [0.10, 0.08, 0.09],  # robust, as the paper
                ("DPO", "alpha, probe texts"): [-0.017, -0.014, -0.020],  # hidden by the band
                ("RL (GRPO)", "RankMe, probe texts"): [-0.017, -0.022, 0.027],  # flips
            }
        )
    )
    assert [c for c in bench.columns if c.startswith("seed ")] == ["seed 0", "seed 1", "seed 2"]
    assert list(bench["direction"]) == ["up", "down", "no clear change"]
    assert list(bench["verdict"]) == [
        "direction as in the paper",
        "direction as in the paper",
        "change within seed spread",
    ]
    assert pt.robust_measures(bench) == {("SFT", "RankMe, probe texts"): "up"}
    assert list(pt.hidden_by_band(bench)["measure"]) == ["alpha, probe texts"]
    text = pt.seed_runs_text(bench)
    assert "every seed: SFT RankMe, probe texts (+10.0% / +8.0% / +9.0%)." in text
    assert "'no clear change': DPO alpha, probe texts (-1.7% / -1.4% / -2.0%)" in text
    assert "Not the same sign in every seed: RL (GRPO) RankMe, probe texts" in text
    # nothing robust, nothing hidden: the sentences say so or disappear
    flat = pt.benchmark_seed_table(_bench({("DPO", "RankMe, ID prompts"): [0.01, -0.01, 0.0]}))
    text = pt.seed_runs_text(flat)
    assert "no change is outside the 2% band in every seed" in text and "hides" not in text
    with pytest.raises(ValueError, match="at least two seeds"):
        pt.benchmark_seed_table({"runs": [{"label": "seed 0", "seed": 0, "stage_changes": []}]})


def _curves(after_dpo, after_rl, k_max=4):
    """pass@k rows for two seeds: pass@k = value * k / k_max, plus the random reference."""
    rows = []
    for seed in (0, 1):
        for checkpoint, (p1, pk) in (
            ("after DPO", after_dpo[seed]),
            ("after RL (GRPO)", after_rl[seed]),
        ):
            for k in range(1, k_max + 1):
                value = p1 + (pk - p1) * (k - 1) / (k_max - 1)
                rows.append(
                    {
                        "k": k,
                        "pass_at_k": value,
                        "checkpoint": checkpoint,
                        "variant": "no KL",
                        "seed": seed,
                    }
                )
    for k in range(1, k_max + 1):
        rows.append(
            {
                "k": k,
                "pass_at_k": 1 - 0.9**k,
                "checkpoint": "random guess",
                "variant": np.nan,
                "seed": np.nan,
            }
        )
    return pd.DataFrame(rows)  # fmt: skip


def test_pass_at_k_narrowing_by_hand():
    from repgeo_utils.summaries import posttraining as pt

    curves = _curves([(0.4, 0.9), (0.42, 0.92)], [(0.5, 0.8), (0.53, 0.81)])
    ref = pt.random_reference(curves)
    assert ref.loc[2] == pytest.approx(0.19) and list(ref.index) == [1, 2, 3, 4]
    over = pt.pass_at_k_over_seeds(curves, [1])
    assert over.loc[over.checkpoint == "after DPO", "mean"].iloc[0] == pytest.approx(0.41)
    row = pt.narrowing(curves).iloc[0]
    assert row["pass@1 direction"] == "up" and row["pass@K direction"] == "down"
    assert row["verdict"].startswith("RL narrows")
    # RL gains at k = 1 and at k = 4 too: no crossing
    row = pt.narrowing(_curves([(0.4, 0.9), (0.42, 0.92)], [(0.5, 0.95), (0.53, 0.96)])).iloc[0]
    assert row["verdict"] == "RL wins at k = 1 without a clear loss at the largest k"
    # changes of opposite sign in the two seeds: nothing beyond the spread
    row = pt.narrowing(_curves([(0.4, 0.9), (0.42, 0.92)], [(0.5, 0.8), (0.32, 1.0)])).iloc[0]
    assert row["verdict"] == "no clear change of pass@1 or pass@K beyond the seed spread"
    with pytest.raises(ValueError, match="no 'random guess' rows"):
        pt.random_reference(curves[curves.checkpoint != "random guess"])


def test_spearman_exact_and_critical_rho_by_hand():
    from repgeo_utils.summaries import posttraining as pt

    # n = 3, perfect order: 2 of the 3! orderings reach |rho| = 1 -> p = 1/3 (scipy's t says 0)
    rho, p, how = pt.spearman([1, 2, 3], [10, 20, 30])
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 3) and how.startswith("exact")
    # n = 4, perfect order: 2 of 24 -> p = 1/12
    assert pt.spearman([1, 2, 3, 4], [4, 3, 2, 1])[1] == pytest.approx(1 / 12)
    # ties: y's ranks are 1.5, 1.5, 3.5, 3.5; of the 24 orderings, the 8 that keep both low
    # ranks together at one end reach rho = 4 / sqrt(5 * 4) -> p = 1/3
    rho, p, _ = pt.spearman([1, 2, 3, 4], [1, 1, 2, 2])
    assert rho == pytest.approx(4 / 20**0.5) and p == pytest.approx(1 / 3)
    # the usual tables' two-sided 5% critical values: n = 5 needs 1.0, n = 7 0.786
    assert pt.critical_rho(3) is None and pt.critical_rho(4) is None
    assert pt.critical_rho(5) == pytest.approx(1.0)
    assert pt.critical_rho(7) == pytest.approx(0.7857, abs=1e-3)
    assert pt.spearman(list(range(12)), list(range(12)))[2] == "t approximation"
    with pytest.raises(ValueError, match="at least 3 points, got 2"):
        pt.spearman([1, 2], [1, 2])


def _sft_table(id_after, ood_after):
    n = len(id_after)
    return pd.DataFrame(
        {
            "step": [2**i for i in range(n)],
            "phase": ["entropy-seeking"] * (n // 2) + ["compression-seeking"] * (n - n // 2),
            "rankme_covariance": np.linspace(20, 10, n),
            "alpha": [np.nan] * n,
            "id_nll": id_after, "ood_nll": ood_after,
            "id_accuracy": [0.5] * n, "ood_accuracy": np.linspace(0.1, 0.2, n),
        }
    )  # fmt: skip


def test_checkpoint_sft_verdicts_follow_the_numbers():
    from repgeo_utils.summaries import posttraining as pt

    table = _sft_table([7.0, 6, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6, 7])  # the paper's Fig 6B
    corr = pt.checkpoint_sft_correlations(table)
    row = corr[(corr.outcome == "id_nll") & (corr.base == "step")].iloc[0]
    assert row["rho"] == pytest.approx(-1.0) and row["p"] == pytest.approx(2 / 5040)
    notes = corr.set_index(["outcome", "base"])["note"]
    assert notes[("id_nll", "alpha")] == "only 0 bases with both measured"
    assert notes[("id_accuracy", "step")] == "constant over the bases"
    verdict = pt.fig6b_verdicts(corr)
    assert verdict["id_nll"].startswith("as in the paper (rho = -1.00")
    assert verdict["ood_nll"].startswith("as in the paper (rho = +1.00")
    assert "with 7 bases p < 0.05 needs |rho| >= 0.79" in verdict["id_nll"]
    flipped = pt.fig6b_verdicts(
        pt.checkpoint_sft_correlations(_sft_table([1.0, 2, 3, 4, 5, 6, 7], [7.0, 6, 5, 4, 3, 2, 1]))
    )
    assert flipped["id_nll"].startswith("opposite to the paper")
    noisy = pt.fig6b_verdicts(
        pt.checkpoint_sft_correlations(
            _sft_table([3.0, 1, 4, 1.5, 5, 9, 2], [2.0, 7, 1, 8, 2.8, 1.8, 2.9])
        )
    )
    assert noisy["id_nll"].startswith("no significant trend")
    few = pt.fig6b_verdicts(pt.checkpoint_sft_correlations(_sft_table([3.0, 2, 1], [1.0, 2, 3])))
    assert (
        "no significant trend" in few["id_nll"]
        and "with 3 bases no ordering reaches p < 0.05" in few["id_nll"]
    )


def test_recorded_text_and_findings_follow_the_numbers():
    from repgeo_utils.posttrain import summarise_changes
    from repgeo_utils.summaries import posttraining as pt

    changes = _changes(
        {
            ("no KL", "SFT", "rankme_covariance_probe"): [(100, 110), (100, 111), (100, 112)],
            ("no KL", "DPO", "rankme_covariance_probe"): [(100, 99.0), (100, 98.9), (100, 98.8)],
            ("no KL", "RL (GRPO)", "rankme_covariance_probe"): [(100, 105), (100, 95), (100, 103)],
        }
    )
    verdicts = pt.seed_verdicts(summarise_changes(changes), changes)
    curves = _curves([(0.4, 0.9), (0.42, 0.92)], [(0.5, 0.8), (0.53, 0.81)])
    narrow = pt.narrowing(curves)
    table = _sft_table([7.0, 6, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6, 7])
    corr = pt.checkpoint_sft_correlations(table)
    text = pt.recorded_text(
        verdicts, narrow, pt.random_reference(curves), corr, table, label="`cmd`"
    )
    assert (
        "- **SFT** (over 3 seeds, mean ± sd): RankMe, probe texts 11.0 ± 1.0%: direction as in the paper."
        in text
    )
    assert (
        "- **DPO** (over 3 seeds, mean ± sd): RankMe, probe texts -1.10 ± 0.10%: opposite to the paper."
        in text
    )
    assert "RL (GRPO), no KL" in text and "change within seed spread" in text
    assert (
        "inside the 2% band in every seed (a single run would call these 'no clear change'): DPO RankMe, probe texts (no KL)"
        in text
    )
    assert "A uniform guess passes 0.34 of the prompts at k = 4, well below 1" in text
    assert "SFT from 7 base checkpoints" in text and "With n = 7 bases" in text
    found = pt.findings(recorded=verdicts, narrow=narrow, corr=corr)
    assert found["standard.no_KL.sft.rankme_covariance_probe.change"].spread == pytest.approx(1.0)
    assert (
        str(found["standard.no_KL.dpo.rankme_covariance_probe.verdict"]) == "opposite to the paper"
    )
    assert str(found["standard.checkpoint_sft.ood_nll_vs_step"]).startswith("as in the paper")
    # a recording without post-training seeds says so and still reads the SFT-from-checkpoints part
    skipped = pt.recorded_text(
        None, None, None, corr, table, label="`cmd`", skipped="no seeds given"
    )
    assert "**Post-training over seeds**: not in this recording (no seeds given)." in skipped
    assert "SFT from 7 base checkpoints" in skipped and "pass@k" not in skipped


# --- notebook 07: the toy model ------------------------------------------------------------


@pytest.mark.parametrize(
    ("falls", "verdict"),
    [([0.1, 0.08, 0.06], "rises then falls"), ([0.0, 0.01, 0.049], "no fall"),
     ([0.1, 0.02, 0.06], "rises then falls on 2 of 3 seeds")],
)  # fmt: skip
def test_toy_seed_verdict_by_hand(falls, verdict):
    assert toy.seed_verdict(falls, 0.05) == verdict
    assert toy.reproduction(verdict) in (
        "reproduced",
        "not reproduced",
        "reproduced on some seeds only",
    )


def test_toy_small_verdicts_by_hand():
    assert toy.reproduction("no fall") == "not reproduced"
    assert toy.reproduction("rises then falls") == "reproduced"
    assert toy.clusters_verdict(0.2, 1.3) == "frequent classes first, rare classes later"
    assert toy.clusters_verdict(0.6, 1.3) == "rare classes move out with the frequent ones"
    assert toy.clusters_verdict(0.3, 0.5) == "rare classes move out with the frequent ones"
    assert (
        toy.dominance_verdict({"lowest": 1.36, "final": 1.42})
        == "the dominant direction pulls ahead again"
    )
    assert (
        toy.dominance_verdict({"lowest": 1.07, "final": 1.07}) == "the directions keep evening out"
    )
    ahead, even = {"lowest": 1.36, "final": 1.42}, {"lowest": 1.46, "final": 1.47}
    assert (
        toy.dominance_reading({"soft": ahead, "hard": even})
        == "here that holds for soft, not for hard"
    )
    assert toy.dominance_reading({"soft": even}) == "in no condition here does it"
    assert toy.dominance_reading({"soft": ahead}) == "the reading holds in every condition here"
    assert toy.chaotic(958, 2000) and not toy.chaotic(0, 2000) and not toy.chaotic(200, 2000)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        toy.chaotic(1, 0)
    with pytest.raises(ValueError, match="falls is empty"):
        toy.seed_verdict([], 0.05)


def _toy_tables(paper_falls, ours_falls, *, control_falls=False, balanced_falls=True):
    paper, ours = toy.PAPER, toy.OURS

    def shape(cond, fall, peak_step):
        return [
            {
                "condition": cond,
                "variant": v,
                "collapse": 1.0,
                "collapse step": 30,
                "peak": 6.0,
                "peak step": peak_step,
                "final": 6.0 * (1 - fall),
                "fall": fall,
                "rises then falls": fall >= 0.05,
                "final loss": 0.001 if cond == paper else 1.27,
            }
            for v in ("covariance", "singular")
        ]

    shapes = pd.DataFrame(
        shape(paper, paper_falls[0], 2000 if paper_falls[0] == 0 else 150)
        + shape(ours, ours_falls[0], 160)
        + shape("uniform classes", 0.1 if control_falls else 0.0, 2000)
    )
    seeds = pd.DataFrame(
        [
            {"condition": c, "seed": s, "variant": v, "fall": f, "rises then falls": f >= 0.05}
            for c, falls in ((paper, paper_falls), (ours, ours_falls))
            for s, f in enumerate(falls)
            for v in ("covariance", "singular")
        ]
    )
    inits = pd.DataFrame(
        [
            {
                "condition": ours,
                "init": "small",
                "fall": 0.117,
                "rises then falls": True,
                "gap at start": 7.0,
                "gap at end": 0.008,
                "W vs U sigma": 0.005,
            },
            {
                "condition": ours,
                "init": "balanced",
                "fall": 0.119 if balanced_falls else 0.01,
                "rises then falls": balanced_falls,
                "gap at start": 1e-16,
                "gap at end": 0.008,
                "W vs U sigma": 0.005,
            },
        ]
    )
    spread = pd.DataFrame(
        [
            {"condition": ours, "step": s, "frequent": 1.0, "rare": r, "ratio": r}
            for s, r in ((36, 0.58), (165, 0.29), (2000, 1.31))
        ]
    )
    moments = {"collapse": 36, "peak": 165, "end": 2000}
    dominance = {ours: {"at start": 2.47, "lowest": 1.36, "lowest step": 987, "final": 1.42}}
    step_size = pd.DataFrame(
        [
            {
                "learning rate": 12.0,
                "rose on": 0,
                "steps": 2000,
                "final loss": 1.2732,
                "fall": 0.117,
            },
            {
                "learning rate": 50.0,
                "rose on": 958,
                "steps": 2000,
                "final loss": 1.3326,
                "fall": 0.076,
            },
        ]
    )
    return shapes, seeds, inits, spread, moments, dominance, step_size  # fmt: skip


def test_toy_summary_follows_the_numbers():
    tables = _toy_tables([0.0, 0.0, 0.0], [0.117, 0.084, 0.106])
    text = toy.summary(*tables, min_fall=0.05)
    assert "**The paper's setting, hard labels: not reproduced.**" in text
    assert "rises to 6.00 at the last step" in text
    assert "the fall after the peak is 0.0% (verdict: no fall" in text
    assert "**Our addition, soft targets: rises then falls.**" in text
    assert "over 3 seeds the fall is 10.2 ± 1.7% (covariance)" in text
    assert "Only this condition shows the paper's three phases here." in text
    assert "uniform classes: no fall (fall 0.0%)" in text and "None of them falls" in text
    assert "0.58 at the collapse, 0.29 at the peak, 1.31 at the end (frequent classes first" in text
    assert "1.42 at the end (the dominant direction pulls ahead again)" in text
    assert "fall 11.7% → 11.9%. It changes no verdict." in text
    assert "Ours starts far from balanced (gap at least 7) but ends within 0.008" in text
    assert "rose on 958 of 2000 steps" in text and "That run is chaotic" in text
    # the paper's setting falls, a control falls, the balanced start changes a verdict, no chaos
    shapes, seeds, inits, spread, moments, dominance, step_size = _toy_tables(
        [0.08, 0.07, 0.09], [0.117, 0.02, 0.106], control_falls=True, balanced_falls=False)  # fmt: skip
    step_size.loc[1, "rose on"] = 3
    text = toy.summary(shapes, seeds, inits, spread, moments, dominance, step_size, min_fall=0.05)
    assert "**The paper's setting, hard labels: reproduced.**" in text
    assert "ending at 5.52" in text
    assert "**Our addition, soft targets: rises then falls on 2 of 3 seeds.**" in text
    assert "Only this condition" not in text
    assert "Not every control behaves as in the paper's Figs 12-13." in text
    assert "It changes a verdict." in text
    assert "Both follow the gradient flow closely." in text and "chaotic" not in text


def test_toy_findings_by_hand():
    shapes, seeds, inits, *_ = _toy_tables([0.0, 0.0, 0.0], [0.117, 0.084, 0.106])
    found = toy.findings(shapes, seeds, inits, min_fall=0.05, chaotic_run=True)
    assert found["paper.reproduction"].value == "not reproduced"
    assert found["paper.fall_pct"].value == 0.0 and found["paper.fall_pct"].spread is None
    assert found["ours.fall_pct"].value == pytest.approx(10.233, abs=1e-3)
    assert found["ours.fall_pct"].spread == pytest.approx(1.6803, abs=1e-4)  # sqrt(5.6467 / 2)
    assert found["ours.fall_pct"].spread_source == "sd over seeds 0-2"
    assert found["ours.verdict"].value == "rises then falls"
    assert found["control.uniform classes"].value == "no fall"
    assert found[f"init.{toy.OURS}.balanced"].value == "rises then falls"
    assert found["large_step.chaotic"].value == "chaotic"
    found = toy.findings(*_toy_tables([0.08, 0.07, 0.09], [0.1, 0.1, 0.1])[:3], min_fall=0.05,
                         chaotic_run=False)  # fmt: skip
    assert found["paper.reproduction"].value == "reproduced"
    assert found["large_step.chaotic"].value == "gradient-flow regime"


def test_quick_run_text_says_whether_the_live_run_agrees_with_the_seeds():
    from repgeo_utils.summaries import posttraining as pt

    rows = []
    for stage in ("SFT", "DPO", "RL (GRPO)"):
        for measure in (
            "RankMe, probe texts",
            "alpha, ID prompts",
            "ID answer NLL",
            "OOD answer NLL",
        ):
            rows.append({"stage": stage, "measure": measure, "start": 10.0, "end": 10.05,
                         "change": 0.05, "relative": 0.005, "direction": "no clear change"})  # fmt: skip
    live = pd.DataFrame(rows)
    sft = (live["stage"] == "SFT") & live["measure"].isin(
        ["RankMe, probe texts", "alpha, ID prompts"]
    )
    live.loc[sft, ["end", "change", "relative", "direction"]] = [8.0, -2.0, -0.2, "down"]
    verdicts = pt.band_verdicts(live)
    pass_table = pd.DataFrame(
        {"after SFT": [0.3, 0.6], "after DPO": [0.3, 0.6], "after RL (GRPO)": [0.4, 0.5]},
        index=pd.Index([1, 2], name="k"),
    )
    solved = pd.DataFrame({"solved 0/2": [5, 5, 8], "solved 2/2": [1, 1, 4]})
    robust = {("SFT", "RankMe, probe texts"): "down", ("SFT", "alpha, ID prompts"): "up"}
    text = pt.quick_run_text(verdicts, pass_table, solved, n_samples=2, ood_accuracy_max=0.0,
                             n_checkpoints=5, ood_nll_lowest=(10, 3.0), dpo_margin=0.5,
                             robust=robust)  # fmt: skip
    sft_line = text.splitlines()[0]
    assert "RankMe, probe texts 10.00 → 8.00 (-20.0%)" in sft_line
    rankme, alpha = sft_line.split("; ")[:2]
    assert rankme.endswith(", as in every benchmark seed")  # the seeds also went down
    assert "although every benchmark seed went up" in alpha  # the live run went down
    assert "benchmark seed" not in text.splitlines()[1]  # DPO: nothing robust there


def test_verdict_lines_by_hand():
    from repgeo_utils.summaries import posttraining as pt

    live = pd.DataFrame({
        "stage": ["SFT", "RL (GRPO)"], "measure": ["ID answer NLL", "alpha, probe texts"],
        "relative": [-0.9312, float("nan")], "verdict": ["direction as in the paper", "n/a verdict"],
    })  # fmt: skip
    assert pt.verdict_lines(live, [("SFT", "ID answer NLL")]) == [
        "      SFT | ID answer NLL        | -93.1% | direction as in the paper"
    ]
    seeds = {("RL (GRPO)", "alpha, probe texts"): "down"}
    assert pt.verdict_lines(live, list(seeds), seeds) == [
        "RL (GRPO) | alpha, probe texts   | n/a | n/a verdict | seeds: down in all three"
    ]
    with pytest.raises(KeyError, match="DPO"):
        pt.verdict_lines(live, [("DPO", "ID answer NLL")])
