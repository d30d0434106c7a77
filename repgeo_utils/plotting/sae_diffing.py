"""Notebook 03 (SAEs as the field measures, shares and diffs them): splice-in fidelity per
layer and model, SAE transfer, crosscoder relative-decoder-norm histograms, and the crosscoder
beside the matching approach. Each function draws a table of :mod:`repgeo_utils.sae.diffing`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ..sae.crosscoder import RELATIVE_NORM_BANDS
from .style import POST_COLOR, PRE_COLOR

#: Colour per (model whose forward pass, SAE spliced in).
SPLICE_COLORS = {
    ("pre-trained", "pre-trained"): PRE_COLOR,
    ("fine-tuned", "fine-tuned"): POST_COLOR,
    ("fine-tuned", "pre-trained"): "#1f77b4",  # SAE transfer
}
#: Shading of the relative-decoder-norm bands (``sae.crosscoder.RELATIVE_NORM_BANDS``).
BAND_COLORS = {
    "pre-only": PRE_COLOR,
    "pre-leaning": "#c7c7c7",
    "shared": "#2ca02c",
    "post-leaning": "#f4a3a3",
    "post-only": POST_COLOR,
}


def _splice_label(model: str, sae: str) -> str:
    return f"{model}, own SAE" if model == sae else f"{model}, {sae} SAE (transfer)"


def plot_splice_fidelity(table, *, title: str | None = None):
    """Splice-in fidelity per layer (``sae.diffing.splice_grid``): one row of panels per task.

    Left: accuracy with the SAE spliced in (solid, markers) against the clean model (dotted) and
    the layer zero-ablated (x) and mean-ablated (+), one colour per model and SAE (grey:
    pre-trained model with its fixed probe read-out; red: fine-tuned classifier with its own
    SAE; blue: the fine-tuned classifier with the pre-trained SAE, i.e. SAE transfer). Right:
    KL recovered against zero-ablation (solid) and mean-ablation (dashed): 1 = the SAE stands in
    for the layer, 0 = no better than the ablation."""
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(
        len(tasks), 2, figsize=(9.6, 3.0 * len(tasks) + 0.5), squeeze=False, sharex="row"
    )
    for row, task in enumerate(tasks):
        a, b = axes[row]
        part = table[table["task"] == task]
        layers = sorted(set(part["layer"]))
        for (model, sae), rows in part.groupby(["model", "sae"], sort=False):
            rows = rows.drop_duplicates("layer").sort_values("layer")
            color = SPLICE_COLORS.get((model, sae), "k")
            label = _splice_label(model, sae)
            a.plot(rows["layer"], rows["accuracy"], "o-", color=color, label=label)
            if model == sae:  # the references are the model's, whichever SAE is spliced in
                a.plot(rows["layer"], rows["accuracy_clean"], ":", color=color, lw=1)
                a.plot(rows["layer"], rows["accuracy_zero"], "x", color=color, ms=7)
                a.plot(rows["layer"], rows["accuracy_mean"], "+", color=color, ms=8)
            b.plot(rows["layer"], rows["kl_recovered_zero"], "o-", color=color, label=label)
            b.plot(rows["layer"], rows["kl_recovered_mean"], "s--", color=color, ms=4, lw=1)
        for ax in (a, b):
            ax.set_xticks(layers, [str(layer) for layer in layers])
        a.set_ylabel(f"{task}\naccuracy")
        b.set_ylabel("KL recovered")
        b.axhline(1.0, color="k", lw=0.6, ls=":")
        b.axhline(0.0, color="k", lw=0.6)
    axes[-1][0].set_xlabel("hidden_states layer")
    axes[-1][1].set_xlabel("hidden_states layer")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [
        plt.Line2D([], [], color="k", ls=":", lw=1),
        plt.Line2D([], [], color="k", marker="x", ls=""),
        plt.Line2D([], [], color="k", marker="+", ls=""),
        plt.Line2D([], [], color="k", ls="--", marker="s", ms=4, lw=1),
    ]
    labels += ["clean model", "layer zero-ablated", "layer mean-ablated", "vs mean-ablation"]
    axes[0][0].legend(handles, labels, fontsize=7, frameon=True)
    fig.suptitle(title or "splice-in fidelity: can the SAE stand in for the layer?", y=1.0)
    fig.tight_layout()
    return fig


def plot_relative_norms(latents: dict, *, bins: int = 40, title: str | None = None):
    """Histograms of the crosscoder's relative decoder norm ``||d_post|| / (||d_pre|| +
    ||d_post||)`` (``sae.diffing.crosscoder_latents``: ``(task, depth) -> latent table``), one
    panel per task (rows) and depth (columns), alive latents only, over the shaded bands
    (pre-only, pre-leaning, shared, post-leaning, post-only); the title counts pre-only /
    shared / post-only latents and, hatched, the post-only and pre-only ones latent scaling
    finds really shared."""
    tasks = list(dict.fromkeys(k[0] for k in latents))
    depths = list(dict.fromkeys(k[1] for k in latents))
    fig, axes = plt.subplots(
        len(tasks), len(depths), figsize=(3.2 * len(depths) + 0.6, 2.5 * len(tasks) + 0.6),
        squeeze=False, sharex=True,
    )  # fmt: skip
    edges = np.linspace(0.0, 1.0, bins + 1)
    for (task, depth), table in latents.items():
        ax = axes[tasks.index(task)][depths.index(depth)]
        for name, (low, high) in RELATIVE_NORM_BANDS.items():
            ax.axvspan(low, high, color=BAND_COLORS[name], alpha=0.15, lw=0)
        alive = table[table["band"] != "dead"]
        ax.hist(alive["relative_norm"].dropna(), bins=edges, color="k", alpha=0.75)
        shared = alive[alive["really_shared"].astype(bool)]
        if len(shared):
            ax.hist(shared["relative_norm"], bins=edges, facecolor="none", edgecolor="#1f77b4",
                    hatch="////", lw=0.8)  # fmt: skip
        counts = {b: int((alive["band"] == b).sum()) for b in ("pre-only", "shared", "post-only")}
        ax.set_title(
            f"{task}, {depth}: {counts['pre-only']} / {counts['shared']} / {counts['post-only']}",
            fontsize=9,
        )
        ax.set_yscale("log")  # the model-specific tails are few next to the shared bulk
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[-1]:
        ax.set_xlabel("relative decoder norm (0 pre, 1 post)")
    for row in axes:
        row[0].set_ylabel("latents")
    legend = [Patch(color=BAND_COLORS[n], alpha=0.4, label=n) for n in RELATIVE_NORM_BANDS]
    legend.append(Patch(facecolor="none", edgecolor="#1f77b4", hatch="////",
                        label="really shared (latent scaling)"))  # fmt: skip
    fig.suptitle(title or "crosscoder latents: pre-only / shared / post-only", y=1.0)
    fig.tight_layout()
    fig.legend(handles=legend, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               frameon=False)  # fmt: skip
    return fig


def plot_crosscoder_vs_matching(table, *, title: str | None = None):
    """Per layer and task (``sae.diffing.crosscoder_vs_matching``): the share of fine-tuned
    SAE features with a pre-trained twin (matching, solid) and the share of the crosscoder's
    fine-tuned-side latents that the pre-trained model uses too (dashed; dotted: counting the
    latents latent scaling finds really shared as kept). Both falling with depth = "early layers
    keep, late layers replace"; the legend says per task whether the two agree."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (task, rows) in enumerate(table.groupby("task", sort=False)):
        rows = rows.sort_values("layer")
        color = colors[i % len(colors)]
        verdict = "agree" if bool(rows["agree"].iloc[0]) else "disagree"
        ax.plot(rows["layer"], rows["share_with_twin"], "o-", color=color,
                label=f"{task}: matching vs crosscoder {verdict}")  # fmt: skip
        ax.plot(rows["layer"], rows["share_kept"], "s--", color=color)
        if "share_kept_after_scaling" in rows:
            ax.plot(rows["layer"], rows["share_kept_after_scaling"], ":", color=color, lw=1)
    layers = sorted(set(table["layer"]))
    ax.set_xticks(layers, [str(layer) for layer in layers])
    ax.set(xlabel="hidden_states layer", ylabel="share kept", ylim=(-0.03, 1.03))
    handles, labels = ax.get_legend_handles_labels()
    handles += [
        plt.Line2D([], [], color="k", marker="o"),
        plt.Line2D([], [], color="k", ls="--", marker="s"),
        plt.Line2D([], [], color="k", ls=":"),
    ]
    labels += ["matching: twin share", "crosscoder: kept share", "crosscoder, after scaling"]
    ax.legend(handles, labels, fontsize=7, frameon=True)
    ax.set_title(title or "does fine-tuning keep early features and replace late ones?",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_sae_transfer(table, *, title: str | None = None):
    """SAE transfer per layer (``sae.diffing.sae_transfer_table``), one colour per task: left,
    held-out FVU on the fine-tuned activations of the fine-tuned model's own SAE (solid) and of
    the pre-trained model's SAE (dashed); right (when the table has splice columns), KL
    recovered in the fine-tuned classifier with its own SAE (solid) and the transferred one
    (dashed)."""
    has_splice = "kl_recovered_zero_own" in table.columns
    fig, axes = plt.subplots(1, 2 if has_splice else 1, figsize=(9.2 if has_splice else 5, 3.4),
                             squeeze=False)  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    a = axes[0][0]
    for i, (task, rows) in enumerate(table.groupby("task", sort=False)):
        rows = rows.drop_duplicates("layer").sort_values("layer")
        color = colors[i % len(colors)]
        a.plot(rows["layer"], rows["fvu_post_own"], "o-", color=color, label=f"{task}: own SAE")
        a.plot(rows["layer"], rows["fvu_transfer"], "s--", color=color,
               label=f"{task}: pre-trained SAE")  # fmt: skip
        if has_splice:
            b = axes[0][1]
            b.plot(rows["layer"], rows["kl_recovered_zero_own"], "o-", color=color)
            b.plot(rows["layer"], rows["kl_recovered_zero_transfer"], "s--", color=color)
    layers = sorted(set(table["layer"]))
    for ax in axes[0]:
        ax.set_xticks(layers, [str(layer) for layer in layers])
        ax.set_xlabel("hidden_states layer")
    a.set_ylabel("FVU on fine-tuned activations")
    a.legend(fontsize=7, frameon=True)
    if has_splice:
        axes[0][1].set_ylabel("KL recovered (vs zero-ablation)\nin the fine-tuned classifier")
        axes[0][1].axhline(1.0, color="k", lw=0.6, ls=":")
    fig.suptitle(title or "SAE transfer: the pre-trained SAE on the fine-tuned model", y=1.02)
    fig.tight_layout()
    return fig
