"""Notebook 08: the downstream metric with the top-k eigen-directions kept or removed."""

from __future__ import annotations

import matplotlib.pyplot as plt

from .style import log2_integer_axis


def plot_ablation(
    tables: dict,
    metrics: dict,
    *,
    floors: dict | None = None,
    mark_k=None,
    title: str | None = None,
):
    """Downstream metric when only the top-k eigen-directions are kept or when they are
    removed, against k (log axis); one panel per table (``spectral.ablation_sweep`` output),
    ``metrics[name] = (column, axis label)``. Dotted line: no ablation; dashed grey line:
    keep k = 0 (every token replaced by the mean), when the table has it; ``floors[name] =
    (value, label)`` adds another reference line (e.g. the majority-class accuracy);
    ``mark_k`` shades one k (e.g. the paper's 10)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 3.8), squeeze=False)
    for ax, (name, table) in zip(axes.flat, tables.items(), strict=True):
        column, label = metrics[name]
        base = float(table.loc[table["mode"] == "none", column].iloc[0])
        for mode, style in (("keep", "o-"), ("remove", "s--")):
            part = table[table["mode"] == mode].sort_values("k")
            part = part[part["k"] > 0]
            ax.plot(part["k"], part[column], style, ms=4, label=f"{mode} top-k")
        ax.axhline(base, color="k", lw=1.0, ls=":", label="no ablation", zorder=5)
        mean_only = table[(table["mode"] == "keep") & (table["k"] == 0)]
        if len(mean_only):
            ax.axhline(
                float(mean_only[column].iloc[0]),
                color="0.5",
                lw=1,
                ls="--",
                label="mean only (keep k = 0)",
            )
        if floors and name in floors:
            value, floor_label = floors[name]
            ax.axhline(value, color="0.3", lw=1, ls="-.", label=floor_label)
        if mark_k:
            ax.axvline(mark_k, color="0.85", lw=6, zorder=0)
        log2_integer_axis(ax)
        ax.set_xlabel(f"k (eigen-directions, of d = {int(table['k'].max())})")
        ax.set_ylabel(label)
        ax.set_title(name)
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig
