"""One figure style for every notebook, and ``save_figure``.

Figures are PNG at a modest DPI so committed notebooks stay small. Each figure is named after
its notebook (``01_finetuning_accuracy.png``); figures of a non-default profile go to
``figures/<profile>/`` so they never overwrite the committed quick-profile ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt

from .config import figures_dir

log = logging.getLogger(__name__)

DPI = 110

#: Colours for pre-trained vs fine-tuned, used by every notebook.
PRE_COLOR = "#7f7f7f"
POST_COLOR = "#d62728"


def use_style() -> None:
    """Apply the project's matplotlib/seaborn style (call once per notebook)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "figure.max_open_warning": 0,
            # deterministic PNG bytes: no creation date in the metadata
            "svg.hashsalt": "repgeo",
        }
    )


def save_figure(fig, name: str, profile: str = "quick") -> Path:
    """Write ``fig`` to ``figures/<name>.png`` (``figures/<profile>/`` for non-quick profiles)."""
    if not name or "/" in name:
        raise ValueError(f"Figure name must be a plain file name, got {name!r}")
    folder = figures_dir() if profile == "quick" else figures_dir() / profile
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, metadata={"Software": None})
    log.info("figure written: %s", path)
    return path


# --- fine-tuning (notebook 01) -------------------------------------------------------------

# --- layer similarity (notebook 02) --------------------------------------------------------


def plot_layer_similarity(
    table, measure: str, *, hue: str = "task", paper: dict | None = None, title: str | None = None
):
    """One similarity measure per layer, one line per ``hue`` value (paper 1, Fig 1).

    ``table``: the tidy output of ``similarity.layer_similarity`` (columns ``layer``,
    ``measure``, ``value``) with a ``hue`` column added. ``paper`` optionally maps a ``hue``
    value to the paper's last-layer number for the task it stands for, drawn as a hollow
    diamond at our last layer.
    """
    from .similarity import MEASURE_LABELS

    rows = table[table["measure"] == measure]
    if rows.empty:
        known = sorted(set(table["measure"]))
        raise ValueError(f"No rows for measure {measure!r}; measures: {known}")
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    last = int(rows["layer"].max())
    marked = False
    for name, group in rows.groupby(hue, sort=False):
        group = group.sort_values("layer")
        (line,) = ax.plot(group["layer"], group["value"], marker="o", ms=4, label=str(name))
        if paper and name in paper:
            ax.scatter([last], [paper[name]], marker="D", s=40, facecolor="white",
                       edgecolor=line.get_color(), linewidth=1.5, zorder=3)  # fmt: skip
            marked = True
    if marked:  # one legend entry for all the paper's marks, after the lines
        ax.scatter([], [], marker="D", s=40, facecolor="white", edgecolor="0.3",
                   label="paper 1, bert-base, layer 12")  # fmt: skip
    low = min(0.0, float(rows["value"].min()) - 0.05)
    ax.set_ylim(low, 1.03)
    ax.set_xticks(range(last + 1))
    ax.set_xlabel("layer (hidden_states index, 0 = embeddings)")
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.set_title(title or f"pre-trained vs fine-tuned: {MEASURE_LABELS.get(measure, measure)}")
    ax.legend(fontsize=8, frameon=True, loc="lower left")
    return fig


def plot_similarity_by_size(
    table, measure: str, *, panel: str = "task", hue: str = "model", title: str | None = None
):
    """One measure against relative depth, one line per model size and one panel per task
    (paper 1, Fig 2). ``table`` needs ``relative_depth``, ``measure``, ``value``, ``panel``
    and ``hue`` columns."""
    from .similarity import MEASURE_LABELS

    rows = table[table["measure"] == measure]
    panels = list(dict.fromkeys(rows[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], panels, strict=True):
        for model, group in rows[rows[panel] == name].groupby(hue, sort=False):
            group = group.sort_values("relative_depth")
            ax.plot(group["relative_depth"], group["value"], marker="o", ms=3, label=str(model))
        ax.set_title(str(name))
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_xlim(-0.03, 1.03)
    axes[0][0].set_ylabel(MEASURE_LABELS.get(measure, measure))
    axes[0][0].set_ylim(min(0.0, float(rows["value"].min()) - 0.05), 1.03)
    axes[0][-1].legend(fontsize=8, frameon=True, loc="lower left", title=hue)
    fig.suptitle(title or f"by model size: {MEASURE_LABELS.get(measure, measure)}", y=1.02)
    return fig


# --- SAEs and token pictures (notebooks 03-04) ---------------------------------------------


def plot_sae_training(histories: dict, *, smooth: int = 25):
    """SAE training curves: reconstruction MSE (in the SAE's training units) and active
    latents per token (L0) against step, one line per run; ``histories`` maps a label to a
    ``sae.TrainHistory``. Curves are running means over ``smooth`` steps."""
    import numpy as np

    def running_mean(values):
        values = np.asarray(values, dtype=float)
        if len(values) < smooth or smooth <= 1:
            return np.arange(len(values)), values
        kernel = np.ones(smooth) / smooth
        return np.arange(smooth - 1, len(values)), np.convolve(values, kernel, mode="valid")

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.1))
    for label, history in histories.items():
        (line,) = a.plot(*running_mean(history.step_mse), lw=1.2, label=str(label))
        if history.step_l0 and not np.all(np.isnan(history.step_l0)):
            b.plot(*running_mean(history.step_l0), lw=1.2, color=line.get_color())
    a.set(xlabel="step", ylabel="MSE (scaled inputs ~ FVU)", yscale="log")
    b.set(xlabel="step", ylabel="active latents a token (L0)", yscale="log")
    a.legend(fontsize=7, frameon=True)
    fig.tight_layout()
    return fig


