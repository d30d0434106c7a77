"""What every exercise check shares: one verdict line, never an exception, and messages that
say what is wrong.

A check runs the student's function on cases solved by hand, then on real activations against
the package's own function, and prints exactly one line:

    PASS cosine_of_means: 4 hand-solved cases; MiniLM states of 32 sentences (layer 3 vs 6)
    FAIL cosine_of_means: not implemented yet (...)
    FAIL linear_cka: hand case (3 tokens): expected 0.581318, got 0.75 (tolerance 1e-09);
         it matches CKA without centring: subtract each column's mean first

PASS goes to stdout, FAIL to stderr (JupyterLab shows it on a red background). The check
itself never raises, so "Run All" reaches the end of a student copy in which every exercise is
still a stub (JupyterLab, papermill and nbval alike).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

#: What a check says about a function that still raises the stub's NotImplementedError.
NOT_IMPLEMENTED = (
    "not implemented yet (the function still raises NotImplementedError: write your code in "
    "its place)"
)

#: A hint: the sentence to add, and how to compute the value a known mistake would give.
Hint = tuple[str, Callable[[], Any]]


class CheckFailed(Exception):
    """A wrong answer; the message says what is wrong."""


def run_check(exercise: str, test: Callable[[], str]) -> None:
    """Run ``test`` (which returns what it checked, or raises) and print one verdict line."""
    try:
        detail = test()
    except NotImplementedError:
        message = NOT_IMPLEMENTED
    except CheckFailed as err:
        message = str(err)
    except Exception as err:  # never stop the notebook, not even on a bug in the check
        message = (
            f"the check itself could not finish ({type(err).__name__}: {err}); "
            "please report this with your function"
        )
    else:
        print(f"PASS {exercise}: {detail}", flush=True)
        return
    print(f"FAIL {exercise}: {message}", file=sys.stderr, flush=True)


def require_function(fn: Any, name: str) -> None:
    if not callable(fn):
        raise CheckFailed(
            f"expected your function (check_{name}({name})), got {type(fn).__name__} {fn!r:.60}"
        )


def call(fn: Callable[..., Any], *args: Any, case: str, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on copies of the arguments (so an answer that changes its inputs
    in place cannot change the next case). The stub's NotImplementedError passes through; any
    other exception becomes a failure that names the case."""
    args = tuple(_copy(a) for a in args)
    kwargs = {k: _copy(v) for k, v in kwargs.items()}
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as err:
        raise CheckFailed(f"{case}: your function raised {type(err).__name__}: {err}") from None


def _copy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "clone"):  # a torch tensor
        return value.detach().clone()
    return copy.deepcopy(value)


def _missing_return(value: Any, case: str) -> None:
    if value is None:
        raise CheckFailed(f"{case}: your function returned None (is a `return` missing?)")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def number(value: Any, case: str, *, nan_note: str = "") -> float:
    """``value`` as a float: one number (a Python or NumPy scalar, a 0-d array or tensor);
    ``nan_note`` says why a NaN is likely, if the case knows."""
    _missing_return(value, case)
    if isinstance(value, tuple | list):
        raise CheckFailed(
            f"{case}: your function returned a {type(value).__name__} of {len(value)} items, "
            "expected a single number"
        )
    try:
        array = _to_numpy(value)
    except Exception:
        raise CheckFailed(
            f"{case}: your function returned {type(value).__name__}, expected a number"
        ) from None
    if array.shape != ():
        raise CheckFailed(
            f"{case}: your function returned an array of shape {tuple(array.shape)}, expected a "
            "single number (shape ()): did you reduce over every axis?"
        )
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise CheckFailed(f"{case}: your function returned {value!r:.60}, expected a number")
    result = float(array)
    if math.isnan(result):
        raise CheckFailed(
            f"{case}: your function returned NaN" + (f"; {nan_note}" * bool(nan_note))
        )
    if math.isinf(result):
        raise CheckFailed(f"{case}: your function returned {result}")
    return result


def _allowed(want: float, rel: float, abs_: float) -> str:
    return f"allowed difference {abs_ + rel * math.fabs(want):.1g}"


def _hint_text(got: Any, hints: Iterable[Hint], match: Callable[[Any, Any], bool]) -> str:
    for text, wrong in hints:
        try:
            value = wrong()
        except Exception:
            continue
        if match(got, value):
            return f"; {text}"
    return ""


