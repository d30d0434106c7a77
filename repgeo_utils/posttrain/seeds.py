"""Post-training over seeds, with and without a KL penalty in the RL stage, as tidy tables.

A stage's change means something only when it is larger than what another seed would give.
:func:`posttrain_over_seeds` runs SFT -> DPO -> GRPO for each seed (the seed redraws the task
split, DPO's rejected answers and every trainer's randomness) and each RL variant (GRPO with
TRL's ``beta`` = 0, no reference model, and with a KL penalty ``beta`` > 0; SFT and DPO are
shared between the variants through the stage cache), measures every checkpoint
(:func:`~repgeo_utils.posttrain.measure_posttraining`) and returns:

- ``changes``: one row per (variant, seed, stage, measure): start, end, change, relative;
- ``summary``: per (variant, stage, measure) the mean change over seeds, its spread (sample
  standard deviation and half-range), the ratio |mean| / sd, and a direction that counts
  only when the mean change exceeds twice the seed-to-seed sd (:func:`repgeo_utils.report.direction`);
- ``pass_at_k``: pass@k curves per (variant, seed, checkpoint), and the random-guess reference
  (:func:`random_pass_at_k`) for the task's answer space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .. import validate
from ..report import direction
from .measures import measure_posttraining, solved_counts, stage_summary
from .stages import STAGE_TITLES, PosttrainConfig, posttrain

log = logging.getLogger(__name__)

#: The measures whose stage-by-stage change the seed tables report.
SEED_MEASURES: tuple[str, ...] = (
    "rankme_covariance_probe",
    "alpha_probe",
    "rankme_covariance_prompts",
    "alpha_prompts",
    "id_nll",
    "ood_nll",
    "id_accuracy",
    "ood_accuracy",
)


def random_pass_at_k(answers: int, ks: Sequence[int]) -> pd.DataFrame:
    """pass@k of a policy that guesses uniformly among ``answers`` possible answers,
    ``1 - (1 - 1/answers)^k``: the reference a task's pass@k has to be read against (five
    labels reach 0.97 at k = 16)."""
    validate.integer("answers", answers, minimum=1)
    ks = [validate.positive_int("k", k) for k in ks]
    return pd.DataFrame(
        {"k": ks, "pass_at_k": [1.0 - (1.0 - 1.0 / answers) ** k for k in ks]}
    ).assign(checkpoint="random guess")


@dataclass
class SeedRuns:
    """What :func:`posttrain_over_seeds` returns."""

    changes: pd.DataFrame
    summary: pd.DataFrame
    trajectories: pd.DataFrame  # every checkpoint of every run, with variant and seed columns
    pass_at_k: pd.DataFrame  # k, pass_at_k, checkpoint, variant, seed
    random_reference: pd.DataFrame  # k, pass_at_k for a uniform guess over the answers
    solved: pd.DataFrame  # prompts solved by none / by all samples, per checkpoint
    answers: int  # size of the ID task's answer space
    seconds: pd.DataFrame  # training seconds per (variant, seed, stage)


def rl_variants(config: PosttrainConfig, kl_beta: float) -> dict[str, PosttrainConfig]:
    """The config with GRPO as it is and with TRL's KL penalty ``beta`` set: ``{"no KL": ..,
    "KL <beta>": ..}`` (the config's own ``kl_beta`` is taken as the first)."""
    validate.positive_float("kl_beta", kl_beta)
    plain = replace(config, rl=replace(config.rl, kl_beta=0.0))
    return {
        "no KL": plain,
        f"KL {kl_beta:g}": replace(config, rl=replace(config.rl, kl_beta=kl_beta)),
    }


def run_seed(
    config: PosttrainConfig,
    probe: Sequence[str],
    seed: int,
    *,
    kl_beta: float | None = 0.04,
    n_samples: int = 64,
    max_eval_rows: int | None = 200,
    num_threads: int | None = 1,
    progress: bool = True,
) -> dict[str, tuple]:
    """One seed of :func:`posttrain_over_seeds`: every RL variant trained (or reused) and
    measured; ``{variant: (PosttrainResult, PosttrainMeasurements)}``. Everything is cached,
    so worker processes can run seeds in parallel and the caller collects cache hits."""
    variants = {"as configured": config} if kl_beta is None else rl_variants(config, kl_beta)
    out = {}
    for name, variant in variants.items():
        run_config = replace(variant, seed=validate.non_negative_int("seed", seed))
        result = posttrain(run_config, num_threads=num_threads, progress=progress)
        measured = measure_posttraining(
            result, probe, n_samples=n_samples, max_eval_rows=max_eval_rows, progress=progress
        )
        out[name] = (result, measured)
    return out


def posttrain_over_seeds(
    config: PosttrainConfig,
    probe: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    kl_beta: float | None = 0.04,
    n_samples: int = 64,
    max_eval_rows: int | None = 200,
    measures: Sequence[str] = SEED_MEASURES,
    num_threads: int | None = 1,
    progress: bool = True,
) -> SeedRuns:
    """Run (or reuse) the three stages for each seed and RL variant and tabulate how each
    stage moves each measure. ``kl_beta`` None runs GRPO only as ``config`` says; otherwise
    both without and with that KL penalty. ``n_samples`` completions per ID prompt give
    pass@k for k = 1..n_samples."""
    seeds = [validate.non_negative_int("seeds[]", s) for s in seeds]
    if len(set(seeds)) < 2:
        raise ValueError(f"seeds must hold at least two different seeds, got {seeds}")
    validate.positive_int("n_samples", n_samples)
    changes: list[pd.DataFrame] = []
    trajectories: list[pd.DataFrame] = []
    curves: list[pd.DataFrame] = []
    solved: list[pd.DataFrame] = []
    seconds: list[dict[str, Any]] = []
    answers = 0
    for seed in seeds:
        runs = run_seed(config, probe, seed, kl_beta=kl_beta, n_samples=n_samples,
                        max_eval_rows=max_eval_rows, num_threads=num_threads,
                        progress=progress)  # fmt: skip
        for name, (result, measured) in runs.items():
            answers = len(result.id_data.answers)
            tags = {"variant": name, "seed": seed}
            present = [m for m in measures if m in measured.trajectory.columns]
            changes.append(stage_summary(measured.trajectory, present).assign(**tags))
            trajectories.append(measured.trajectory.assign(**tags))
            curves.append(measured.pass_at_k.assign(**tags))
            solved.append(solved_counts(measured.correct_counts, n_samples).assign(**tags))
            seconds.extend(
                {
                    **tags,
                    "stage": STAGE_TITLES[s],
                    "seconds": float(t),
                    "cached": bool(result.cached[s]),
                }  # fmt: skip
                for s, t in result.seconds.items()
            )
    change_table = pd.concat(changes, ignore_index=True)
    return SeedRuns(
        changes=change_table,
        summary=summarise_changes(change_table),
        trajectories=pd.concat(trajectories, ignore_index=True),
        pass_at_k=pd.concat(curves, ignore_index=True),
        random_reference=random_pass_at_k(answers, range(1, n_samples + 1)),
        solved=pd.concat(solved, ignore_index=True),
        answers=answers,
        seconds=pd.DataFrame(seconds),
    )


def summarise_changes(changes: pd.DataFrame, *, k: float = 2.0) -> pd.DataFrame:
    """Mean, sample sd and half-range over seeds of each (variant, stage, measure)'s change,
    with |mean| / sd and the direction (``up`` / ``down`` only when |mean| > ``k`` sd)."""
    rows = []
    for (variant, stage, measure), group in changes.groupby(
        ["variant", "stage", "measure"], sort=False
    ):
        change = group["change"].to_numpy(dtype=float)
        start = group["start"].to_numpy(dtype=float)
        sd = float(change.std(ddof=1)) if len(change) > 1 else float("nan")
        mean = float(change.mean())
        rows.append(
            {
                "variant": variant,
                "stage": stage,
                "measure": measure,
                "seeds": len(change),
                "start_mean": float(start.mean()),
                "change_mean": mean,
                "change_sd": sd,
                "change_half_range": float((change.max() - change.min()) / 2),
                "relative_mean": float(np.nanmean(group["relative"].to_numpy(dtype=float))),
                "signal_to_spread": (
                    abs(mean) / sd if sd > 0 else (float("inf") if mean else float("nan"))
                ),
                "same_sign_in_all_seeds": bool(np.all(change > 0) or np.all(change < 0)),
                "direction": (
                    direction(mean, sd if np.isfinite(sd) else 0.0, k=k)
                    if np.isfinite(mean)
                    else "not measured"
                ),
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "SEED_MEASURES",
    "SeedRuns",
    "posttrain_over_seeds",
    "random_pass_at_k",
    "rl_variants",
    "run_seed",
    "summarise_changes",
]
