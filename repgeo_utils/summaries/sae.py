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


# --- SAEs as the field measures and diffs them (sae.diffing) --------------------------------

#: Splice-in fidelity at or above which an SAE "stands in" for its layer: KL recovered against
#: mean-ablation (the stricter reference: the mean state already carries what all texts share),
#: with the accuracy within :data:`STANDS_IN_ACCURACY` of the clean model.
STANDS_IN_KL = 0.9
STANDS_IN_ACCURACY = 0.02
#: KL recovered against mean-ablation at or above which it stands in "partly".
PARTLY_KL = 0.5
#: Difference of KL recovered within which the two models' SAEs count as "as faithful".
SAME_RECOVERED = 0.05


def stands_in(accuracy: float, accuracy_clean: float, kl_recovered_mean: float) -> str:
    """``"stands in"`` (KL recovered against mean-ablation at least :data:`STANDS_IN_KL` and
    accuracy within :data:`STANDS_IN_ACCURACY` of the clean model), ``"stands in partly"`` (KL
    recovered at least :data:`PARTLY_KL`), else ``"does not stand in"`` (also when the KL
    recovered is undefined: the ablation changed nothing)."""
    if not np.isfinite(kl_recovered_mean):
        return "does not stand in"
    if kl_recovered_mean >= STANDS_IN_KL and accuracy >= accuracy_clean - STANDS_IN_ACCURACY:
        return "stands in"
    if kl_recovered_mean >= PARTLY_KL:
        return "stands in partly"
    return "does not stand in"


def _span(values: pd.Series, fmt: str = ".2f") -> str:
    """``"0.91"`` when all tasks agree to the shown digits, else ``"0.85-0.97"``."""
    low, high = format(float(values.min()), fmt), format(float(values.max()), fmt)
    return low if low == high else f"{low}-{high}"


def _signed_span(values: pd.Series) -> str:
    """``"-1.0"`` when all tasks agree to one decimal, else ``"-3.5 to +3.3"`` (signed, so a
    spliced model that does better than the clean one reads as such)."""
    low, high = f"{float(values.min()):+.1f}", f"{float(values.max()):+.1f}"
    return low if low == high else f"{low} to {high}"


def _own_splices(splice: pd.DataFrame) -> pd.DataFrame:
    own = splice[~splice["transfer"].astype(bool)]
    if own.empty:
        raise ValueError("The splice table has no row of a model with its own SAE.")
    return own


def _depth_order(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table.sort_values("layer", kind="stable")["depth"]))


