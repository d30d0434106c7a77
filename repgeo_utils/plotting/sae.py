"""Notebooks 03 and 04: SAE training curves, latent density, feature matching, token strips."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .style import POST_COLOR, PRE_COLOR, running_mean


def plot_sae_training(histories: dict, *, smooth: int = 25):
    """SAE training curves: reconstruction MSE (in the SAE's training units) and active
    latents per token (L0) against step, one line per run; ``histories`` maps a label to a
    ``sae.TrainHistory``. Curves are running means over ``smooth`` steps."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.5, 3.1))
    for label, history in histories.items():
        (line,) = a.plot(*running_mean(history.step_mse, smooth), lw=1.2, label=str(label))
        if history.step_l0 and not np.all(np.isnan(history.step_l0)):
            b.plot(*running_mean(history.step_l0, smooth), lw=1.2, color=line.get_color())
    a.set(xlabel="step", ylabel="MSE (scaled inputs ~ FVU)", yscale="log")
    b.set(xlabel="step", ylabel="active latents a token (L0)", yscale="log")
    a.legend(fontsize=7, frameon=True)
    fig.tight_layout()
    return fig


def plot_latent_density(frequencies: dict, *, dense_threshold: float = 0.1, bins: int = 40):
    """Histogram of log10 latent firing frequency, one step-line per SAE (``frequencies`` maps a
    label to per-latent frequencies); dead latents (never fire) are counted in the legend and
    the dense threshold is marked."""
    fig, ax = plt.subplots(figsize=(5.4, 3.2))
    alive_all = [np.asarray(f)[np.asarray(f) > 0] for f in frequencies.values()]
    low = min((np.log10(f).min() for f in alive_all if len(f)), default=-4.0)
    edges = np.linspace(np.floor(low), 0.0, bins + 1).tolist()
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


def plot_feature_matching(table, control=None, *, threshold: float = 0.7, title: str | None = None):
    """Do fine-tuned SAE features keep a pre-trained twin? Left: the share of fine-tuned
    features whose best-matching pre-trained decoder direction has cosine >= ``threshold``,
    per layer (one solid line per task). Right: the matched cosines per layer (filled boxes,
    tasks side by side). With ``control`` (the same columns, e.g. a pre-trained SAE matched to a
    pre-trained SAE of another seed: what SAE training noise alone leaves), its shares are
    dashed lines of the task's colour on the left and its cosines hatched boxes beside each
    task's on the right, so a drop that the control shows too is not read as fine-tuning's.

    ``table``: one row per matched feature with columns ``task``, ``layer`` and ``cosine``
    (``sae.match_features`` / ``sae.grid.match_grid``).
    """
    tasks = list(dict.fromkeys(table["task"]))
    layers = sorted(set(table["layer"]))
    has_control = control is not None and len(control) > 0
    sides = [("fine-tuned", table)] + ([("control", control)] if has_control else [])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.9), gridspec_kw={"width_ratios": [1, 1.35]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    slots = len(tasks) * len(sides)
    width = 0.8 / max(slots, 1)
    for i, task in enumerate(tasks):
        color = colors[i % len(colors)]
        for j, (side, frame) in enumerate(sides):
            rows = frame[frame["task"] == task]
            cosines = [rows.loc[rows["layer"] == layer, "cosine"].to_numpy() for layer in layers]
            share = [float((c >= threshold).mean()) if len(c) else np.nan for c in cosines]
            a.plot(range(len(layers)), share, color=color, lw=1.8 if side == "fine-tuned" else 1.1,
                   ls="-" if side == "fine-tuned" else "--", marker="o" if side == "fine-tuned" else "x",
                   label=str(task) if side == "fine-tuned" else None)  # fmt: skip
            slot = i * len(sides) + j
            positions = np.arange(len(layers)) + (slot - (slots - 1) / 2) * width
            parts = b.boxplot(
                [c if len(c) else [np.nan] for c in cosines],
                positions=positions,
                widths=width * 0.85,
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
            )
            for box in parts["boxes"]:
                if side == "fine-tuned":
                    box.set(facecolor=color, alpha=0.55, edgecolor=color)
                else:
                    box.set(facecolor="white", edgecolor=color, hatch="////", lw=1.0)
            for median in parts["medians"]:
                median.set(color="k")
    for ax in (a, b):
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("layer (hidden-state index)")
    a.set_ylabel(f"share of features with a twin\n(matched cosine >= {threshold:g})")
    a.set_ylim(-0.03, 1.03)
    a.set_title("A. features that keep a pre-trained twin", fontsize=10, loc="left")
    b.set_ylabel("decoder cosine with the best-\nmatching pre-trained feature")
    b.set_ylim(-0.05, 1.05)
    b.axhline(threshold, color="k", ls=":", lw=1.0)
    b.set_title("B. how close the best match is", fontsize=10, loc="left")
    task_handles, task_labels = a.get_legend_handles_labels()
    if has_control:  # the control's line style, drawn in grey, beside the tasks
        task_handles.append(Line2D([], [], color="0.4", ls="--", marker="x", lw=1.1))
        task_labels.append("control (another SAE seed)")
    a.legend(task_handles, task_labels, fontsize=8, frameon=False, ncol=2,
             loc="upper center", bbox_to_anchor=(0.5, -0.2))  # fmt: skip
    key: list[Artist] = [Patch(facecolor="0.5", alpha=0.55, edgecolor="0.4",
                 label="fine-tuned SAE vs pre-trained SAE")]  # fmt: skip
    if has_control:
        key.append(Patch(facecolor="white", edgecolor="0.3", hatch="////",
                         label="control: pre-trained SAE vs pre-trained SAE of another seed"))  # fmt: skip
    key.append(Line2D([], [], color="k", ls=":", label=f"twin threshold {threshold:g}"))
    b.legend(handles=key, fontsize=8, frameon=False, ncol=2, loc="upper center",
             bbox_to_anchor=(0.5, -0.2))  # fmt: skip
    fig.suptitle(title or "Which fine-tuned SAE features have a twin in the pre-trained SAE?",
                 fontsize=11, y=1.0)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_token_strips(rows, *, vmax: float | None = None, title: str | None = None):
    """Token-level activations as coloured strips (paper 1, Figs 3-5): one strip per row, each
    token a cell shaded by its activation and labelled with its text.

    ``rows``: a list of ``(label, tokens, values)``; strips of one call share a colour scale
    (``vmax``, default the largest value), so a pre-trained and a fine-tuned strip of the same
    sentence can be compared cell by cell.
    """
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


#: Line colour per depth of the SAE grid (early, middle, late layer).
DEPTH_COLORS = {"early": "#1f77b4", "middle": "#ff7f0e", "late": "#2ca02c"}


def plot_sae_training_grid(histories: dict, *, smooth: int = 10):
    """Training curves of a task x depth x model SAE grid: one row per task, MSE (scaled inputs,
    so about the FVU) and active latents a token (L0) against step; colour = depth, solid =
    fine-tuned, dashed = pre-trained. ``histories`` maps ``(task, depth, model)`` to a
    ``sae.TrainHistory``; curves are running means over ``smooth`` steps."""
    tasks = list(dict.fromkeys(k[0] for k in histories))
    fig, axes = plt.subplots(
        len(tasks), 2, figsize=(8.6, 2.3 * len(tasks) + 0.4), squeeze=False, sharex="row"
    )
    for row, task in enumerate(tasks):
        a, b = axes[row]
        for (t, depth, model), h in histories.items():
            if t != task:
                continue
            style = dict(
                color=DEPTH_COLORS.get(depth),
                ls="-" if model == "fine-tuned" else "--",
                lw=1.2,
                label=f"{depth}, {model}",
            )
            for ax, values in ((a, h.step_mse), (b, h.step_l0)):
                x, y = running_mean(values, smooth)
                every = max(1, len(x) // 120)  # at most ~120 points a line: small PNGs
                ax.plot(x[::every], y[::every], **style)
        a.set(ylabel=f"{task}\nMSE (~FVU)", yscale="log")
        b.set(ylabel="L0 (active latents)", yscale="log")
    axes[-1][0].set_xlabel("step")
    axes[-1][1].set_xlabel("step")
    axes[0][1].legend(fontsize=7, frameon=True, ncol=2)
    fig.tight_layout()
    return fig


def plot_latent_density_grid(frequencies: dict, *, dense_threshold: float = 0.1, bins: int = 30):
    """Latent firing-frequency histograms of an SAE grid: rows = tasks, columns = depths,
    pre-trained (grey) against fine-tuned (red). ``frequencies`` maps ``(task, depth, model)``
    to per-latent firing frequencies; dead latents (frequency 0) are counted in the legend."""
    tasks = list(dict.fromkeys(k[0] for k in frequencies))
    depths = list(dict.fromkeys(k[1] for k in frequencies))
    alive = [np.asarray(f)[np.asarray(f) > 0] for f in frequencies.values()]
    low = min((np.log10(f).min() for f in alive if len(f)), default=-4.0)
    edges = np.linspace(np.floor(low), 0.0, bins + 1).tolist()
    fig, axes = plt.subplots(
        len(tasks), len(depths), figsize=(3.0 * len(depths) + 0.6, 2.2 * len(tasks) + 0.5),
        squeeze=False, sharex=True,
    )  # fmt: skip
    for (task, depth, model), freq in frequencies.items():
        ax = axes[tasks.index(task)][depths.index(depth)]
        freq = np.asarray(freq)
        color = POST_COLOR if model == "fine-tuned" else PRE_COLOR
        dead = int((freq == 0).sum())
        ax.hist(np.log10(freq[freq > 0]), bins=edges, histtype="step", lw=1.4, color=color,
                label=f"{model} (dead {dead})")  # fmt: skip
        ax.axvline(np.log10(dense_threshold), color="k", ls="--", lw=0.7)
        ax.set_title(f"{task}, {depth}", fontsize=9)
        ax.legend(fontsize=7, frameon=True, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("log10 firing frequency")
    for row in axes:
        row[0].set_ylabel("latents")
    fig.tight_layout()
    return fig


def plot_sae_settings(curves: dict, l0: dict | None = None, *, points: int = 40, title=None):
    """Training curves of SAE settings on the same data against epochs (so runs with different
    batch sizes line up), one line per setting: training FVU and, with ``l0``, active latents a
    token. ``curves`` maps a label to ``(epochs, fvu)`` per step and ``l0`` a label to L0 per
    step (``sae_experiments.compare_settings(...)``: ``.curves``, ``.l0``); each curve is a
    running mean over 1/``points`` of its steps."""
    fig, axes = plt.subplots(1, 2 if l0 else 1, figsize=(10.5 if l0 else 5.8, 3.3), squeeze=False)
    a = axes[0][0]
    for label, (epochs, fvu) in curves.items():
        window = max(1, len(fvu) // points)
        steps, y = running_mean(fvu, window)
        (line,) = a.plot(epochs[steps], y, lw=1.3, label=str(label))
        if l0 and label in l0:
            steps, y = running_mean(l0[label], window)
            axes[0][1].plot(epochs[steps], y, lw=1.3, color=line.get_color())
    a.set(xlabel="epoch", ylabel="training FVU (running mean)", yscale="log")
    a.legend(fontsize=7, frameon=True)
    if l0:
        axes[0][1].set(xlabel="epoch", ylabel="active latents a token (L0)", yscale="log")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_token_strip_pairs(left, right, *, titles=("pre-trained", "fine-tuned"), title=None):
    """Token strips of two models side by side (paper 1, Figs 3-5, panels A/B): ``left`` and
    ``right`` are lists of ``(label, tokens, values)`` with values already on a 0-1 scale (e.g.
    divided by each feature's maximum over the data set), one strip per row."""
    cmap = colormaps["Reds"]
    panels = [p for p in (left, right) if p]
    if not panels:
        raise ValueError("Nothing to draw: both sides are empty.")

    def widths(rows):
        return [[max(len(t), 3) * 0.105 + 0.18 for t in tokens] for _, tokens, _ in rows]

    span = max(sum(w) for rows in panels for w in widths(rows))
    n_rows = max(len(rows) for rows in panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(min(2 * span + 3.5, 18), 0.42 * n_rows + 0.8), squeeze=False
    )
    for ax, rows, name in zip(axes[0], panels, titles, strict=False):
        for r, ((label, tokens, values), cell) in enumerate(zip(rows, widths(rows), strict=True)):
            y, x = n_rows - 1 - r, 0.0
            ax.text(-0.1, y + 0.4, str(label), ha="right", va="center", fontsize=7)
            for token, value, w in zip(tokens, values, cell, strict=True):
                v = float(np.clip(value, 0.0, 1.0))
                ax.add_patch(plt.Rectangle((x, y), w, 0.8, facecolor=cmap(v), edgecolor="white"))
                ax.text(x + w / 2, y + 0.4, token, ha="center", va="center", fontsize=6.5,
                        color="white" if v > 0.6 else "black")  # fmt: skip
                x += w
        ax.set_xlim(-0.05, span + 0.05)
        ax.set_ylim(-0.1, n_rows)
        ax.axis("off")
        ax.set_title(name, fontsize=9)
    fig.colorbar(
        plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap=cmap), ax=list(axes[0]),
        fraction=0.015, pad=0.01, label="activation / feature's max on the data",
    )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
