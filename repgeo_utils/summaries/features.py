"""Notebook 04: what the top-variance SAE features respond to (paper 1, section 3.2.4,
Table 1, Figs 3-5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..report import Findings

NOTEBOOK = "04_token_visualization"
PRE, POST = "pre-trained", "fine-tuned"


def share_word(count: int, total: int) -> str:
    """``"most"`` (at least two thirds), ``"few"`` (at most one third) or ``"some"``."""
    if total < 1:
        raise ValueError(f"total must be at least 1, got {total}")
    if not 0 <= count <= total:
        raise ValueError(f"count must be in [0, {total}], got {count}")
    if 3 * count >= 2 * total:
        return "most"
    if 3 * count <= total:
        return "few"
    return "some"


def sentence_verdicts(
    sentence_table: pd.DataFrame,
    sentence_classes: Mapping[str, Sequence[str]],
    *,
    fires_at: float = 0.1,
) -> pd.DataFrame:
    """Per feature of ``sentence_table`` (columns task, model, feature, prefers class, and one
    column per test sentence ``s1..sN`` holding its mean activation as a fraction of the
    feature's maximum in the data): which sentences it fires on (value >= ``fires_at``), and
    whether they are exactly the sentences of the class it prefers."""
    rows = []
    for _, r in sentence_table.iterrows():
        classes = list(sentence_classes.get(r["task"], []))
        values = [float(r[f"s{i + 1}"]) for i in range(len(classes))]
        fires = [i + 1 for i, v in enumerate(values) if v >= fires_at]
        own = [i + 1 for i, c in enumerate(classes) if c == r["prefers class"]]
        rows.append(
            {
                "task": r["task"],
                "model": r["model"],
                "feature": r["feature"],
                "prefers class": r["prefers class"],
                "fires on": ", ".join(f"s{i}" for i in fires) or "none",
                "class sentences": ", ".join(f"s{i}" for i in own) or "none",
                "only its class": bool(fires) and set(fires) <= set(own),
                "all of its class": bool(own) and set(own) <= set(fires),
                "silent": not fires,
            }
        )
    return pd.DataFrame(rows)


def findings(
    condensed: pd.DataFrame,
    counts: pd.DataFrame,
    *,
    n_per_row: int,
    profile: str = "quick",
    parameters: dict | None = None,
) -> Findings:
    """Per layer and model: class-selective top features and special-token features (ranked
    over all tokens), and the verdict on whether the late layer turns class-selective."""
    found = Findings(NOTEBOOK, profile=profile, parameters=dict(parameters or {}))
    c = condensed.reset_index().set_index(["depth", "model"])
    for (depth, model), row in c.iterrows():
        found.number(f"{depth}.{model}.class_selective", int(row["class_selective"]))
        found.number(f"{depth}.{model}.median_class_ratio", float(row["median_class_ratio"]))
        found.number(
            f"{depth}.{model}.special_features_all_tokens", int(counts.loc[(depth, model)].iloc[0])
        )
    late_pre, late_post = c.loc[("late", PRE)], c.loc[("late", POST)]
    found.verdict(
        "late_layer_turns_class_selective",
        "yes"
        if share_word(int(late_post["class_selective"]), n_per_row) == "most"
        and late_post["class_selective"] > late_pre["class_selective"]
        else "no",
    )
    return found


def summary(
    condensed: pd.DataFrame,
    counts: pd.DataFrame,
    verdicts: pd.DataFrame,
    layers: Mapping[str, int],
    *,
    n_per_row: int,
    class_ratio: float,
    fires_at: float,
    rank_over_special: bool,
) -> str:
    """The closing bullets and paragraphs, from the condensed table (per depth and model:
    class_selective, median_fires_on, median_class_ratio), the special-token counts and the
    per-feature sentence verdicts of :func:`sentence_verdicts`."""
    c = condensed.reset_index().set_index(["depth", "model"])
    special = {key: int(counts.loc[key].iloc[0]) for key in counts.index}
    n_all = sum(special.values())
    lines = [
        f"Top features per SAE ranked by variance over "
        f"{'all' if rank_over_special else 'ordinary'} tokens ({n_per_row} per layer and model). "
        f"Ranked over all tokens as in the paper, {n_all} of {len(special) * n_per_row} top "
        "features put more than 90% of their activation on [CLS]/[SEP]."
    ]
    for depth, layer in layers.items():
        pre, post = c.loc[(depth, PRE)], c.loc[(depth, POST)]
        lines.append(
            f"- **{depth} layer ({layer})**: class-selective (ratio >= {class_ratio:g}) "
            f"{int(pre['class_selective'])} of {n_per_row} pre-trained → "
            f"{int(post['class_selective'])} fine-tuned; median firing rate "
            f"{pre['median_fires_on']:.1%} → {post['median_fires_on']:.1%}; median class ratio "
            f"{pre['median_class_ratio']:.1f} → {post['median_class_ratio']:.1f}."
        )
    paragraphs = []
    early = [d for d in layers if d != "late"]
    dominated = [
        d
        for d in early
        if all(share_word(special[(d, m)], n_per_row) == "most" for m in (PRE, POST))
    ]
    if dominated:
        paragraphs.append(
            f"Ranked the paper's way, over all tokens, most top features of the {' and '.join(dominated)} "
            "layer(s) are [CLS]/[SEP] detectors, which is why the paper's figures so often light up "
            "on those two tokens."
        )
    quiet = [
        d
        for d in early
        if share_word(int(c.loc[(d, PRE), "class_selective"]), n_per_row) != "most"
        and share_word(int(c.loc[(d, POST), "class_selective"]), n_per_row) != "most"
    ]
    if quiet:
        rates = [float(c.loc[(d, m), "median_fires_on"]) for d in quiet for m in (PRE, POST)]
        paragraphs.append(
            f"Below the last layer ({', '.join(quiet)}), the top features are sparse token "
            f"detectors: their median firing rate is {min(rates):.1%}-{max(rates):.1%} of tokens "
            "and few of them prefer a class, before or after fine-tuning."
        )
    late_pre, late_post = c.loc[("late", PRE)], c.loc[("late", POST)]
    turns = share_word(int(late_post["class_selective"]), n_per_row) == "most" and (
        late_post["class_selective"] > late_pre["class_selective"]
    )
    paragraphs.append(
        (
            "The **last layer of the fine-tuned models** is different in kind: "
            f"{int(late_post['class_selective'])} of its {n_per_row} top features prefer one class "
            f"(pre-trained: {int(late_pre['class_selective'])}), they fire on "
            f"{late_post['median_fires_on']:.0%} of tokens (median; pre-trained "
            f"{late_pre['median_fires_on']:.1%}) and their median class ratio is "
            f"{late_post['median_class_ratio']:.1f} against {late_pre['median_class_ratio']:.1f}."
        )
        if turns
        else "The last layer of the fine-tuned models does not turn most of its top features "
        f"class-selective ({int(late_post['class_selective'])} of {n_per_row}, pre-trained "
        f"{int(late_pre['class_selective'])})."
    )
    paragraphs.append(_sentences(verdicts, fires_at))
    return "\n".join(lines) + "\n\n" + "\n\n".join(paragraphs)


def _sentences(verdicts: pd.DataFrame, fires_at: float) -> str:
    if verdicts.empty:
        return ""
    parts = []
    for task, rows in verdicts.groupby("task", sort=False):
        post = rows[rows["model"] == POST]
        pre = rows[rows["model"] == PRE]
        exact = int((post["only its class"] & post["all of its class"]).sum())
        only = int(post["only its class"].sum())
        silent = int(post["silent"].sum())
        described = "; ".join(
            f"#{r['feature']} (prefers {r['prefers class']}) fires on {r['fires on']}"
            f" (its class: {r['class sentences']})"
            for _, r in post.iterrows()
        )
        parts.append(
            f"- **{task}**, fine-tuned, last layer: {described}. {exact} of {len(post)} fire on "
            f"exactly the sentences of their class, {only} only on sentences of their class, "
            f"{silent} on none. Pre-trained: {int(pre['silent'].sum())} of {len(pre)} top features "
            "fire on none of the sentences."
        )
    return (
        f"On our test sentences (a feature 'fires' on a sentence when its mean activation there "
        f"is at least {fires_at:.0%} of its largest activation in the data):\n\n" + "\n".join(parts)
    )