def close(
    got: float,
    want: float,
    case: str,
    *,
    rel: float = 1e-9,
    abs: float = 1e-12,
    hints: Sequence[Hint] = (),
    note: str = "",
) -> None:
    """Fail unless ``got`` is within ``abs + rel * |want|`` of ``want``; name the case, both
    values, the tolerance and, when ``got`` equals what a known mistake gives, that mistake
    (else ``note``, if given)."""
    if math.isclose(got, want, rel_tol=rel, abs_tol=abs):
        return
    hint = _hint_text(
        got, hints, lambda g, w: math.isclose(g, float(w), rel_tol=1e-6, abs_tol=1e-9)
    ) or (f"; {note}" if note else "")
    raise CheckFailed(
        f"{case}: expected {want:.6g}, got {got:.6g} ({_allowed(want, rel, abs)}){hint}"
    )


def array(
    value: Any,
    case: str,
    shape: tuple[int, ...],
    *,
    torch_dtype: Any = None,
) -> np.ndarray:
    """``value`` as a float64 NumPy array of ``shape``, finite; with ``torch_dtype``, it must be
    a torch tensor of that dtype (a module's output keeps its input's dtype)."""
    _missing_return(value, case)
    if torch_dtype is not None:
        if not hasattr(value, "detach"):
            raise CheckFailed(
                f"{case}: your function returned {type(value).__name__}, expected a torch tensor"
            )
        if value.dtype != torch_dtype:
            raise CheckFailed(
                f"{case}: your function returned dtype {value.dtype}, expected {torch_dtype} "
                "(the input's dtype: compute in it, or cast back)"
            )
    if isinstance(value, tuple | list):
        raise CheckFailed(
            f"{case}: your function returned a {type(value).__name__}, expected an array of shape "
            f"{shape}"
        )
    try:
        result = _to_numpy(value)
    except Exception:
        raise CheckFailed(
            f"{case}: your function returned {type(value).__name__}, expected an array"
        ) from None
    if result.shape != shape:
        raise CheckFailed(
            f"{case}: your function returned shape {tuple(result.shape)}, expected {shape}"
        )
    if not np.issubdtype(result.dtype, np.number):
        raise CheckFailed(f"{case}: your function returned dtype {result.dtype}, expected floats")
    result = result.astype(np.float64)
    bad = ~np.isfinite(result)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckFailed(
            f"{case}: your function returned {result[where]} at index {where} "
            f"({int(bad.sum())} non-finite entries)"
        )
    return result


def arrays_close(
    got: np.ndarray,
    want: np.ndarray,
    case: str,
    *,
    rel: float = 1e-9,
    abs: float = 1e-12,
    hints: Sequence[Hint] = (),
    note: str = "",
) -> None:
    """Fail unless every entry of ``got`` is within ``abs + rel * |want|`` of ``want``; name the
    entry that is furthest out, both values, and a known mistake the answer matches (else
    ``note``, if given)."""
    want = np.asarray(want, dtype=np.float64)
    excess = np.abs(got - want) - (abs + rel * np.abs(want))
    if not (excess > 0).any():
        return
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), want.shape))
    hint = _hint_text(
        got,
        hints,
        lambda g, w: (
            np.shape(w) == g.shape
            and bool(np.allclose(g, np.asarray(w, dtype=np.float64), rtol=1e-6, atol=1e-9))
        ),
    ) or (f"; {note}" if note else "")
    n_bad = int((excess > 0).sum())
    raise CheckFailed(
        f"{case}: {n_bad} of {want.size} entries differ; at index {where} expected "
        f"{want[where]:.6g}, got {got[where]:.6g} ({_allowed(want[where], rel, abs)}){hint}"
    )


def items(value: Any, names: Sequence[str], case: str) -> tuple[Any, ...]:
    """``value`` unpacked as a tuple of ``len(names)`` items."""
    _missing_return(value, case)
    if not isinstance(value, tuple | list) or len(value) != len(names):
        got = (
            f"a {type(value).__name__} of {len(value)} items"
            if isinstance(value, tuple | list)
            else type(value).__name__
        )
        raise CheckFailed(
            f"{case}: your function returned {got}, expected a tuple ({', '.join(names)})"
        )
    return tuple(value)
