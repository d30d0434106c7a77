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

import difflib
import functools
import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import numpy as np

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
    try:
        known = value in choices
    except TypeError:  # an unhashable value looked up in a set or dict
        known = False
    if not known:
        listed = ", ".join(repr(c) for c in choices)
        close = (
            difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
            if isinstance(value, str)
            else []
        )
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} must be one of {listed}; got {value!r}{hint}")
    return value


def text_list(
    name: str, texts: Any, *, allow_empty: bool = False, unique: bool = False
) -> list[str]:
    """A list of strings. A single string is refused (it would be split into characters);
    with ``unique``, so is a repeated string (class names, say)."""
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
    if unique and len(set(out)) != len(out):
        repeated = sorted({text for text in out if out.count(text) > 1})
        raise ValueError(
            f"{name} must not repeat a text; {repeated} appear more than once in {out}"
        )
    return out


def pair(name: str, value: Any) -> tuple[Any, Any]:
    """A two-element sequence (a range, two betas)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of two values, got {value!r}")
    return value[0], value[1]


def refuse_unknown_names(cls: type[T]) -> type[T]:
    """Class decorator for a settings dataclass: a keyword that is not one of its fields is
    refused with the names that would work (and the closest one), instead of Python's bare
    "unexpected keyword argument". ``dataclasses.replace`` goes through the same check."""
    init = cls.__init__
    known = [f for f in getattr(cls, "__dataclass_fields__", {})]

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [name for name in kwargs if name not in known]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"{cls.__name__} has no setting {', '.join(hints)}; its settings are "
                f"{', '.join(known)}"
            )
        init(self, *args, **kwargs)

    setattr(cls, "__init__", checked_init)  # noqa: B010 (mypy refuses assigning a method)
    return cls


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (NumPy's bool too); a text such as ``"no"`` is refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def finite_array(name: str, array: Any, *, row_offset: int = 0) -> np.ndarray:
    """``array`` as a NumPy array, refused when it holds NaN or infinities: the message counts
    each kind and gives the first position (``row r, column c`` of a matrix; rows counted from
    ``row_offset`` when the array is a block of a larger one)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must hold numbers, got an array of {array.dtype}")
    finite = np.isfinite(array)
    if finite.all():
        return array
    n_nan = int(np.isnan(array).sum())
    n_inf = int((~finite).sum()) - n_nan
    kinds = ", ".join(
        f"{count} {kind}" for count, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if count
    )
    first = np.unravel_index(int(np.argmin(finite.ravel())), array.shape)
    if array.ndim == 2:
        where = f"row {first[0] + row_offset}, column {first[1]}"
    elif array.ndim == 1:
        where = f"index {first[0] + row_offset}"
    else:
        where = f"index {tuple(int(i) for i in first)}"
    raise ValueError(
        f"{name} contains NaN or infinite values ({kinds}; the first at {where}, "
        f"{array[first]!r}): only finite numbers can be measured"
    )


def torch_device(name: str, value: Any) -> Any:
    """A ``torch.device`` this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)."""
    # torch takes seconds to load and only the device check needs it (callers have loaded it)
    import torch  # noqa: PLC0415

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{name} must be a torch device such as 'cpu' or 'cuda', got {value!r}"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        usable = ", ".join(repr(kind) for kind, ok in available.items() if ok)
        raise ValueError(f"{name} {value!r} is not available here; use {usable}")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(
                f"{name} {value!r} does not exist: this machine has {count} CUDA devices"
            )
    return device
