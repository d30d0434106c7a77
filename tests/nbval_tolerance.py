"""nbval add-on: numbers in a checked notebook output may move within a stated tolerance.

nbval (``--nbval-lax``) compares the outputs of cells marked ``# NBVAL_CHECK_OUTPUT`` with the
committed ones as text. A number measured after training moves in its last digits from one
CPU to another (other kernels, other summation orders), so such a cell states how far it may
move, in a comment of its own:

    # NBVAL_CHECK_OUTPUT
    # NBVAL_TOLERANCE rel=0.05 abs=0.01  (why: benchmarks/reproducibility.md)

A checked output then matches its committed version when

- the text between numbers is the same (runs of white space count as one space, so a column
  that widens by a digit still matches);
- every number written without a decimal point or exponent (a count, a layer, a class) is the
  same, exactly;
- every number written with one (a measurement) differs from the committed one by at most
  ``abs + rel * |committed|``.

A cell without ``NBVAL_TOLERANCE`` is compared as nbval does (after the sanitizer), so exact
outputs stay exact. Loaded by ``make nbtest`` with ``-p tests.nbval_tolerance``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import nbval.plugin

MARKER = re.compile(r"^\s*#\s*NBVAL_TOLERANCE\b(?P<spec>.*)$", re.MULTILINE)
#: a number that is not part of a word: "3" in "layer 3" but not in "tweets-3way" or "L0"
NUMBER = re.compile(r"(?<![\w.])([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![\w.])")
_SETTING = re.compile(r"^(rel|abs)=([0-9.eE+-]+)$")


@dataclass(frozen=True)
class Tolerance:
    """``|test - committed| <= abs + rel * |committed|`` for numbers with a decimal point."""

    rel: float = 0.0
    abs: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rel", "abs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"NBVAL_TOLERANCE {name} must be a finite number >= 0, got {value}"
                )

    def bound(self, committed: float) -> float:
        return self.abs + self.rel * abs(committed)

    def __str__(self) -> str:
        return f"rel={self.rel:g} abs={self.abs:g}"


def parse_tolerance(source: str) -> Tolerance | None:
    """The tolerance a cell's ``# NBVAL_TOLERANCE rel=.. abs=..`` comment states, or None.

    Settings come first; anything after them (a reason, a reference) is ignored. A marker
    without a valid setting is an error, so a typo cannot silently mean "exact".
    """
    match = MARKER.search(source)
    if match is None:
        return None
    settings: dict[str, float] = {}
    for word in match.group("spec").split():
        found = _SETTING.match(word)
        if found is None:
            break
        settings[found.group(1)] = float(found.group(2))
    if not settings:
        raise ValueError(
            f"NBVAL_TOLERANCE needs rel=<number> and/or abs=<number>, got {match.group(0).strip()!r}"
        )
    return Tolerance(**settings)


def is_measurement(token: str) -> bool:
    return "." in token or "e" in token.lower()


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def differences(committed: str, test: str, tolerance: Tolerance) -> list[str] | None:
    """Where ``test`` leaves ``committed`` beyond ``tolerance``: ``[]`` when it matches, a list
    of readable differences when only numbers differ, ``None`` when the text itself differs
    (then nbval's own diff says more)."""
    ref_parts, test_parts = NUMBER.split(committed), NUMBER.split(test)
    if len(ref_parts) != len(test_parts):
        return None
    problems = []
    for i, (ref, new) in enumerate(zip(ref_parts, test_parts, strict=True)):
        if i % 2 == 0:  # text between numbers
            if squash(ref) != squash(new):
                return None
            continue
        context = squash("".join(ref_parts[max(0, i - 3) : i]))[-40:]
        if not (is_measurement(ref) or is_measurement(new)):
            if int(ref) != int(new):
                problems.append(f"count after '...{context}': committed {ref}, now {new} (exact)")
            continue
        a, b = float(ref), float(new)
        if math.isnan(a) and math.isnan(b):
            continue
        if not abs(b - a) <= tolerance.bound(a):
            problems.append(
                f"number after '...{context}': committed {ref}, now {new}; "
                f"|difference| {abs(b - a):.3g} > {tolerance.bound(a):.3g} ({tolerance})"
            )
    return problems


def _text_pairs(new: dict, old: dict):
    """(container in ``new``, key, committed text) for every text field ``new`` and ``old``
    share, with ``data`` flattened by MIME type as nbval does."""
    for key, value in new.items():
        if key == "data" and isinstance(old.get("data"), dict):
            for mime, text in value.items():
                if isinstance(text, str) and isinstance(old["data"].get(mime), str):
                    yield value, mime, old["data"][mime]
        elif key not in ("output_type", "metadata", "name") and isinstance(value, str):
            if isinstance(old.get(key), str):
                yield new, key, old[key]


_nbval_compare = nbval.plugin.IPyNbCell.compare_outputs


def compare_outputs(self, test, ref, skip_compare=None):
    """nbval's comparison, after numbers within the cell's tolerance are set to the committed
    ones; the numbers beyond it are listed in the failure report."""
    tolerance = parse_tolerance(self.cell.source)
    if tolerance is None:
        return _nbval_compare(self, test, ref, skip_compare)
    test = [copy.deepcopy(output) for output in test]  # keep the caller's outputs intact
    report = []
    if len(test) == len(ref):
        for new, old in zip(test, ref, strict=True):
            for container, key, committed in list(_text_pairs(new, old)):
                found = differences(
                    self.sanitize(committed), self.sanitize(container[key]), tolerance
                )
                if found == []:
                    container[key] = committed  # within tolerance: take the committed text
                elif found:
                    report += [f"{key}: {line}" for line in found]
    matched = _nbval_compare(self, test, ref, skip_compare)
    if not matched and report:
        self.comparison_traceback.append(
            f"Numbers outside NBVAL_TOLERANCE {tolerance}:\n  " + "\n  ".join(report)
        )
    return matched


def pytest_configure(config) -> None:
    nbval.plugin.IPyNbCell.compare_outputs = compare_outputs
