"""One figure style for every notebook, ``save_figure``, and what the plot modules share.

Figures show in the notebooks at a modest DPI (``DPI``) so committed notebooks stay small, and
are saved as PNG at ``SAVE_DPI``, sharp enough for a projector; the style's fonts are at least
``MIN_FONT_PT`` points at the saved size. Each figure is named after its notebook
(``01_finetuning_accuracy.png``); figures of a non-default profile go to
``figures/<profile>/`` so they never overwrite the committed quick-profile ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import FuncFormatter

from ..config import figures_dir

log = logging.getLogger(__name__)

#: Resolution of the figures shown inside the notebooks (kept low: notebooks embed them).
DPI = 110
#: Resolution of the PNGs that ``save_figure`` writes (read on a projector).
SAVE_DPI = 160
#: Smallest font size (points) of the style's text: tick labels, legends, annotations.
MIN_FONT_PT = 9

#: Colours for pre-trained vs fine-tuned, used by every notebook.
PRE_COLOR = "#7f7f7f"
POST_COLOR = "#d62728"


def use_style() -> None:
    """Apply the project's matplotlib/seaborn style (call once per notebook)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": SAVE_DPI,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": MIN_FONT_PT,
            "figure.max_open_warning": 0,
            # deterministic PNG bytes: no creation date in the metadata
            "svg.hashsalt": "repgeo",
        }
    )


def save_figure(fig, name: str, profile: str = "quick") -> Path:
    """Write ``fig`` to ``figures/<name>.png`` (``figures/<profile>/`` for non-quick profiles).

    ``name`` is a plain file name without the extension; ``profile`` a plain folder name (a
    profile's name), so a figure never lands outside ``figures/``."""
    if not hasattr(fig, "savefig"):
        raise TypeError(
            f"fig must be a matplotlib Figure, got {type(fig).__name__} {fig!r:.60}; pass the "
            "figure a plot function returned (or plt.gcf())"
        )
    for what, text in (("name", name), ("profile", profile)):
        if not isinstance(text, str) or not _plain_name(text):
            raise ValueError(f"Figure {what} must be a plain file name (no folders), got {text!r}")
    if name.lower().endswith(".png"):
        raise ValueError(f"Figure name must not end in .png (it is added), got {name!r}")
    folder = figures_dir() if profile == "quick" else figures_dir() / profile
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=SAVE_DPI, metadata={"Software": None})
    log.info("figure written: %s", path)
    return path


def _plain_name(text: str) -> bool:
    return bool(text.strip()) and text not in (".", "..") and not any(c in text for c in "/\\")


#: Line colours of the two models compared (pre-trained vs fine-tuned).
MODEL_COLORS = {"pre-trained": PRE_COLOR, "fine-tuned": POST_COLOR}


def running_mean(values, smooth: int):
    """``(x, y)`` of a running mean over ``smooth`` points (the values as they are when there
    are fewer than ``smooth``, or ``smooth <= 1``)."""
    values = np.asarray(values, dtype=float)
    if smooth <= 1 or len(values) < smooth:
        return np.arange(len(values)), values
    kernel = np.ones(smooth) / smooth
    return np.arange(smooth - 1, len(values)), np.convolve(values, kernel, mode="valid")


def log2_integer_axis(ax) -> None:
    """A base-2 log x axis labelled with plain integers (1, 2, 4, ...)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