def plot_latent_density(frequencies: dict, *, dense_threshold: float = 0.1, bins: int = 40):
    """Histogram of log10 latent firing frequency, one step-line per SAE (``frequencies`` maps a
    label to per-latent frequencies); dead latents (never fire) are counted in the legend and
    the dense threshold is marked."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.4, 3.2))
    alive_all = [np.asarray(f)[np.asarray(f) > 0] for f in frequencies.values()]
    low = min((np.log10(f).min() for f in alive_all if len(f)), default=-4.0)
    edges = np.linspace(np.floor(low), 0.0, bins + 1)
    for (label, freq), alive in zip(frequencies.items(), alive_all, strict=True):
        dead = int((np.asarray(freq) == 0).sum())
        ax.hist(
            np.log10(alive), bins=edges, histtype="step", lw=1.3, label=f"{label} (dead: {dead})"
        )
    ax.axvline(np.log10(dense_threshold), color="k", ls="--", lw=0.8)
    ax.text(np.log10(dense_threshold), ax.get_ylim()[1] * 0.95, " dense", fontsize=8, va="top")
    ax.set(xlabel="log10 firing frequency (share of tokens)", ylabel="latents")
    ax.legend(fontsize=7, frameon=True)
    return fig


def plot_feature_matching(table, *, threshold: float | None = None, title: str | None = None):
    """How many fine-tuned features keep a pre-trained twin, per layer (one line per task),
    and the matched decoder cosines per layer (boxes, tasks side by side).

    ``table``: one row per matched fine-tuned feature with columns ``task``, ``layer`` and
    ``cosine`` (from ``sae.match_features``); ``threshold`` is the cosine that counts as a twin.
    """
    import numpy as np

    tasks = list(dict.fromkeys(table["task"]))
    layers = sorted(set(table["layer"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(tasks), 1)
    for i, task in enumerate(tasks):
        rows = table[table["task"] == task]
        cosines = [rows.loc[rows["layer"] == layer, "cosine"].to_numpy() for layer in layers]
        color = colors[i % len(colors)]
        if threshold is not None:
            share = [float((c >= threshold).mean()) if len(c) else np.nan for c in cosines]
            a.plot(range(len(layers)), share, marker="o", color=color, label=str(task))
        positions = np.arange(len(layers)) + (i - (len(tasks) - 1) / 2) * width
        parts = b.boxplot(
            cosines,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
            manage_ticks=False,
        )
        for box in parts["boxes"]:
            box.set(facecolor=color, alpha=0.5, edgecolor=color)
        for median in parts["medians"]:
            median.set(color="k")
    for ax in (a, b):
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("layer")
    a.set_ylabel(f"share with a twin (cosine >= {threshold})" if threshold else "share")
    a.set_ylim(-0.03, 1.03)
    a.legend(fontsize=8, frameon=True)
    b.set_ylabel("decoder cosine with the matched\npre-trained feature")
    if threshold is not None:
        b.axhline(threshold, color="k", ls="--", lw=0.8)
    fig.suptitle(title or "fine-tuned SAE features vs pre-trained ones", y=1.02)
    fig.tight_layout()
    return fig


def plot_token_strips(rows, *, vmax: float | None = None, title: str | None = None):
    """Token-level activations as coloured strips (paper 1, Figs 3-5): one strip per row, each
    token a cell shaded by its activation and labelled with its text.

    ``rows``: a list of ``(label, tokens, values)``; strips of one call share a colour scale
    (``vmax``, default the largest value), so a pre-trained and a fine-tuned strip of the same
    sentence can be compared cell by cell.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    if not rows:
        raise ValueError("rows is empty: nothing to draw.")
    peak = vmax or max((float(np.max(v)) for _, _, v in rows if len(v)), default=1.0) or 1.0
    norm, cmap = Normalize(0.0, peak), colormaps["Reds"]
    widths = [[max(len(t), 3) * 0.11 + 0.2 for t in tokens] for _, tokens, _ in rows]
    fig_width = min(max(max(sum(w) for w in widths) + 2.2, 5.0), 16.0)
    fig, ax = plt.subplots(figsize=(fig_width, 0.55 * len(rows) + 0.6))
    for r, ((label, tokens, values), cell_widths) in enumerate(zip(rows, widths, strict=True)):
        y, x = len(rows) - 1 - r, 0.0
        ax.text(-0.15, y + 0.4, str(label), ha="right", va="center", fontsize=8)
        for token, value, w in zip(tokens, values, cell_widths, strict=True):
            shade = cmap(norm(max(float(value), 0.0)))
            ax.add_patch(plt.Rectangle((x, y), w, 0.8, facecolor=shade, edgecolor="white"))
            dark = norm(max(float(value), 0.0)) > 0.6
            ax.text(
                x + w / 2,
                y + 0.4,
                token,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
            x += w
    ax.set_xlim(-0.05, max(sum(w) for w in widths) + 0.05)
    ax.set_ylim(-0.1, len(rows))
    ax.axis("off")
    fig.colorbar(
        plt.cm.ScalarMappable(norm=norm, cmap=cmap),
        ax=ax,
        fraction=0.02,
        pad=0.01,
        label="feature activation",
    )
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# --- spectral geometry, pretraining phases, toy model (notebooks 05-07) --------------------


def plot_toy_rankme(runs, verdicts=None, *, variants=("covariance", "singular"), title=None):
    """RankMe of the toy model's embeddings against gradient-descent step.

    Top row, a panel a condition: both RankMe variants (named in the legend), the dotted line
    at ``d`` (the most RankMe can reach). Bottom: every condition's first-variant RankMe
    divided by its peak after the collapse, from the collapse on, so a late fall of a few
    percent is visible side by side. ``runs`` maps condition names to ``toy.ToyRun``;
    ``verdicts`` (optional) maps them to the ``toy.RiseFall`` of the first variant, marked at
    the peak with the size of the fall. Symlog step axis (step 0 is the initialisation).
    Returns the figure.
    """
    import numpy as np

    from .spectral import RANKME_LABELS

    if not runs:
        raise ValueError("runs is empty: pass {condition name: ToyRun}")
    verdicts = verdicts or {}
    styles = {"covariance": ("#1f4e79", "-"), "singular": ("#e08214", "--")}
    fig = plt.figure(figsize=(3.3 * len(runs), 6.6))
    grid = fig.add_gridspec(2, len(runs), height_ratios=(1.0, 0.9), hspace=0.55, top=0.85)
    for col, (name, run) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[0, col])
        cfg = run.config
        for variant in variants:
            color, dash = styles.get(variant, ("#333333", ":"))
            label = RANKME_LABELS.get(variant, variant)
            ax.plot(run.steps, run.rankme(variant), color=color, ls=dash, lw=1.6, label=label)
        ax.axhline(cfg.d_embed, color="#999999", ls=":", lw=1)
        verdict = verdicts.get(name)
        if verdict is not None:
            falls = verdict.rises_then_falls
            if falls:
                ax.plot([verdict.peak_step], [verdict.peak_value], "o", color="#c51b7d", ms=5)
            text = f"fall {100 * verdict.fall:.1f}% after the peak" if falls else "no fall"
            ax.text(
                0.97, 0.05, text, transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8.5, color="#c51b7d" if falls else "#555555",
            )  # fmt: skip
        loss = "CE" if cfg.loss == "cross_entropy" else "MSE"
        ax.set_title(
            f"{name}\nd={cfg.d_embed}, C={cfg.n_classes}, Zipf s={cfg.zipf_exponent:g}, "
            f"eps={cfg.label_smoothing:g}, {loss}",
            fontsize=9,
        )
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        ax.set_xlim(0, run.steps[-1])
        ax.set_ylim(0, cfg.d_embed * 1.08)
        ax.set_xlabel("gradient-descent step")
        if col == 0:
            ax.set_ylabel("RankMe of the embeddings F")
            handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 0.955))  # fmt: skip

    ax = fig.add_subplot(grid[1, :])
    first = variants[0]
    for name, run in runs.items():
        values = np.asarray(run.rankme(first))
        low = int(np.argmin(values))
        peak = values[low:].max()
        ax.plot(run.steps[low:], values[low:] / peak, lw=1.8, label=name)
    ax.axhline(1.0, color="#999999", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0.8, 1.01)
    ax.set_xlabel("gradient-descent step (from each condition's collapse on)")
    ax.set_ylabel("RankMe / its peak")
    ax.set_title(f"{RANKME_LABELS.get(first, first)} relative to its peak after the collapse",
                 fontsize=10)  # fmt: skip
    ax.legend(loc="lower left", ncol=len(runs), fontsize=8.5)
    fig.suptitle(title or "Toy model: RankMe of the embeddings over training, per condition",
                 y=0.995)  # fmt: skip
    return fig
