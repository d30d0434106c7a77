"""summaries.pretraining: notebook 06's and 09's closing text, on tables made by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from repgeo_utils.lm.phases import phase_row, values_by_phase
from repgeo_utils.spectral import segment_phases
from repgeo_utils.summaries import pretraining as sp

STEPS = [0, 16, 64, 256, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
# collapse to 5 at step 64, rise to 30 at 2000, then a steady fall to 20 with a small wobble
RANKME = [20.0, 12.0, 5.0, 15.0, 28.0, 30.0, 28.1, 26.0, 23.9, 22.0, 20.1, 18.0]


def test_compression_verdict_against_the_noise():
    assert sp.compression_verdict(10.0, 1.0) == "compression present"
    assert sp.compression_verdict(2.9, 1.0) == "no compression beyond the noise"
    assert sp.compression_verdict(3.0, 1.0) == "no compression beyond the noise"  # not beyond 3x
    assert sp.compression_verdict(1.0, float("nan")) == "noise not measured"
    with pytest.raises(ValueError, match="fall"):
        sp.compression_verdict(float("nan"), 1.0)


def test_phase_sentences_name_the_phases_and_the_fall():
    seg = segment_phases(STEPS, RANKME)
    row = phase_row(STEPS, RANKME)
    text = "\n".join(sp.phase_sentences(seg, row, "RankMe (covariance)"))
    for name in sp.PHASES:
        assert f"**{name}**: RankMe (covariance) over steps" in text
    # peak 30 at 2,000, end 18: a fall of 12.0, 40% of the peak
    assert "peak 30.0 at step 2,000" in text and "a fall of 12.0 (40% of the peak)" in text
    assert "**compression present**" in text


def test_phase_sentences_without_compression():
    rising = [20.0, 12.0, 5.0, 15.0, 28.0, 30.0, 31.0, 32.0, 33.0, 34.0, 35.0, 36.0]
    seg = segment_phases(STEPS, rising)
    text = "\n".join(sp.phase_sentences(seg, phase_row(STEPS, rising), "RankMe"))
    assert "**compression-seeking**: not found in this run." in text
    assert "a fall of 0.0" in text and "**no compression beyond the noise**" in text


def test_alpha_direction_as_in_the_paper_and_opposite():
    seg = segment_phases(STEPS, RANKME)
    # alpha falls while RankMe rises and rises while it falls: the paper's direction
    alpha = [1.5, 1.6, 1.8, 1.3, 1.0, 0.9, 0.95, 1.0, 1.1, 1.2, 1.25, 1.3]
    sentence, verdict = sp.alpha_direction_text(
        values_by_phase(STEPS, alpha, seg), 0.01, "ranks 12..100"
    )
    assert verdict == "as in the paper" and "ranks 12..100" in sentence
    opposite = [2.0 - a for a in alpha]
    _, verdict = sp.alpha_direction_text(values_by_phase(STEPS, opposite, seg), 0.01, "r")
    assert verdict == "opposite to the paper in part"
    # changes inside twice the noise are no clear change
    _, verdict = sp.alpha_direction_text(values_by_phase(STEPS, alpha, seg), 1.0, "r")
    assert verdict == "partly as in the paper"


def _phases_table(falls, noises):
    rows = []
    for seed, (fall, noise) in enumerate(zip(falls, noises, strict=True)):
        rows.append({"seed": seed, "metric": "rankme_covariance", "initial": 50.0, "warmup_min": 10.0,
                     "warmup_min_step": 64.0, "peak": 40.0, "peak_step": 3000.0, "final": 40.0 - fall,
                     "final_step": 16000.0, "fall": fall, "fall_relative": fall / 40.0,
                     "checkpoint_noise": noise, "fall_in_noise_sds": fall / noise,
                     "compression_start_step": 3000.0,
                     "phases": "warmup, entropy-seeking, compression-seeking"})  # fmt: skip
    return pd.DataFrame(rows)


def test_recorded_summary_counts_seeds_and_reads_the_generations():
    phases = _phases_table([10.0, 2.0], [1.0, 1.0])  # seed 0 compresses, seed 1 within 3 sds
    by_phase = pd.DataFrame([{"phase": "entropy-seeking", "change": -0.3},
                             {"phase": "compression-seeking", "change": 0.2}])  # fmt: skip
    repetition = pd.DataFrame(
        {"step": [0, 16, 64, 256, 1000], "repeated_share": [0.1, 0.5, 0.8, 0.3, 0.2]}
    )
    text = sp.recorded_phase_summary(phases, by_phase, 0.01, repetition, fit="ranks 12..100")
    assert "Compression present in **1 of 2 seeds**" in text
    # falls of 25% and 5% of the peak: mean 15 ± 10 (half-range)
    assert "15 ± 10%" in text
    assert "0.80 at step 64" in text and "coincides with repetitive text" in text
    flat = repetition.assign(repeated_share=[0.9, 0.5, 0.1, 0.3, 0.2])
    assert "not the most repetitive point" in sp.recorded_phase_summary(
        phases, by_phase, 0.01, flat, fit="r"
    )


def _memorization(peak_value, final_value, spread=0.01):
    rows = []
    for split, shift in (("held-out", 0.0), ("training", 0.2)):
        for step, value in ((0, 0.05), (1000, peak_value), (16000, final_value)):
            rows.append(
                {"split": split, "step": step, "spearman": value + shift, "spearman_spread": spread}
            )
    return pd.DataFrame(rows)


def test_memorization_summary_peak_near_compression_and_fall():
    memo = _memorization(0.6, 0.4)
    peak = {"peak_step": 1000, "peak_spearman": 0.6, "peak_spread": 0.01,
            "final_step": 16000, "final_spearman": 0.4, "final_spread": 0.01}  # fmt: skip
    suffix = pd.DataFrame(
        {"split": ["held-out"] * 2, "suffix_length": ["<=3", ">=9"], "percent": [60.0, 5.0]}
    )
    text = sp.memorization_summary(memo, peak, 1500.0, suffix)
    assert "near the start of compression-seeking" in text and "**it falls after the peak**" in text
    assert "training text higher" in text
    lower = memo.assign(
        spearman=[
            v - 0.4 if sp_ == "training" else v
            for v, sp_ in zip(memo["spearman"], memo["split"], strict=True)
        ]
    )
    assert "training text lower" in sp.memorization_summary(lower, peak, 1500.0, suffix)
    assert "60% of held-out" in text and "5% of 9 or more" in text
    far = sp.memorization_summary(memo, peak, 16000.0, suffix)
    assert "not near the start" in far
    flat = dict(peak, final_spearman=0.59)
    assert "no clear fall after the peak" in sp.memorization_summary(
        memo, flat, float("nan"), suffix
    )


def test_downstream_summary_reads_probes_and_correlations():
    down = pd.DataFrame({"task": ["t"] * 4, "step": [0, 10, 100, 1000],
                         "probe_accuracy": [0.3, 0.5, 0.8, 0.7], "chance": [0.25] * 4,
                         "few_shot_above_chance": [False, False, True, "True"]})  # fmt: skip
    corr = pd.DataFrame([
        {"task": "t", "measure": "probe_accuracy", "against": "rankme_covariance", "checkpoints": 4,
         "from_step": 10, "spearman": 0.9, "spearman_p": 0.01},
        {"task": "t", "measure": "probe_accuracy", "against": "alpha", "checkpoints": 4,
         "from_step": 10, "spearman": -0.2, "spearman_p": 0.7},
        {"task": "t", "measure": "probe_accuracy", "against": "alpha", "checkpoints": 4,
         "from_step": 0, "spearman": 0.99, "spearman_p": 0.0001},
    ])  # fmt: skip
    text = sp.downstream_summary(down, corr)
    assert "best 0.80 at step 100" in text and "majority class 0.25" in text
    assert "at 2 of 4 checkpoints" in text
    assert (
        "rankme_covariance from step 10" in text and "Spearman +0.90 (p = 0.01): correlated" in text
    )
    assert "Spearman -0.20 (p = 0.7): no significant correlation" in text
    assert "+0.99" not in text  # only the correlations from the end of warmup are quoted
    weak = down.assign(few_shot_above_chance=False)
    assert "too weak to answer in context" in sp.downstream_summary(weak, corr)


def test_phase_findings_records_verdicts():
    row = phase_row(STEPS, RANKME)
    found = sp.phase_findings(row, "as in the paper", profile="quick",
                              recorded=_phases_table([10.0, 8.0], [1.0, 1.0]))  # fmt: skip
    assert found["quick.compression"].value == "compression present"
    assert found["standard.compression_seeds"].value == "2 of 2"
    assert found["standard.rankme.fall_relative"].value == pytest.approx(0.225)
    assert found["standard.rankme.fall_relative"].spread == pytest.approx(0.025)
    assert np.isfinite(found["quick.rankme.peak"].value)
