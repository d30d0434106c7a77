"""Numbers with the digits that survive, verdicts from changes and noise, recorded findings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from repgeo_utils import report


@pytest.mark.parametrize(
    ("spread", "decimals"),
    [(0.5, 1), (0.14, 2), (0.19, 2), (0.2, 1), (3, 0), (1.2, 1), (40, -1), (0.0042, 3), (1, 1)],
)
def test_decimals_follow_the_spreads_first_significant_digit(spread, decimals):
    assert report.decimals_for(spread) == decimals


@pytest.mark.parametrize(
    ("value", "spread", "text"),
    [
        (8.13, 0.5, "8.1 ± 0.5"),
        (8.13, 1.2, "8.1 ± 1.2"),
        (8.13, 2.4, "8 ± 2"),
        (17.614, 0.02, "17.61 ± 0.02"),
        (-0.004, 0.3, "0.0 ± 0.3"),  # no "-0.0"
        (1234.0, 40, "1230 ± 40"),
        (0.2699, None, "0.27"),
    ],
)
def test_pm_keeps_only_the_digits_that_survive(value, spread, text):
    assert report.pm(value, spread) == text


def test_pm_unit_and_numpy_scalars():
    assert report.pm(np.float32(11.68), np.float64(1.55), unit="%") == "11.7 ± 1.6%"
    with pytest.raises(TypeError, match="value must be a number, got 'x'"):
        report.pm("x", 1.0)
    with pytest.raises(ValueError, match="spread must be a positive finite number, got nan"):
        report.decimals_for(math.nan)


def test_half_range():
    assert report.half_range([8.1, 11.2, 9.0]) == pytest.approx(1.55)
    with pytest.raises(ValueError, match="at least one value"):
        report.half_range([])


@pytest.mark.parametrize(
    ("change", "noise", "expected"),
    [(1.0, 0.4, "up"), (-1.0, 0.4, "down"), (0.7, 0.4, "no clear change"), (0.0, 0.0, "no clear change"),
     (1e-9, 0.0, "up")],
)  # fmt: skip
def test_direction_needs_the_change_to_beat_k_times_the_noise(change, noise, expected):
    assert report.direction(change, noise, k=2) == expected


def test_direction_refuses_bad_noise():
    with pytest.raises(ValueError, match="noise must be a finite number >= 0, got -1"):
        report.direction(1.0, -1.0)
    with pytest.raises(ValueError, match="change must be finite, got nan"):
        report.direction(math.nan, 1.0)


def test_agreement():
    assert report.agreement("up", "up") == "as in the paper"
    assert report.agreement("down", "up") == "opposite to the paper"
    assert report.agreement("no clear change", "up") == "no clear change (paper: up)"
    with pytest.raises(
        ValueError, match="paper must be 'up', 'down' or 'no clear change', got 'rise'"
    ):
        report.agreement("up", "rise")


def test_findings_round_trip(tmp_path):
    found = report.Findings("07_toy", profile="quick", parameters={"SEED": 0})
    found.number("fall_pct", 11.68, spread=1.55, spread_source="seeds 0-4", unit="%")
    found.verdict("compression", "present")
    path = found.save(tmp_path)
    assert json.loads(path.read_text())["findings"]["fall_pct"]["spread_source"] == "seeds 0-4"
    back = report.load_findings("07_toy", folder=tmp_path)
    assert str(back["fall_pct"]) == "11.7 ± 1.6%" and str(back["compression"]) == "present"
    assert back.parameters == {"SEED": 0}
    with pytest.raises(KeyError, match="recorded no finding 'rise'"):
        back["rise"]


def test_findings_refuse_a_spread_without_its_source_and_empty_verdicts(tmp_path):
    found = report.Findings("x")
    with pytest.raises(ValueError, match="fall: say where its spread comes from"):
        found.number("fall", 1.0, spread=0.1)
    with pytest.raises(ValueError, match="a verdict is a non-empty text"):
        found.verdict("v", "")
    with pytest.raises(FileNotFoundError, match="run notebook nope first"):
        report.load_findings("nope", folder=tmp_path)
