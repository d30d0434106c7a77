"""Argument checks shared by every settings class and public entry point.

Each check returns the value it accepted (normalised where that is safe: an integral
``numpy`` integer becomes an ``int``) or raises with a message that names the argument, the
bad value, and what would work: the rule of this package is to refuse bad input at the call,
before any model is loaded or any file is written.

>>> positive_int("epochs", 3)
3
>>> positive_float("learning_rate", float("inf"))
Traceback (most recent call last):
...
ValueError: learning_rate must be a finite number > 0, got inf
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, float) else f"{value:g}"


def integer(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An ``int`` (``bool`` and floats such as ``3.0`` are refused) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value}")
    return value


def positive_int(name: str, value: Any) -> int:
    """An ``int`` >= 1."""
    return integer(name, value, minimum=1)


def non_negative_int(name: str, value: Any) -> int:
    """An ``int`` >= 0 (a seed, an index)."""
    return integer(name, value, minimum=0)


def real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
) -> float:
    """A finite real number (NaN and infinities refused) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_describe(value)}")
    value = float(value)
    low = "" if minimum is None else f"{'>' if strict_minimum else '>='} {minimum:g}"
    high = "" if maximum is None else f"{'<' if strict_maximum else '<='} {maximum:g}"
    wanted = " and ".join(part for part in (low, high) if part)
    rule = f"a finite number {wanted}".rstrip()
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {rule}, got {_describe(value)}")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        raise ValueError(f"{name} must be {rule}, got {_describe(value)}")
    if maximum is not None and (value > maximum or (strict_maximum and value == maximum)):
        raise ValueError(f"{name} must be {rule}, got {_describe(value)}")
    return value


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0 (a learning rate, a scale)."""
    return real(name, value, minimum=0.0, strict_minimum=True)


def non_negative_float(name: str, value: Any) -> float:
    """A finite number >= 0 (a weight decay, a penalty)."""
    return real(name, value, minimum=0.0)


def fraction(name: str, value: Any, *, open_low: bool = False, open_high: bool = False) -> float:
    """A finite number in [0, 1] (ends excluded where asked)."""
    return real(
        name, value, minimum=0.0, maximum=1.0, strict_minimum=open_low, strict_maximum=open_high
    )


def one_of(name: str, value: T, choices: Collection[T]) -> T:
    """``value`` when it is one of ``choices``; else the list of choices."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def text_list(name: str, texts: Any, *, allow_empty: bool = False) -> list[str]:
    """A list of strings. A single string is refused (it would be split into characters)."""
    if isinstance(texts, str | bytes):
        raise TypeError(
            f"{name} must be a list of texts, got a single {type(texts).__name__} "
            f"({texts[:40]!r}); wrap it in a list: [{texts[:20]!r}]"
        )
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"{name} must be a list of texts, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__} {text!r:.40}")
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty: give at least one text")
    return out


def pair(name: str, value: Any) -> tuple[Any, Any]:
    """A two-element sequence (a range, two betas)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of two values, got {value!r}")
    return value[0], value[1]
