"""The nbval add-on that lets measured numbers in checked outputs move within a tolerance."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tests.nbval_tolerance import Tolerance, differences, parse_tolerance

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def nbval_run(pytester, monkeypatch):
    """Run nbval with the add-on on one notebook in a fresh pytest process."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def run(name):
        return pytester.runpytest_subprocess(
            "--nbval-lax", "--nbval-current-env", "-p", "tests.nbval_tolerance", name
        )

    return run


def test_parse_tolerance_reads_settings_and_ignores_the_reason():
    source = "# NBVAL_CHECK_OUTPUT\n# NBVAL_TOLERANCE rel=0.05 abs=0.01 (kernel paths)\nprint(1)"
    assert parse_tolerance(source) == Tolerance(rel=0.05, abs=0.01)
    assert parse_tolerance("# NBVAL_TOLERANCE abs=2\nx") == Tolerance(abs=2.0)
    assert parse_tolerance("# NBVAL_CHECK_OUTPUT\nprint(1)") is None


@pytest.mark.parametrize("bad", ["# NBVAL_TOLERANCE\n", "# NBVAL_TOLERANCE rel=five\n"])
def test_a_marker_without_settings_is_an_error_not_exact(bad):
    with pytest.raises(ValueError, match="NBVAL_TOLERANCE needs"):
        parse_tolerance(bad)


def test_negative_or_infinite_tolerance_is_refused():
    with pytest.raises(ValueError, match="rel must be a finite number"):
        Tolerance(rel=-0.1)
    with pytest.raises(ValueError, match="abs must be a finite number"):
        Tolerance(abs=float("inf"))


def test_measurements_move_within_the_bound_counts_do_not():
    tol = Tolerance(rel=0.1, abs=0.01)  # bound at 0.5: 0.06
    assert differences("FVU 0.50 at layer 3", "FVU 0.55 at layer 3", tol) == []
    [problem] = differences("FVU 0.50 at layer 3", "FVU 0.57 at layer 3", tol)
    assert "committed 0.50, now 0.57" in problem and "0.07 > 0.06" in problem
    [problem] = differences("FVU 0.50 at layer 3", "FVU 0.50 at layer 4", tol)
    assert "committed 3, now 4 (exact)" in problem


def test_text_must_match_but_padding_may_move():
    tol = Tolerance(rel=0.1)
    assert differences("a   9.99  b", "a  10.01  b", tol) == []  # a column one digit wider
    assert differences("rises 8.1%", "falls 8.1%", tol) is None  # a verdict changed
    assert differences("0.1 0.2", "0.1", tol) is None  # a number went missing


def test_numbers_inside_words_are_text():
    tol = Tolerance(rel=1.0, abs=1.0)
    assert differences("tweets-3way L0 step64", "tweets-3way L0 step64", tol) == []
    assert differences("tweets-3way", "tweets-4way", tol) is None
    assert differences("1e-3", "1.1e-3", Tolerance(rel=0.2)) == []
    assert differences("nan", "nan", tol) == []


def test_nbval_applies_each_cells_tolerance(pytester, nbval_run):
    """One notebook, one kernel: within the bound passes; beyond it, a changed count, or a
    number in a cell without a tolerance fails with the numbers named."""
    cells = [  # (what the cell prints now, what was committed)
        ("# NBVAL_CHECK_OUTPUT\n# NBVAL_TOLERANCE abs=0.005\nprint('FVU 0.2690 dead 3')", "FVU 0.2700 dead 3\n"),
        ("# NBVAL_CHECK_OUTPUT\n# NBVAL_TOLERANCE abs=0.005\nprint('FVU 0.2760 dead 3')", "FVU 0.2700 dead 3\n"),
        ("# NBVAL_CHECK_OUTPUT\n# NBVAL_TOLERANCE abs=0.005\nprint('FVU 0.2700 dead 4')", "FVU 0.2700 dead 3\n"),
        ("# NBVAL_CHECK_OUTPUT\nprint(0.2701)", "0.27\n"),
    ]  # fmt: skip
    nb = nbformat.v4.new_notebook()
    for i, (source, committed) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source, execution_count=i + 1)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=committed)]
        nb.cells.append(cell)
    nbformat.write(nb, str(pytester.path / "checks.ipynb"))
    result = nbval_run("checks.ipynb")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*committed 0.2700, now 0.2760; |difference| 0.006 > 0.005 (rel=0 abs=0.005)*",
            "*committed 3, now 4 (exact)*",
        ],
        consecutive=False,
    )
