"""Notebook 03: SAEs per task, layer and model; the paper's settings against ours; which
fine-tuned features were already there (paper 1, section 3.2.3)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..report import Findings

NOTEBOOK = "03_sae_training"
PRE, POST = "pre-trained", "fine-tuned"

#: Share points within which the fine-tuned SAE's twin share counts as "as many as the control".
SAME_SHARE = 0.05


def curve_trend(epoch_mse: list[float], *, tolerance: float = 0.005) -> str:
    """``"falling"``, ``"flat"`` or ``"rising"``: the last epoch's MSE against the one before,
    relative change beyond ``tolerance``."""
    if len(epoch_mse) < 2:
        return "flat"
    before, last = float(epoch_mse[-2]), float(epoch_mse[-1])
    change = (last - before) / abs(before) if before else 0.0
    if change < -tolerance:
        return "falling"
    if change > tolerance:
        return "rising"
    return "flat"


def keeps_or_replaces(fine_tuned_share: float, control_share: float) -> str:
    """Per layer: ``"keeps"`` when the fine-tuned SAE shares about as many features with the
    reference as the pre-trained control does (within :data:`SAME_SHARE`), ``"replaces"``
    when it shares less than half as many, else ``"changes part"``."""
    if fine_tuned_share >= control_share - SAME_SHARE:
        return "keeps"
    if fine_tuned_share < control_share / 2:
        return "replaces"
    return "changes part"


def findings(
    metrics: pd.DataFrame,
    matching: pd.DataFrame,
    *,
    profile: str = "quick",
    parameters: dict | None = None,
) -> Findings:
    """FVU per task, depth and model; twin shares (fine-tuned vs control) per task and depth
    with the keeps/replaces verdict per depth (majority over tasks)."""
    found = Findings(NOTEBOOK, profile=profile, parameters=dict(parameters or {}))
    for _, r in metrics.iterrows():
        found.number(f"{r['task']}.{r['depth']}.{r['model']}.fvu", float(r["FVU"]))
        found.number(f"{r['task']}.{r['depth']}.{r['model']}.l0", float(r["L0"]))
    for _, r in matching.iterrows():
        found.number(
            f"{r['task']}.{r['depth']}.twin_share", float(r["fine-tuned: share with twin"])
        )
        found.number(
            f"{r['task']}.{r['depth']}.control_share", float(r["pre-trained (control): share"])
        )
    for depth, rows in matching.groupby("depth", sort=False):
        votes = [
            keeps_or_replaces(r["fine-tuned: share with twin"], r["pre-trained (control): share"])
            for _, r in rows.iterrows()
        ]
        found.verdict(f"{depth}.features", max(set(votes), key=votes.count))
    return found


def summary(
    metrics: pd.DataFrame,
    matching: pd.DataFrame,
    comparison: pd.DataFrame,
    means: pd.DataFrame,
    histories: Mapping[tuple[str, str, str], list[float]],
    dead_all_tokens: Mapping[tuple[str, str, str], int],
    *,
    d_sae: int,
    case: str,
) -> str:
    """The closing bullets and paragraphs from the metrics table, the matching summary (columns
    task, depth, layer, 'fine-tuned: share with twin', 'pre-trained (control): share',
    'fine-tuned vs same-seed pre-trained: share'), the settings comparison (rows in the
    notebook's order: paper at its batch, paper at ours, the paper's lambda with our optimiser,
    ours, TopK), the sequence-mean table, the epoch MSE curves and the latents that never fire
    on any token of a task."""
    m = metrics.set_index(["task", "depth", "model"])
    tasks = list(dict.fromkeys(metrics["task"]))
    depths = list(dict.fromkeys(metrics["depth"]))
    lines = []
    for task in tasks:
        parts = []
        for depth in depths:
            pre, post = m.loc[(task, depth, PRE)], m.loc[(task, depth, POST)]
            parts.append(
                f"{depth} FVU {pre['FVU']:.2f} → {post['FVU']:.2f}, L0 {pre['L0']:.0f} → "
                f"{post['L0']:.0f}, dead {int(pre['dead'])} → {int(post['dead'])}"
            )
        lines.append(f"- **{task}** (pre-trained → fine-tuned): " + "; ".join(parts) + ".")
    text = ["\n".join(lines)]

    verdicts = {}
    for depth in depths:
        rows = matching[matching["depth"] == depth]
        verdicts[depth] = [
            (r["task"], r["fine-tuned: share with twin"], r["pre-trained (control): share"],
             keeps_or_replaces(r["fine-tuned: share with twin"], r["pre-trained (control): share"]))
            for _, r in rows.iterrows()
        ]  # fmt: skip
    described = []
    for depth, items in verdicts.items():
        kinds = {v for *_, v in items}
        shares = ", ".join(f"{t} {s:.0%} (control {c:.0%})" for t, s, c, _ in items)
        word = (
            kinds.pop()
            if len(kinds) == 1
            else "differs by task: " + ", ".join(f"{t} {v}" for t, *_, v in items)
        )
        described.append(f"at the {depth} layer the fine-tuned SAE **{word}** ({shares})")
    text.append(
        "\n\nFeatures with a pre-trained twin (decoder cosine at or above the threshold), against "
        "a second pre-trained SAE of another seed as the control: "
        + "; ".join(described)
        + ". 'Keeps': within "
        f"{SAME_SHARE:.0%} of the control, what SAE training noise alone leaves; 'replaces': "
        "less than half the control's share."
    )
    same_seed_higher = all(
        r["fine-tuned vs same-seed pre-trained: share"] > r["fine-tuned: share with twin"]
        for _, r in matching[matching["depth"] != depths[-1]].iterrows()
    )
    if same_seed_higher:
        text.append(
            " Without the second seed the comparison would mislead: SAEs trained with the same "
            "seed start from the same dictionary, and the same-seed shares are higher at every "
            "layer below the last."
        )
    late = depths[-1]
    easier = [t for t in tasks if m.loc[(t, late, POST), "FVU"] < m.loc[(t, late, PRE), "FVU"]]
    text.append(
        f"\n\nAt the last layer the fine-tuned activations are easier to reconstruct (lower FVU) in "
        f"{len(easier)} of {len(tasks)} tasks"
        + (f" ({', '.join(easier)})" if easier and len(easier) < len(tasks) else "")
        + "."
    )
    many_dead = [t for t in tasks if m.loc[(t, late, POST), "dead"] > 0.1 * d_sae]
    for t in many_dead:
        text.append(
            f" In {t}, {int(m.loc[(t, late, POST), 'dead'])} of {d_sae} latents of the fine-tuned "
            f"last-layer SAE never fire on the held-out tokens ({dead_all_tokens[(t, late, POST)]} "
            "never fire on any of the task's tokens, the count the density figure shows): its "
            "tokens have been pulled into a few task directions."
        )
    trends = {key: curve_trend(mse) for key, mse in histories.items()}
    counts = {w: sum(1 for v in trends.values() if v == w) for w in ("falling", "flat", "rising")}
    text.append(
        f" After the last epoch, {counts['falling']} of {len(trends)} training curves are still "
        f"falling (by more than 0.5% in the last epoch), {counts['flat']} are flat and "
        f"{counts['rising']} rising."
    )
    text.append("\n\n" + _settings(comparison, case, d_sae))
    text.append(" " + _means(means, case))
    return "".join(text)


def _settings(table: pd.DataFrame, case: str, d_sae: int) -> str:
    paper, paper_big, default, ours, topk = (table.iloc[i] for i in range(5))
    dense_share = paper["dense"] / d_sae
    sparse = paper["L0"] < 0.1 * d_sae and dense_share < 0.5
    out = [
        f"On {case}, the paper's optimiser at its own batch of 16 ({int(paper['steps']):,} steps) "
        f"reconstructs held-out tokens with FVU {paper['FVU']:.2f}"
        + (
            f" but is not sparse: {paper['L0']:.0f} latents fire on a token and "
            f"{int(paper['dense'])} of {d_sae} are dense."
            if not sparse
            else f" at L0 {paper['L0']:.0f}."
        )
    ]
    if paper_big["FVU"] > paper["FVU"] + 0.05:
        out.append(
            f" At our batch of 256 ({int(paper_big['steps']):,} steps) the same learning rate is far "
            f"from converged: FVU {paper_big['FVU']:.2f}."
        )
    out.append(
        f" The paper's lambda with our optimiser reaches FVU {default['FVU']:.2f} at L0 "
        f"{default['L0']:.0f} ({int(default['dense'])} dense latents); ours (lambda 1e-2) FVU "
        f"{ours['FVU']:.2f} at L0 {ours['L0']:.0f}; TopK-32 FVU {topk['FVU']:.2f}."
    )
    return "".join(out)


def _means(table: pd.DataFrame, case: str) -> str:
    t = table.set_index("trained on")
    tokens = t.loc["tokens"]
    means = t.drop(index="tokens")
    above = [name for name, r in means.iterrows() if r["FVU on tokens"] > 1]
    fvus = ", ".join(f"{r['FVU on tokens']:.2f} ({name})" for name, r in means.iterrows())
    return (
        f"SAEs trained on sequence means (the paper's code) reconstruct held-out tokens with FVU "
        f"{fvus}, against {tokens['FVU on tokens']:.2f} for the token SAE"
        + (
            f"; {' and '.join(above)} {'is' if len(above) == 1 else 'are'} worse than predicting "
            "each token by the mean (FVU above 1)"
            if above
            else ""
        )
        + f". The token SAE, for its part, fires on {tokens['L0 on means']:.1f} latents of a "
        f"sequence mean on average (on {tokens['L0 on tokens']:.0f} of a token): a mean lies where "
        "no single token does."
    )


def dead_on_all_tokens(firing_frequency: Mapping[tuple[str, str, str], np.ndarray]) -> dict:
    """Latents that never fire on any token of a task's texts, per grid key."""
    return {key: int((np.asarray(f) == 0).sum()) for key, f in firing_frequency.items()}
