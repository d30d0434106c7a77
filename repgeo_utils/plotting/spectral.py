"""Notebook 05: eigenspectra with their alpha-ReQ fits, and RankMe / alpha per layer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .style import MODEL_COLORS

#: Axis labels of the per-layer spectral metrics (``spectral.layer_spectra`` columns).
SPECTRAL_METRIC_LABELS = {
    "rankme_covariance": "RankMe (covariance eigenvalues)",
    "rankme_singular": "RankMe (singular values)",
    "alpha": "alpha-ReQ",
}


def plot_eigenspectra(spectra: dict, fits: dict | None = None, *, colors=None, title=None, ax=None):
    """Eigenvalues as fractions of the total variance against their rank, log-log.

    ``spectra`` maps a label to a descending spectrum; ``fits`` (optional) maps the same
    labels to ``spectral.AlphaReqFit``s, each drawn as a black dashed line over its fit range
    only, with alpha in the legend; the first fit's range is shaded. Zeros and the round-off
    of zeros (below 1e-13 of the largest) cannot go on a log axis and are left out, so a
    rank-k spectrum simply ends at rank k. ``colors`` optionally maps labels to colours.
    Returns the figure.
    """
    if not spectra:
        raise ValueError("spectra is empty: pass {label: eigenvalues}")
    fits, colors = fits or {}, colors or {}
    fig, ax = plt.subplots(figsize=(5.0, 3.6)) if ax is None else (ax.figure, ax)
    shaded = fit_drawn = False
    for label, eigenvalues in spectra.items():
        lam = np.asarray(eigenvalues, dtype=float)
        fraction = lam / lam.sum()
        ranks = np.arange(1, lam.size + 1)
        keep = fraction > 1e-13 * fraction.max()
        fit = fits.get(label)
        name = str(label) if fit is None else f"{label}: alpha = {fit.alpha:.2f}"
        ax.plot(ranks[keep], fraction[keep], lw=1.6, color=colors.get(label), label=name)
        if fit is None:
            continue
        first, last = fit.fit_range
        if not shaded:
            ax.axvspan(first, last, color="#e6e6e6", lw=0, zorder=0,
                       label=f"alpha fit range (ranks {first}-{last})")  # fmt: skip
            shaded = True
        r = np.geomspace(first, last, 50)
        ax.plot(r, fit.fraction_of_variance(r), color="black", ls="--", lw=1.3,
                label=None if fit_drawn else "power-law fit")  # fmt: skip
        fit_drawn = True
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="lambda_r / sum of eigenvalues")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(
        range(len(labels)), key=lambda i: labels[i].startswith(("alpha fit", "power-law"))
    )
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, frameon=True,
              loc="upper left", bbox_to_anchor=(1.02, 1.0))  # fmt: skip
    if title:
        ax.set_title(title)
    return fig


def plot_layer_spectra(
    table,
    metrics=("rankme_covariance", "rankme_singular", "alpha"),
    *,
    panel: str = "task",
    fit_range: tuple[int, int] = (12, 100),
    title: str | None = None,
):
    """Spectral metrics per layer, pre-trained vs fine-tuned: a row of panels per metric and a
    column per ``panel`` value (a task).

    ``table``: rows of ``spectral.layer_spectra`` with a ``model`` column (``"pre-trained"``,
    ``"fine-tuned"``: grey and red) and a ``panel`` column; each ``representation`` in it gets
    its own line style. ``fit_range`` labels the alpha axis. Returns the figure.
    """
    missing = [c for c in ("layer", "model", "representation", panel, *metrics)
               if c not in table.columns]  # fmt: skip
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    panels = list(dict.fromkeys(table[panel]))
    representations = list(dict.fromkeys(table["representation"]))
    dashes = dict(zip(representations, ["-", "--", ":", "-."], strict=False))
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(3.4 * len(panels), 2.5 * len(metrics)),
                             sharex=True, sharey="row", squeeze=False)  # fmt: skip
    for col, name in enumerate(panels):
        rows = table[table[panel] == name]
        for (model, representation), group in rows.groupby(["model", "representation"], sort=False):
            group = group.sort_values("layer")
            for ax, metric in zip(axes[:, col], metrics, strict=True):
                ax.plot(group["layer"], group[metric], marker="o", ms=3, lw=1.5,
                        ls=dashes.get(representation, "-"), color=MODEL_COLORS.get(model),
                        label=f"{model}, {representation}")  # fmt: skip
        axes[0, col].set_title(str(name))
        axes[-1, col].set_xlabel("layer (0 = embeddings)")
        axes[-1, col].set_xticks(sorted(set(table["layer"])))
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        label = SPECTRAL_METRIC_LABELS.get(metric, metric)
        if metric == "alpha":
            label += f"\n(ranks {fit_range[0]}-{fit_range[1]})"
        ax.set_ylabel(label, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), frameon=False,
               bbox_to_anchor=(0.5, 1.0))  # fmt: skip
    fig.suptitle(title or "spectral geometry per layer, pre-trained vs fine-tuned", y=1.04)
    fig.tight_layout()
    return fig
