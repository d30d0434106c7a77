"""Reading a checkpoint trajectory: the phases with their noise, alpha per phase, and bases
spread over the phases.

- :func:`checkpoint_noise`: the checkpoint-to-checkpoint scatter of a trajectory, from the
  second differences of its evenly spaced late checkpoints (a smooth trend cancels; white
  noise of sd ``s`` gives second differences of sd ``s * sqrt(6)``);
- :func:`phase_table`: per seed, the warmup minimum, the peak after it, the end, the
  compression-seeking fall and how many noise sds it spans;
- :func:`seed_spread`: mean and spread over seeds of the numbers in the phase table;
- :func:`values_by_phase`: a metric (alpha-ReQ) averaged within each phase of RankMe's
  segmentation;
- :func:`bases_across_phases`: checkpoints spread over the phases, for SFT from successive
  checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import validate
from ..spectral import PhaseSegmentation, segment_phases


def checkpoint_noise(
    steps: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    from_step: float = 1000,
) -> float:
    """Checkpoint-to-checkpoint sd of ``values``: the sd of the second differences of the
    checkpoints from ``from_step`` on (which must be evenly spaced), divided by sqrt(6).
    NaN when fewer than four checkpoints qualify."""
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = s >= from_step
    s, v = s[keep], v[keep]
    if len(v) < 4:
        return float("nan")
    gaps = np.diff(s)
    if not np.allclose(gaps, gaps[0], rtol=1e-6):
        # the last checkpoint may close a run off the regular grid: drop it
        s, v = s[:-1], v[:-1]
        gaps = np.diff(s)
        if len(v) < 4 or not np.allclose(gaps, gaps[0], rtol=1e-6):
            raise ValueError(f"checkpoints from step {from_step:g} on are not evenly spaced.")
    second = np.diff(v, n=2)
    return float(second.std(ddof=1) / np.sqrt(6.0))


def phase_row(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    min_change: float = 0.05,
    noise_from_step: float = 1000,
) -> dict[str, float | str]:
    """The phase numbers of one trajectory (RankMe per checkpoint): initial value, warmup
    minimum and its step, peak after it and its step, end value, the fall from the peak
    (absolute and relative), the checkpoint-to-checkpoint noise and the fall in units of it,
    and the phases :func:`repgeo_utils.spectral.segment_phases` finds."""
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    low = int(np.argmin(v))
    peak = low + int(np.argmax(v[low:]))
    noise = checkpoint_noise(s, v, from_step=noise_from_step)
    fall = float(v[peak] - v[-1])
    seg = segment_phases(s, v, min_change=min_change)
    comp = seg.first("compression-seeking")
    return {
        "initial": float(v[0]),
        "warmup_min": float(v[low]),
        "warmup_min_step": float(s[low]),
        "peak": float(v[peak]),
        "peak_step": float(s[peak]),
        "final": float(v[-1]),
        "final_step": float(s[-1]),
        "fall": fall,
        "fall_relative": fall / float(v[peak]) if v[peak] else float("nan"),
        "checkpoint_noise": noise,
        "fall_in_noise_sds": fall / noise if noise and np.isfinite(noise) else float("nan"),
        "compression_start_step": float(comp.start_step) if comp else float("nan"),
        "phases": ", ".join(p.name for p in seg.phases),
    }


def phase_table(
    table: pd.DataFrame,
    metric: str = "rankme_covariance",
    *,
    by: str = "seed",
    min_change: float = 0.05,
    noise_from_step: float = 1000,
) -> pd.DataFrame:
    """:func:`phase_row` of ``metric`` for each ``by`` group of a per-checkpoint table (one
    row per checkpoint and group, a ``step`` column)."""
    rows = []
    for name, group in table.sort_values("step").groupby(by, sort=True):
        rows.append({by: name, "metric": metric, **phase_row(group["step"], group[metric],
                     min_change=min_change, noise_from_step=noise_from_step)})  # fmt: skip
    return pd.DataFrame(rows)


def seed_spread(phases: pd.DataFrame, columns: Sequence[str] = ("peak", "final", "fall",
                "fall_relative", "peak_step", "warmup_min_step", "checkpoint_noise")
                ) -> pd.DataFrame:  # fmt: skip
    """Mean, sample sd, half-range, minimum and maximum over the rows (seeds) of each of
    ``columns`` of a :func:`phase_table`."""
    rows = []
    for column in columns:
        x = phases[column].to_numpy(dtype=float)
        rows.append({"quantity": column, "seeds": len(x), "mean": float(x.mean()),
                     "sd": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                     "half_range": float((x.max() - x.min()) / 2), "min": float(x.min()),
                     "max": float(x.max())})  # fmt: skip
    return pd.DataFrame(rows)


def values_by_phase(
    steps: Sequence[float], values: Sequence[float], segmentation: PhaseSegmentation
) -> pd.DataFrame:
    """``values`` (e.g. alpha-ReQ) over each stretch of ``segmentation`` (e.g. of RankMe):
    its value at the stretch's start and end checkpoints, its mean over the stretch, and the
    change."""
    v = np.asarray(values, dtype=float)
    if len(v) != len(steps):
        raise ValueError(f"{len(v)} values for {len(steps)} steps.")
    rows = []
    for phase in segmentation.phases:
        part = v[phase.start_index : phase.end_index + 1]
        rows.append({"phase": phase.name, "start_step": phase.start_step,
                     "end_step": phase.end_step, "start": float(v[phase.start_index]),
                     "end": float(v[phase.end_index]), "mean": float(part.mean()),
                     "change": float(v[phase.end_index] - v[phase.start_index])})  # fmt: skip
    return pd.DataFrame(rows)


def bases_across_phases(
    steps: Sequence[int], segmentation: PhaseSegmentation, n: int = 7
) -> list[int]:
    """``n`` checkpoint steps for SFT from successive checkpoints: log-spaced between the
    warmup minimum (or the first checkpoint after step 0) and the last checkpoint, each
    snapped to the nearest saved step; the ends of the entropy-seeking stretch are always
    included so that every phase holds bases."""
    validate.integer("n", n, minimum=2)
    saved = sorted(int(x) for x in steps)
    positive = [x for x in saved if x > 0]
    if len(positive) < 2:
        raise ValueError("bases_across_phases needs at least two checkpoints after step 0.")
    warm = segmentation.first("warmup")
    first = int(warm.end_step) if warm and warm.end_step > 0 else positive[0]
    grid = np.geomspace(first, positive[-1], n)
    picks: set[int] = set()
    for g in grid:
        picks.add(min(positive, key=lambda x: abs(float(np.log(x) - np.log(g)))))
    entropy = segmentation.first("entropy-seeking")
    if entropy is not None:
        picks.update(int(x) for x in (entropy.start_step, entropy.end_step) if x > 0)
    picks.add(positive[-1])
    return sorted(picks)


__all__ = [
    "bases_across_phases",
    "checkpoint_noise",
    "phase_row",
    "phase_table",
    "seed_spread",
    "values_by_phase",
]
