"""Numbers with the precision that survives, verdicts computed from them, and a record of what
each notebook found.

A measured number moves when the seed, the machine's kernels or the sample changes. This
module writes it with no more digits than survive that spread, turns a change into a verdict
only when it is larger than its noise, and keeps each notebook's headline results in a small
JSON file (:class:`Findings`) that the overview notebook and the reproducibility record read.

- :func:`pm` writes ``8.1 ± 0.5``: the spread rounded to one significant digit (two when
  that digit is a 1), the value rounded to the same decimal place (the usual rule of
  metrology).
- :func:`direction` says ``"up"``, ``"down"`` or ``"no clear change"``: a change counts only
  when it exceeds ``k`` times its noise.
- :func:`agreement` compares a direction with a paper's.
- :class:`Findings` records named numbers (with their spread and where it comes from) and
  verdicts, and saves them as ``findings/<notebook>.json`` next to the notebook's figures.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import validate
from .config import ROOT, figures_dir

Direction = Literal["up", "down", "no clear change"]

#: Where the reproducibility record (spreads between kernel paths and seeds) is kept.
REPRODUCIBILITY_FILE = ROOT / "benchmarks" / "results" / "reproducibility.json"


# --- numbers with their spread -----------------------------------------------------------------


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, str | bytes):  # float() would read "8.1"; a number is wanted
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # NumPy scalars
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number, got {value!r}") from None
    return float(value)


def decimals_for(spread: float) -> int:
    """Decimal places that a number with this spread keeps: the spread's first significant
    digit, or its second when the first is a 1 (0.5 -> 1, 0.14 -> 2, 3 -> 0, 40 -> -1)."""
    spread = _check_number("spread", spread)
    if not (math.isfinite(spread) and spread > 0):
        raise ValueError(f"spread must be a positive finite number, got {spread}")
    exponent = math.floor(math.log10(spread))
    leading = int(spread / 10**exponent + 1e-9)
    return -exponent + (1 if leading == 1 else 0)


def round_to(value: float, decimals: int) -> str:
    """``value`` rounded to ``decimals`` places (negative: tens, hundreds), as text."""
    value = _check_number("value", value)
    if not math.isfinite(value):
        return str(value)
    if decimals >= 0:
        text = f"{value:.{decimals}f}"
    else:
        text = f"{round(value, decimals):.0f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


def pm(value: float, spread: float | None, *, digits: int = 2, unit: str = "") -> str:
    """``value ± spread`` with the digits that survive the spread (see :func:`decimals_for`).

    Without a spread (``None`` or 0) the value is written with ``digits`` decimals and no
    ``±``. ``unit`` is appended at the end (``"8.1 ± 0.5%"``).
    """
    value = _check_number("value", value)
    digits = validate.integer("digits", digits)
    if spread is None or spread == 0:
        return f"{round_to(value, digits)}{unit}"
    spread = abs(_check_number("spread", spread))
    decimals = decimals_for(spread)
    return f"{round_to(value, decimals)} ± {round_to(spread, decimals)}{unit}"


def half_range(values: Any) -> float:
    """Half the distance between the smallest and the largest of ``values`` (a spread that
    needs no distribution: with two runs, half their difference)."""
    numbers = [_check_number("values[]", v) for v in values]
    if not numbers:
        raise ValueError("half_range needs at least one value.")
    return (max(numbers) - min(numbers)) / 2


# --- verdicts ----------------------------------------------------------------------------------


def direction(change: float, noise: float, *, k: float = 2.0) -> Direction:
    """``"up"`` or ``"down"`` when ``|change| > k * noise``, else ``"no clear change"``.

    ``noise`` is the spread the change has to beat (seed-to-seed, checkpoint-to-checkpoint,
    kernel paths); 0 makes any non-zero change count.
    """
    change, noise = _check_number("change", change), _check_number("noise", noise)
    if not math.isfinite(change):
        raise ValueError(f"change must be finite, got {change}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    validate.positive_float("k", k)
    if abs(change) <= k * noise or change == 0:
        return "no clear change"
    return "up" if change > 0 else "down"


def agreement(ours: Direction, paper: Direction) -> str:
    """How our direction compares with the paper's: ``"as in the paper"``, ``"opposite to the
    paper"``, or ``"no clear change (paper: up)"``."""
    for name, value in (("ours", ours), ("paper", paper)):
        if value not in ("up", "down", "no clear change"):
            raise ValueError(f"{name} must be 'up', 'down' or 'no clear change', got {value!r}")
    if ours == paper:
        return "as in the paper"
    if ours == "no clear change" or paper == "no clear change":
        return f"{ours} (paper: {paper})"
    return "opposite to the paper"


