"""Notebooks 06 and 09: the pretraining phases of RankMe and alpha-ReQ over checkpoints, and
distributional memorization and downstream accuracy over the same checkpoints (paper 2,
sections 3.1-3.2, Figs 1-3, Table 1, appendix C.2).

Every sentence is conditional on the numbers it is given: a phase is named only where
:func:`repgeo_utils.spectral.segment_phases` found it, a fall counts as compression only when it
beats the measured noise :data:`NOISE_MULTIPLE` times over, a correlation is called one only at
p < :data:`ALPHA_LEVEL`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..report import Findings, agreement, direction, pm
from ..spectral import PhaseSegmentation

NOTEBOOK_PHASES = "06_pretraining_phases"
NOTEBOOK_MEMORIZATION = "09_memorization_downstream"
PHASES = ("warmup", "entropy-seeking", "compression-seeking")
#: A fall from the peak counts as compression when it exceeds this many noise sds.
NOISE_MULTIPLE = 3.0
#: Significance level for a correlation to be called one.
ALPHA_LEVEL = 0.05


def compression_verdict(fall: float, noise: float, *, k: float = NOISE_MULTIPLE) -> str:
    """``"compression present"`` when the fall from the peak exceeds ``k`` times the noise
    (checkpoint-to-checkpoint or seed sd), ``"no compression beyond the noise"`` otherwise,
    ``"noise not measured"`` when the noise is NaN."""
    if not math.isfinite(fall):
        raise ValueError(f"fall must be finite, got {fall}")
    if not math.isfinite(noise) or noise < 0:
        return "noise not measured"
    return "compression present" if fall > k * noise else "no compression beyond the noise"


def _stretch(seg: PhaseSegmentation, name: str) -> str | None:
    p = seg.first(name)
    if p is None:
        return None
    return (
        f"steps {p.start_step:,.0f}-{p.end_step:,.0f} "
        f"({p.start_value:.1f} -> {p.end_value:.1f}, smoothed)"
    )


def phase_sentences(
    seg: PhaseSegmentation, row: Mapping[str, float | str], metric: str
) -> list[str]:
    """Markdown bullets for one trajectory: each of the three phases where it was found, and
    the raw path (start, warmup minimum, peak, end) with the fall against its noise.
    ``row`` is :func:`repgeo_utils.lm.phases.phase_row` of the same trajectory."""
    lines = []
    for name in PHASES:
        s = _stretch(seg, name)
        lines.append(f"- **{name}**: " + (f"{metric} over {s}." if s else "not found in this run."))
    fall, noise = float(row["fall"]), float(row["checkpoint_noise"])
    verdict = compression_verdict(fall, noise)
    noise_text = (
        f"{fall / noise:.0f} times the checkpoint-to-checkpoint noise (sd {noise:.2f})"
        if math.isfinite(noise) and noise > 0
        else "noise not measured"
    )
    lines.append(
        f"- Raw {metric}: {float(row['initial']):.1f} at initialisation, "
        f"{float(row['warmup_min']):.1f} at step {float(row['warmup_min_step']):,.0f}, peak "
        f"{float(row['peak']):.1f} at step {float(row['peak_step']):,.0f}, "
        f"{float(row['final']):.1f} at the end: a fall of {fall:.1f} "
        f"({100 * float(row['fall_relative']):.0f}% of the peak), {noise_text}: **{verdict}**."
    )
    return lines


def alpha_direction_text(by_phase: pd.DataFrame, noise: float, fit: str) -> tuple[str, str]:
    """How alpha-ReQ moved over RankMe's entropy-seeking and compression-seeking stretches
    (``by_phase``: :func:`repgeo_utils.lm.phases.values_by_phase` of alpha), against the
    paper (alpha falls while RankMe expands, rises while it compresses), each change judged
    against twice ``noise``. Returns (sentence, verdict)."""
    expected = {"entropy-seeking": "down", "compression-seeking": "up"}
    parts, verdicts = [], []
    for phase, paper in expected.items():
        rows = by_phase[by_phase["phase"] == phase]
        if rows.empty or not np.isfinite(rows["change"].iloc[0]):
            parts.append(f"no {phase} stretch to compare")
            continue
        change = float(rows["change"].iloc[0])
        ours = direction(change, noise if math.isfinite(noise) else 0.0)
        verdicts.append(agreement(ours, paper))  # type: ignore[arg-type]
        parts.append(f"{change:+.2f} over the {phase} stretch ({agreement(ours, paper)})")  # type: ignore[arg-type]
    if not verdicts:
        verdict = "not comparable"
    elif all(v == "as in the paper" for v in verdicts):
        verdict = "as in the paper"
    elif any(v == "opposite to the paper" for v in verdicts):
        verdict = "opposite to the paper in part"
    else:
        verdict = "partly as in the paper"
    noise_text = f"noise sd {noise:.2f}" if math.isfinite(noise) else "noise not measured"
    return (
        f"alpha-ReQ (fit over {fit}) changed by " + "; ".join(parts) + f" ({noise_text}).",
        verdict,
    )


def quick_summary(
    seg: PhaseSegmentation,
    row: Mapping[str, float | str],
    by_phase: pd.DataFrame,
    alpha_noise: float,
    layer_table: pd.DataFrame,
    *,
    header: str,
    fit: str,
    loss_start: float,
    loss_end: float,
) -> str:
    """Notebook 06's closing text for the live run."""
    lines = [header, ""]
    lines += phase_sentences(seg, row, "RankMe (covariance)")
    lines.append(
        f"- Validation loss fell from {loss_start:.2f} to {loss_end:.2f}"
        + (
            ", still falling while RankMe compressed."
            if seg.first("compression-seeking") is not None
            else "."
        )
    )
    sentence, verdict = alpha_direction_text(by_phase, alpha_noise, fit)
    lines.append(f"- {sentence} Overall: **{verdict}**.")
    full = [
        str(layer)
        for layer, phases in zip(layer_table["layer"], layer_table["phases"], strict=True)
        if all(name in str(phases) for name in PHASES)
    ]
    lines.append(
        "- Per layer, all three phases in RankMe (covariance) at hidden_states "
        + (", ".join(full) if full else "none")
        + f" of {len(layer_table)}."
    )
    return "\n".join(lines)


