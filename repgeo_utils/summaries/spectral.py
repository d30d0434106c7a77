"""Notebook 05: RankMe and alpha-ReQ per layer, pre-trained against fine-tuned (paper 2,
section 2.1, applied to paper 1's fine-tuned encoders)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..report import Findings, direction, pm

NOTEBOOK = "05_spectral_geometry"
PRE, POST = "pre-trained", "fine-tuned"


def _by_layer(table: pd.DataFrame, task: str, model: str) -> pd.DataFrame:
    rows = table[(table["task"] == task) & (table["model"] == model)]
    return rows.set_index("layer").sort_index()


def _direction(change: float, sd: float) -> str:
    """:func:`~repgeo_utils.report.direction`, or "not measured" where the change is NaN (alpha
    of a spectrum too short or too flat for the fit range)."""
    return direction(change, sd) if math.isfinite(change) else "not measured"


def findings(
    main: pd.DataFrame,
    noise: pd.DataFrame,
    *,
    profile: str = "quick",
    parameters: dict | None = None,
) -> Findings:
    """Last-layer RankMe (covariance) and alpha before and after fine-tuning per task, with
    the half-sample spread of the change, and the verdict per task (down / up / no clear
    change at twice the spread)."""
    found = Findings(NOTEBOOK, profile=profile, parameters=dict(parameters or {}))
    for task in main["task"].unique():
        pre, post = _by_layer(main, task, PRE), _by_layer(main, task, POST)
        last = int(pre.index.max())
        for metric in ("rankme_covariance", "alpha"):
            sd = _noise_sd(noise, task, metric)
            change = float(post.loc[last, metric] - pre.loc[last, metric])
            found.number(f"{task}.{metric}.pre", float(pre.loc[last, metric]))
            found.number(f"{task}.{metric}.post", float(post.loc[last, metric]))
            found.number(
                f"{task}.{metric}.change",
                change,
                spread=sd,
                spread_source="sd over random halves of the texts" if sd is not None else "",
            )
            found.verdict(f"{task}.{metric}.direction", _direction(change, sd or 0.0))
    return found


def _noise_sd(noise: pd.DataFrame, task: str, metric: str) -> float | None:
    rows = noise[(noise["task"] == task) & (noise["metric_name"] == metric)]
    if not len(rows):
        return None
    value = float(rows["sd over halves"].iloc[0])
    return value if np.isfinite(value) else None


def summary(
    main: pd.DataFrame,
    by_representation: pd.DataFrame,
    noise: pd.DataFrame,
    top_share: Mapping[str, tuple[int, float, float]],
    *,
    pooling: str = "mean",
    fit_range: tuple[int, int] = (12, 100),
) -> str:
    """The notebook's closing bullets and paragraphs.

    ``main``: ``layer_spectra`` rows of the main pooling with ``task`` and ``model`` columns;
    ``by_representation``: last-layer RankMe (covariance) per task and representation, columns
    ``pre`` and ``post``; ``noise``: the half-sample table (``task``, ``metric_name``,
    ``post - pre (all texts)``, ``sd over halves``); ``top_share``: per task, (number of
    classes - 1, variance share of that many top directions before, after).
    """
    tasks = list(main["task"].unique())
    bullets, kept, low_layers, late_only, z_scores = [], {}, {}, [], []
    for task in tasks:
        pre, post = _by_layer(main, task, PRE), _by_layer(main, task, POST)
        first, last = int(pre.index.min()), int(pre.index.max())
        ratio = post["rankme_covariance"] / pre["rankme_covariance"]
        kept[task] = float(ratio.loc[last])
        low_layers[task] = [int(layer) for layer in ratio.index if ratio[layer] < 0.9]
        late_only.append(all(layer > last / 2 for layer in low_layers[task]))
        parts = []
        for metric, label in (("rankme_covariance", "RankMe (covariance eigenvalues)"),
                              ("rankme_singular", "RankMe (singular values)"),
                              ("alpha", f"alpha (ranks {fit_range[0]}-{fit_range[1]})")):  # fmt: skip
            sd = _noise_sd(noise, task, metric)
            after = float(post.loc[last, metric])
            parts.append(
                f"{label} {pre.loc[last, metric]:.3g} → {pm(after, sd) if sd else f'{after:.3g}'}"
            )
            if sd:
                z_scores.append(abs(after - float(pre.loc[last, metric])) / sd)
        bullets.append(
            f"- **{task}** ({pooling}-pooled), last layer {last}: " + "; ".join(parts)
            + f". RankMe (covariance) at layer {first}: {pre.loc[first, 'rankme_covariance']:.1f} → "
            f"{post.loc[first, 'rankme_covariance']:.1f}. Layers where fine-tuning lowered it by "
            f"more than 10%: {', '.join(map(str, low_layers[task])) or 'none'}."
        )  # fmt: skip
    text = [
        "\n".join(bullets),
        "(± : standard deviation of the change over random halves of the texts, the same halves for both models.)",
        "",
    ]
    lowest, highest = min(kept.values()), max(kept.values())
    compressed = all(k < 0.9 for k in kept.values())
    if compressed and all(late_only):
        verdict = "**Fine-tuning compresses the late layers, and only the late layers.**"
    elif compressed:
        verdict = "**Fine-tuning compresses the last layer**, and some earlier ones too."
    else:
        verdict = "**Fine-tuning does not compress the last layer in every task.**"
    text.append(
        f"{verdict} At the last layer RankMe (covariance) keeps {lowest:.0%}-{highest:.0%} of its "
        "pre-trained value"
        + (
            f"; the largest change is {min(z_scores):.0f}-{max(z_scores):.0f} half-sample standard "
            "deviations, far beyond sampling noise."
            if z_scores and min(z_scores) > 2
            else "."
        )
    )
    singular_less = all(
        _by_layer(main, t, POST)["rankme_singular"].iloc[-1]
        / _by_layer(main, t, PRE)["rankme_singular"].iloc[-1]
        > kept[t]
        for t in tasks
    )
    if singular_less:
        text.append(
            " The singular-value variant falls less in every task: it weighs the many small "
            "directions, which survive."
        )
    alpha_dirs = {}
    for t in tasks:
        sd = _noise_sd(noise, t, "alpha") or 0.0
        pre, post = _by_layer(main, t, PRE), _by_layer(main, t, POST)
        alpha_dirs[t] = _direction(float(post["alpha"].iloc[-1] - pre["alpha"].iloc[-1]), sd)
    text.append(
        " At the last layer alpha goes "
        + ", ".join(
            f"{d} in {t}" if d != "not measured" else f"unmeasured in {t} (no fit)"
            for t, d in alpha_dirs.items()
        )  # fmt: skip
        + " (a rise means a faster-decaying, more compressed spectrum)."
    )
    same_story = all(
        by_representation.loc[(t, how), "post"] < by_representation.loc[(t, how), "pre"]
        for t in tasks
        for how in by_representation.loc[t].index
    )
    text.append(
        " The [CLS] token and every token as a sample tell the same story at the last layer, so "
        "the answer does not hinge on the pooling."
        if same_story
        else " Not every representation agrees at the last layer (see the table above): the "
        "answer depends on the pooling."
    )
    shares = "; ".join(
        f"{t}: the top {k} directions carry {before:.0%} → {after:.0%} of the variance"
        for t, (k, before, after) in top_share.items()
    )
    grew = all(after > 2 * before for _, before, after in top_share.values())
    text.append(
        "\n\nAfter fine-tuning, about as many directions as the task has classes minus one carry "
        f"most of the variance in every task ({shares}): the class structure the classifier "
        "needs (the 'neural collapse' of Papyan et al., 2020, here on held-out texts)."
        if grew and all(after > 0.5 for _, _, after in top_share.values())
        else f"\n\nThe top classes-minus-one directions of the last layer: {shares}."
    )
    lower_both = [
        t
        for t in tasks
        if (p := _by_layer(main, t, POST))["rankme_covariance"].iloc[-1]
        < p["rankme_covariance"].iloc[-2]
        and p["alpha"].iloc[-1] < p["alpha"].iloc[-2]
    ]
    if lower_both:
        text.append(
            f" RankMe and alpha read different parts of the spectrum: in {', '.join(lower_both)} "
            "the fine-tuned last layer has both a lower RankMe and a lower alpha than the layer "
            "below it, because the classes took over the top of the spectrum while its tail "
            f"(ranks {fit_range[0]}-{fit_range[1]}) decays more slowly."
        )
    rankme_down = [t for t in tasks if kept[t] < 0.9]
    text.append(
        "\n\nIn paper 2's terms, fine-tuning a classifier is **compression-seeking** "
        f"({len(rankme_down)} of {len(tasks)} tasks), like RLVR and unlike SFT and DPO, which paper "
        "2 found entropy-seeking: an objective with a handful of classes rewards discarding the "
        "directions that do not separate them."
        if rankme_down
        else "\n\nIn paper 2's terms, fine-tuning is not compression-seeking here."
    )
    rises = [
        t
        for t in tasks
        if (p := _by_layer(main, t, PRE))["rankme_covariance"].iloc[-1]
        > p["rankme_covariance"].iloc[-2]
    ]
    if rises:
        text.append(
            " The pre-trained encoder's own last layer is unusual: its RankMe rises again after "
            f"the layer below ({', '.join(rises)}), because all-MiniLM-L6-v2 was trained as a "
            "sentence encoder on that layer's mean."
        )
    text.append(
        " With fewer texts than dimensions every RankMe here is biased low (see the isotropic "
        "example), so compare values only at equal sample size, as the tables do."
    )
    return "\n".join(text[:3]) + "".join(text[3:])