def splice_verdicts(splice: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(depth, model) -> verdict`` of :func:`stands_in` for each model's own SAE
    (``sae.diffing.splice_grid`` rows with ``transfer`` False), the majority over tasks (ties:
    the less faithful word)."""
    order = ["does not stand in", "stands in partly", "stands in"]
    out = {}
    for (depth, model), rows in _own_splices(splice).groupby(["depth", "model"], sort=False):
        votes = [
            stands_in(r["accuracy"], r["accuracy_clean"], r["kl_recovered_mean"])
            for _, r in rows.iterrows()
        ]
        out[(depth, model)] = max(order, key=lambda w: (votes.count(w), -order.index(w)))
    return out


def splice_text(splice: pd.DataFrame) -> str:
    """The closing sentences of the splice-in section from a ``sae.diffing.splice_grid`` table:
    per layer and model (own SAEs), the accuracy against the clean model's and the KL recovered
    against mean-ablation over the tasks, the verdict of :func:`splice_verdicts`, at how many
    (task, layer) pairs the fine-tuned classifier's SAE recovers more, as much or less KL than
    the pre-trained model's (within :data:`SAME_RECOVERED`), and per layer whether it is more,
    as or less faithful after fine-tuning (the mean difference over tasks against the same
    margin)."""
    own = _own_splices(splice)
    verdicts = splice_verdicts(splice)
    parts = []
    for depth in _depth_order(own):
        rows = own[own["depth"] == depth]
        layer = int(rows["layer"].iloc[0])
        models = []
        for model in (PRE, POST):
            m = rows[rows["model"] == model]
            if m.empty:
                continue
            change = (m["accuracy"] - m["accuracy_clean"]) * 100
            models.append(
                f"the {model} model's SAE {verdicts[(depth, model)]} (KL recovered {_span(m['kl_recovered_mean'])}, "
                f"accuracy {_signed_span(change)} points against the clean model)"
            )
        parts.append(f"at the {depth} layer ({layer}) " + " and ".join(models))
    text = ["Spliced in for its layer, measured against mean-ablation: " + "; ".join(parts) + "."]
    pre = own[own["model"] == PRE].set_index(["task", "depth"])["kl_recovered_mean"]
    post = own[own["model"] == POST].set_index(["task", "depth"])["kl_recovered_mean"]
    both = pre.to_frame("pre").join(post.to_frame("post"), how="inner").dropna()
    if len(both):
        diff = both["post"] - both["pre"]
        more = int((diff > SAME_RECOVERED).sum())
        less = int((diff < -SAME_RECOVERED).sum())
        same = len(diff) - more - less
        by_depth = diff.groupby(level="depth", sort=False).mean()
        words = []
        for depth in _depth_order(own):
            if depth not in by_depth.index:
                continue
            change = float(by_depth[depth])
            word = (
                "more faithful"
                if change > SAME_RECOVERED
                else "less faithful"
                if change < -SAME_RECOVERED
                else "as faithful"
            )
            words.append(f"{word} at the {depth} layer")
        text.append(
            f" After fine-tuning the SAE recovers more KL at {more}, as much (within "
            f"{SAME_RECOVERED:.2f}) at {same} and less at {less} of {len(diff)} task-layer pairs; "
            f"on average over the tasks it is **{', '.join(words)}** after fine-tuning. The two "
            "read-outs differ (the pre-trained model's is a fixed linear probe, the fine-tuned "
            "model's its own head), so this compares what each model's "
            "own read-out loses."
        )
    return "".join(text)


def crosscoder_text(side: pd.DataFrame) -> str:
    """The closing sentences of the crosscoder section from a
    ``sae.diffing.crosscoder_vs_matching`` table: pre-only / shared / post-only latents per layer
    (summed over tasks), how many model-specific latents latent scaling finds really shared, and
    the computed verdict: in how many tasks the crosscoder and feature matching agree, and
    whether both say "early layers keep, late layers replace"."""
    counts = []
    for depth in _depth_order(side):
        rows = side[side["depth"] == depth]
        specific = int(rows["pre-only"].sum() + rows["post-only"].sum())
        really = int(rows["pre-only really shared"].sum() + rows["post-only really shared"].sum())
        counts.append(
            f"{depth} (layer {int(rows['layer'].iloc[0])}) {int(rows['pre-only'].sum())} / "
            f"{int(rows['shared'].sum())} / {int(rows['post-only'].sum())}"
            + (f", {really} of the {specific} model-specific really shared" if specific else "")
        )
    text = [
        "Crosscoder latents pre-only / shared / post-only, summed over the tasks: "
        + "; ".join(counts)
        + " (really shared: latent scaling finds the other model carries at least half of the "
        "latent's direction)."
    ]
    per_task = side.groupby("task", sort=False).first()
    agree = [t for t, r in per_task.iterrows() if bool(r["agree"])]
    keep_late = "keeps early, replaces late"
    both_keep = [
        t
        for t, r in per_task.iterrows()
        if r["matching_trend"] == keep_late and r["crosscoder_trend"] == keep_late
    ]
    n = len(per_task)
    disagree = [
        f"{t} (matching: {r['matching_trend']}; crosscoder: {r['crosscoder_trend']})"
        for t, r in per_task.iterrows()
        if not bool(r["agree"])
    ]
    text.append(
        f" Feature matching and the crosscoder agree on the direction from the first layer to "
        f"the last in {len(agree)} of {n} tasks"
        + (f"; they disagree on {', '.join(disagree)}" if disagree else "")
        + "."
    )
    if len(both_keep) == n:
        verdict = "both say early layers keep and late layers replace, in every task"
    elif both_keep:
        verdict = (
            f"both say early layers keep and late layers replace in {len(both_keep)} of {n} "
            f"tasks ({', '.join(both_keep)})"
        )
    else:
        verdict = "in no task do both say early layers keep and late layers replace"
    text.append(f" Verdict: **{verdict}**.")
    return "".join(text)


def transfer_text(transfer: pd.DataFrame) -> str:
    """The closing sentence of the SAE-transfer section from a ``sae.diffing.sae_transfer_table``
    (with splice columns when present): per layer, the FVU on the fine-tuned activations of the
    fine-tuned model's own SAE and of the transferred pre-trained one over the tasks, the KL
    recovered (against zero-ablation) lost, and the layer where transfer loses most."""
    table = transfer.drop_duplicates(["task", "layer"])
    has_splice = "kl_recovered_lost" in table.columns
    parts = []
    for depth in _depth_order(table):
        rows = table[table["depth"] == depth]
        part = (
            f"{depth} (layer {int(rows['layer'].iloc[0])}) FVU {_span(rows['fvu_post_own'])} → "
            f"{_span(rows['fvu_transfer'])}"
        )
        if has_splice and rows["kl_recovered_lost"].notna().any():
            part += f", KL recovered lost {_span(rows['kl_recovered_lost'].dropna())}"
        parts.append(part)
    by_depth = table.groupby("depth", sort=False)["fvu_lost"].mean()
    worst = str(by_depth.idxmax())
    return (
        "The pre-trained SAE on the fine-tuned model's activations (own SAE → transferred): "
        + "; ".join(parts)
        + f". Transfer loses most at the **{worst}** layer (FVU up by "
        f"{by_depth[worst]:.2f} on average over the tasks)."
    )


def _is_sparse(row: pd.Series, d_sae: int) -> bool:
    return bool(row["L0"] < 0.1 * d_sae and row["dense"] / d_sae < 0.5)


def paper_conventions_verdict(table: pd.DataFrame, *, text: str, code: str, d_sae: int) -> str:
    """Which of the paper's two L1 conventions (rows ``text`` and ``code`` of a settings
    comparison) gives a sparse SAE: L0 under 10% of the latents and fewer than half of them
    dense."""
    rows = table.set_index("setting")
    for name in (text, code):
        if name not in rows.index:
            raise KeyError(f"No setting {name!r} in the comparison; it has {list(rows.index)}.")
    sparse = [_is_sparse(rows.loc[text], d_sae), _is_sparse(rows.loc[code], d_sae)]
    if not any(sparse):
        return "neither convention of the paper gives a sparse SAE here"
    if all(sparse):
        return "both conventions of the paper give a sparse SAE here"
    return f"only the {'text' if sparse[0] else 'code'}'s convention gives a sparse SAE here"


def paper_conventions_text(table: pd.DataFrame, *, text: str, code: str, d_sae: int) -> str:
    """The closing sentence of the paper's two L1 conventions from a settings comparison
    (``sae.grid.compare_settings`` table; ``text`` and ``code`` name its rows of the presets
    ``paper-text`` and ``paper-code``): FVU, L0 and dense latents of each and whether each is
    sparse (L0 under 10% of the latents and fewer than half of them dense)."""
    rows = table.set_index("setting")
    for name in (text, code):
        if name not in rows.index:
            raise KeyError(f"No setting {name!r} in the comparison; it has {list(rows.index)}.")
    t, c = rows.loc[text], rows.loc[code]

    def describe(r: pd.Series) -> str:
        word = "sparse" if _is_sparse(r, d_sae) else "not sparse"
        return (
            f"FVU {r['FVU']:.2f} at L0 {r['L0']:.0f} with {int(r['dense'])} of {d_sae} latents "
            f"dense ({word})"
        )

    verdict = paper_conventions_verdict(table, text=text, code=code, d_sae=d_sae)
    return (
        f"The paper's L1 term as its text writes it (summed over latents): {describe(t)}; as its "
        f"code computed it (averaged over the {d_sae} latents, {d_sae} times weaker): "
        f"{describe(c)}. **{verdict[0].upper() + verdict[1:]}.**"
    )


def diffing_findings(
    found: Findings,
    splice: pd.DataFrame,
    side: pd.DataFrame,
    transfer: pd.DataFrame,
) -> Findings:
    """Add the diffing sections' numbers and verdicts to notebook 03's findings: splice-in
    accuracy and KL recovered (zero- and mean-ablation) per task, depth and model (own SAEs),
    the verdict per depth and model; crosscoder band counts and share kept beside the matching
    share per task and depth, the agreement per task; FVU lost under transfer."""
    for _, r in _own_splices(splice).iterrows():
        key = f"{r['task']}.{r['depth']}.{r['model']}"
        found.number(f"{key}.splice_accuracy", float(r["accuracy"]))
        found.number(f"{key}.splice_accuracy_clean", float(r["accuracy_clean"]))
        for reference in ("zero", "mean"):
            value = float(r[f"kl_recovered_{reference}"])
            if np.isfinite(value):
                found.number(f"{key}.kl_recovered_{reference}", value)
    for (depth, model), word in splice_verdicts(splice).items():
        found.verdict(f"{depth}.splice.{model}", word)
    for _, r in side.iterrows():
        key = f"{r['task']}.{r['depth']}.crosscoder"
        for band in ("pre-only", "shared", "post-only"):
            found.number(f"{key}.{band}", float(r[band]))
        found.number(f"{key}.share_kept", float(r["share_kept"]))
    for task, rows in side.groupby("task", sort=False):
        found.verdict(
            f"{task}.crosscoder_vs_matching", "agree" if rows["agree"].iloc[0] else "disagree"
        )
    for _, r in transfer.iterrows():
        found.number(f"{r['task']}.{r['depth']}.transfer_fvu_lost", float(r["fvu_lost"]))
    return found