def recorded_phase_summary(
    phases: pd.DataFrame,
    by_phase: pd.DataFrame,
    alpha_noise: float,
    repetition: pd.DataFrame | None,
    *,
    fit: str,
    metric: str = "rankme_covariance",
) -> str:
    """Notebook 06's text for the recorded standard run: the three phases per seed, the fall
    against the checkpoint noise and against the seed spread, alpha per phase, and what the
    early generations did at the warmup collapse."""
    part = phases[phases["metric"] == metric].sort_values("seed")
    lines = []
    present = 0
    for _, r in part.iterrows():
        verdict = compression_verdict(float(r["fall"]), float(r["checkpoint_noise"]))
        present += verdict == "compression present"
        lines.append(
            f"- seed {int(r['seed'])}: {r['phases']}; warmup minimum {r['warmup_min']:.1f} at step "
            f"{r['warmup_min_step']:,.0f}, peak {r['peak']:.1f} at step {r['peak_step']:,.0f}, "
            f"end {r['final']:.1f}: fall {r['fall']:.1f} ({100 * r['fall_relative']:.0f}%), "
            f"{r['fall_in_noise_sds']:.0f} checkpoint-noise sds: **{verdict}**."
        )
    falls = part["fall_relative"].to_numpy(dtype=float) * 100
    spread = float((falls.max() - falls.min()) / 2) if len(falls) > 1 else None
    lines.insert(
        0,
        f"- Compression present in **{present} of {len(part)} seeds**; the fall from the peak is "
        f"{pm(float(falls.mean()), spread, unit='%')} of the peak over seeds (mean ± half-range).",
    )
    sentence, verdict = alpha_direction_text(by_phase, alpha_noise, fit)
    lines.append(f"- Main seed: {sentence} Overall: **{verdict}**.")
    if repetition is not None and not repetition.empty:
        rep = repetition.sort_values("step")
        main = part.iloc[0]
        at = rep.iloc[(rep["step"] - float(main["warmup_min_step"])).abs().argsort().iloc[0]]
        start, end = rep.iloc[0], rep.iloc[-1]
        lines.append(
            f"- Early generations: the share of repeated tokens in greedy continuations was "
            f"{start['repeated_share']:.2f} at initialisation, {at['repeated_share']:.2f} at step "
            f"{at['step']:,.0f} (near the warmup minimum of RankMe) and {end['repeated_share']:.2f} "
            f"at step {end['step']:,.0f}"
            + (
                ": the collapse coincides with repetitive text, as in the paper's Fig 7."
                if at["repeated_share"] > max(start["repeated_share"], end["repeated_share"])
                else ": the collapse is not the most repetitive point here."
            )
        )
    return "\n".join(lines)


