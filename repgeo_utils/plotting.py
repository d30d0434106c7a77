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

# --- SAEs and token pictures (notebooks 03-04) ---------------------------------------------

# --- spectral geometry, pretraining phases, toy model (notebooks 05-07) --------------------