# --- the findings of a notebook ----------------------------------------------------------------


@dataclass
class Finding:
    """One recorded result: a number (with its spread) or a verdict."""

    name: str
    value: float | str
    spread: float | None = None
    spread_source: str = ""
    unit: str = ""
    what: str = ""

    def __str__(self) -> str:
        if isinstance(self.value, str):
            return self.value
        return pm(self.value, self.spread, unit=self.unit)


@dataclass
class Findings:
    """The headline results of one notebook run, saved as ``findings/<notebook>.json`` in the
    figures folder (``figures/`` for the quick profile, ``figures/<profile>/`` otherwise).

    >>> found = Findings("07_toy_model_phases", profile="quick")
    >>> found.number("main_fall_pct", 11.7, spread=1.6, spread_source="seeds 0-4", unit="%")
    >>> str(found["main_fall_pct"])
    '11.7 ± 1.6%'
    """

    notebook: str
    profile: str = "quick"
    parameters: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Finding] = field(default_factory=dict)

    def number(
        self,
        name: str,
        value: float,
        *,
        spread: float | None = None,
        spread_source: str = "",
        unit: str = "",
        what: str = "",
    ) -> None:
        """Record a number; ``spread`` is its ± and ``spread_source`` says where it comes from."""
        value = _check_number(name, value)
        if spread is not None:
            spread = abs(_check_number(f"{name} spread", spread))
            if not spread_source:
                raise ValueError(f"{name}: say where its spread comes from (spread_source).")
        self.items[name] = Finding(name, value, spread, spread_source, unit, what)

    def verdict(self, name: str, text: str, *, what: str = "") -> None:
        """Record a verdict (a short text computed from the numbers)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name}: a verdict is a non-empty text, got {text!r}")
        self.items[name] = Finding(name, text, what=what)

    def __getitem__(self, name: str) -> Finding:
        try:
            return self.items[name]
        except KeyError:
            raise KeyError(
                f"{self.notebook} recorded no finding {name!r}; it has {sorted(self.items)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "parameters": self.parameters,
            "findings": {name: asdict(item) for name, item in self.items.items()},
        }

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the JSON atomically; returns its path."""
        folder = Path(folder) if folder is not None else findings_dir(self.profile)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.notebook}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True, default=float) + "\n")
        os.replace(tmp, path)
        return path


def findings_dir(profile: str = "quick") -> Path:
    """``figures/findings`` (quick profile) or ``figures/<profile>/findings``."""
    base = figures_dir() if profile == "quick" else figures_dir() / profile
    return base / "findings"


def load_findings(
    notebook: str, profile: str = "quick", folder: str | Path | None = None
) -> Findings:
    """Read what a notebook recorded (the overview notebook builds its table from these)."""
    folder = Path(folder) if folder is not None else findings_dir(profile)
    path = folder / f"{notebook}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run notebook {notebook} first (make figures NOTEBOOKS=...)."
        )
    raw = json.loads(path.read_text())
    found = Findings(raw["notebook"], raw.get("profile", profile), raw.get("parameters", {}))
    for name, item in raw["findings"].items():
        found.items[name] = Finding(**item)
    return found


# --- spreads recorded by the reproducibility runs ----------------------------------------------


@dataclass(frozen=True)
class RecordedSpread:
    """How much one finding moved between runs recorded in ``benchmarks/``: half the range of
    its values over ``runs`` (e.g. seeds 0, 1, 2)."""

    half_range: float
    runs: tuple[str, ...]
    source: str  # e.g. "seeds 0-2 (make reproducibility)"

    def __str__(self) -> str:
        return f"± {self.half_range:.3g} over {self.source}"


def recorded_spread(
    notebook: str, name: str, *, kind: str = "seeds", path: str | Path | None = None
) -> RecordedSpread | None:
    """The spread of finding ``name`` of ``notebook`` over the recorded ``kind`` of runs
    (``"seeds"``), or None when nothing was recorded (a new finding, or no record yet)."""
    path = Path(path) if path is not None else REPRODUCIBILITY_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text()).get(kind, {})
    values = record.get(notebook, {}).get(name)
    if not values or len(values) < 2:
        return None
    numbers = {run: v for run, v in values.items() if isinstance(v, int | float)}
    if len(numbers) < 2:
        return None
    runs = tuple(sorted(numbers, key=lambda r: (len(r), r)))
    label = f"{kind} {', '.join(runs)}"
    return RecordedSpread(half_range(numbers.values()), runs, label)