def memorization_summary(
    memorization: pd.DataFrame,
    peak: Mapping[str, float],
    compression_start: float,
    suffix: pd.DataFrame,
) -> str:
    """Notebook 09's memorization text: where the held-out Spearman correlation with the
    infini-gram estimate peaks against the start of compression, whether it falls after the
    peak by more than twice its spread, training against held-out text, and the share of
    predicted tokens with a long matching suffix."""
    lines = []
    ps, pv, psd = float(peak["peak_step"]), float(peak["peak_spearman"]), float(peak["peak_spread"])
    fv, fsd = float(peak["final_spearman"]), float(peak["final_spread"])
    spread = math.hypot(psd, fsd)
    falls = direction(fv - pv, spread) == "down"
    if math.isfinite(compression_start) and compression_start > 0 and ps > 0:
        ratio = ps / compression_start
        near = 0.5 <= ratio <= 2.0
        where = (
            f"{'near' if near else 'not near'} the start of compression-seeking (step "
            f"{compression_start:,.0f}; peak / start = {ratio:.1f}, 'near' meaning within a "
            "factor of 2 on the log clock)"
        )
    else:
        where = "with no compression-seeking stretch to compare it with"
    lines.append(
        f"- The held-out Spearman correlation between the LM's next-token probability and the "
        f"infini-gram estimate peaks at {pm(pv, psd)} at step {ps:,.0f}, {where}; at the end it is "
        f"{pm(fv, fsd)}: "
        + (
            "**it falls after the peak** (more than twice the combined spread)."
            if falls
            else "**no clear fall after the peak** (within twice the combined spread)."
        )
    )
    end = memorization.sort_values("step").groupby("split").tail(1).set_index("split")
    if {"training", "held-out"} <= set(end.index):
        t, h = end.loc["training"], end.loc["held-out"]
        gap = direction(
            float(t["spearman"] - h["spearman"]),
            math.hypot(float(t["spearman_spread"]), float(h["spearman_spread"])),
        )
        how = {
            "up": "training text higher: the LM tracks the counts of what it saw more closely",
            "down": "training text lower: a training sequence finds itself in the index, so its "
            "longest suffix is long and the estimate near 1 for most tokens, which leaves little "
            "to rank",
            "no clear change": "no clear difference between the splits",
        }[gap]
        lines.append(
            f"- At the last checkpoint: training text "
            f"{pm(float(t['spearman']), float(t['spearman_spread']))}, held-out text "
            f"{pm(float(h['spearman']), float(h['spearman_spread']))} ({how})."
        )
    held = suffix[suffix["split"] == "held-out"].set_index("suffix_length")
    if not held.empty:
        short = float(held.loc["<=3", "percent"]) if "<=3" in held.index else float("nan")
        long = float(held.loc[">=9", "percent"]) if ">=9" in held.index else float("nan")
        lines.append(
            f"- Table 1: {short:.0f}% of held-out predicted tokens have a longest matching suffix "
            f"of at most 3 tokens in the training corpus, {long:.0f}% of 9 or more."
        )
    return "\n".join(lines)


def downstream_summary(downstream: pd.DataFrame, correlations: pd.DataFrame) -> str:
    """Notebook 09's downstream text: probe accuracy per task at the start, best and end
    against the majority class, few-shot accuracy where it beats chance, and the correlations
    with RankMe and alpha (from the end of warmup on) at p < :data:`ALPHA_LEVEL`."""
    lines = []
    for task, part in downstream.sort_values("step").groupby("task", sort=True):
        acc = part["probe_accuracy"].to_numpy(dtype=float)
        best = int(np.argmax(acc))
        chance = float(part["chance"].iloc[0])
        line = (
            f"- **{task}**: linear-probe accuracy {acc[0]:.2f} at initialisation, best "
            f"{acc[best]:.2f} at step {part['step'].iloc[best]:,.0f}, {acc[-1]:.2f} at the end "
            f"(majority class {chance:.2f})"
        )
        if "few_shot_above_chance" in part.columns:
            above = part["few_shot_above_chance"].astype(str).str.lower() == "true"
            line += (
                f"; few-shot accuracy above chance (binomial p < 0.05) at {int(above.sum())} of "
                f"{len(part)} checkpoints"
                + ("" if above.any() else ": the model is too weak to answer in context")
            )
        lines.append(line + ".")
        corr = correlations[
            (correlations["task"] == task)
            & (correlations["measure"] == "probe_accuracy")
            & (correlations["from_step"] == correlations["from_step"].max())
        ]
        for _, c in corr.iterrows():
            if not np.isfinite(c["spearman"]):
                continue
            called = "correlated" if c["spearman_p"] < ALPHA_LEVEL else "no significant correlation"
            lines.append(
                f"  - probe accuracy vs {c['against']} from step {c['from_step']:,.0f} on "
                f"({int(c['checkpoints'])} checkpoints): Spearman {c['spearman']:+.2f} "
                f"(p = {c['spearman_p']:.2g}): {called}."
            )
    return "\n".join(lines)


def phase_findings(
    row: Mapping[str, float | str],
    alpha_verdict: str,
    *,
    profile: str,
    parameters: dict | None = None,
    recorded: pd.DataFrame | None = None,
) -> Findings:
    """Notebook 06's headline numbers and verdicts (live run; the recorded run's per seed)."""
    found = Findings(NOTEBOOK_PHASES, profile=profile, parameters=dict(parameters or {}))
    found.number("quick.rankme.peak", float(row["peak"]))
    found.number("quick.rankme.fall_relative", float(row["fall_relative"]))
    found.verdict(
        "quick.compression",
        compression_verdict(float(row["fall"]), float(row["checkpoint_noise"])),
    )
    found.verdict("quick.alpha_direction", alpha_verdict)
    if recorded is not None:
        part = recorded[recorded["metric"] == "rankme_covariance"]
        falls = part["fall_relative"].to_numpy(dtype=float)
        found.number(
            "standard.rankme.fall_relative",
            float(falls.mean()),
            spread=float((falls.max() - falls.min()) / 2) if len(falls) > 1 else None,
            spread_source="half-range over pretraining seeds",
        )
        present = sum(
            compression_verdict(float(r["fall"]), float(r["checkpoint_noise"]))
            == "compression present"
            for _, r in part.iterrows()
        )
        found.verdict("standard.compression_seeds", f"{present} of {len(part)}")
    return found
