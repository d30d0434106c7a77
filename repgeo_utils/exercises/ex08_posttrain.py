"""Checks of notebook ``exercises/ex08_posttrain.ipynb``: the unbiased pass@k estimator and one
eigen-direction ablation of a module's output.

Hand-solved cases are tests/test_posttrain.py's pass@k values and tests/test_ablation.py's
two-dimensional eigenbasis (mean (3, -1), directions (1, 1) and (1, -1) over sqrt 2). The real
cases are :func:`repgeo_utils.posttrain.pass_at_k` over every ``(n, c, k)`` up to ``n = 40``, and
:class:`repgeo_utils.ablation.EigenBasis` fitted to MiniLM's last-layer token states, also
applied inside a forward hook next to :func:`repgeo_utils.ablation.eigen_ablation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product
from typing import Literal

import numpy as np
import torch

from . import realdata
from .checking import (
    CheckFailed,
    array,
    arrays_close,
    call,
    close,
    number,
    require_function,
    run_check,
)

#: tests/test_posttrain.py's hand values: (n, c, k, pass@k)
PASS_AT_K_CASES = (
    (5, 2, 1, 2 / 5),  # one draw: the share of correct samples
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),  # only 3 wrong samples: any 4 include a correct one
    (5, 0, 3, 0.0),
    (10, 1, 10, 1.0),
    (4, 4, 1, 1.0),
    (200, 1, 1, 1 / 200),
    (16, 3, 4, 1 - 715 / 1820),  # C(13,4) = 715, C(16,4) = 1820
)
#: Sizes whose binomial coefficients overflow a float (C(5000, 2500) is about 10^1503).
LARGE_CASES = ((5000, 10, 2500), (5000, 1, 1), (3000, 2990, 5), (2000, 0, 1000))
GRID_N = 40


def _exact(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) with Python's exact integers (slow for large n, but exact)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _pass_at_k_hints(n: int, c: int, k: int) -> list:
    return [
        ("that is c/n, pass@1, whatever k", lambda: c / n),
        (
            "that is 1 - (1 - c/n)^k, which draws with replacement (biased): the k samples are "
            "drawn from the n without replacement",
            lambda: 1 - (1 - c / n) ** k,
        ),
        (
            "that is C(n-c, k) / C(n, k), the chance of no correct sample",
            lambda: 1 - _exact(n, c, k),
        ),
    ]


def check_pass_at_k(pass_at_k: Callable) -> None:
    """``pass_at_k(n, c, k)``: ``1 - C(n - c, k) / C(n, k)``, the chance that k of n samples
    (c of them correct), drawn without replacement, include a correct one; stable for large n."""
    name = "pass_at_k"

    def test() -> str:
        require_function(pass_at_k, name)
        for n, c, k, want in PASS_AT_K_CASES:
            case = f"n = {n}, c = {c}, k = {k}"
            got = number(call(pass_at_k, n, c, k, case=case), case)
            close(got, want, case, abs=1e-12, hints=_pass_at_k_hints(n, c, k))
        overflow = (
            "C(n, k) overflows a float at this size: use the product 1 - prod_{i=n-c+1}^{n} "
            "(1 - k/i), or Python's exact integers"
        )
        for n, c, k in LARGE_CASES:
            case = f"n = {n}, c = {c}, k = {k}"
            try:
                got = number(call(pass_at_k, n, c, k, case=case), case)
            except CheckFailed as err:
                raise CheckFailed(f"{err}; {overflow}") from None
            close(got, _exact(n, c, k), case, abs=1e-12, hints=_pass_at_k_hints(n, c, k))
        # every case up to n = 40 against the package (its import loads the post-training stack)
        from ..posttrain import pass_at_k as reference  # noqa: PLC0415

        count = 0
        for n in range(1, GRID_N + 1):
            for c, k in product(range(n + 1), range(1, n + 1)):
                case = f"n = {n}, c = {c}, k = {k}"
                got = number(call(pass_at_k, n, c, k, case=case), case)
                close(got, reference(n, c, k), case, abs=1e-12, hints=_pass_at_k_hints(n, c, k))
                count += 1
        return (
            f"{len(PASS_AT_K_CASES)} hand-solved cases, {len(LARGE_CASES)} large ones, and "
            f"posttrain.pass_at_k on all {count:,} cases with n <= {GRID_N}"
        )

    run_check(name, test)


# --- eigen-direction ablation ---------------------------------------------------------------

SQRT2 = math.sqrt(2.0)
HAND_MEAN = torch.tensor([3.0, -1.0])
HAND_VECTORS = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / SQRT2  # columns u1 (var 4), u2 (var 1)
HAND_X = torch.tensor([[5.0, 2.0]])
HAND_CASE = "hand case (mean (3, -1), u1 = (1, 1)/sqrt 2, u2 = (1, -1)/sqrt 2, h = (5, 2))"
# a basis whose matrix is not symmetric: columns e2, e3, e1 (top direction first)
PERM_VECTORS = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
PERM_X = torch.tensor([[1.0, 2.0, 3.0]])
PERM_CASE = "hand case (mean 0, directions e2, e3, e1 as the columns, h = (1, 2, 3))"
LAYER = 6


def _reference(h, mean, vectors, k, mode):
    top = vectors[:, :k]
    keep = top @ top.T
    p = keep if mode == "keep" else torch.eye(len(mean), dtype=h.dtype) - keep
    return mean + (h - mean) @ p


def _ablation_hints(h, mean, vectors, k, mode) -> list:
    other = "remove" if mode == "keep" else "keep"
    return [
        (
            "the mean is not handled: project h - mean, then add the mean back",
            lambda: _reference(h, torch.zeros_like(mean), vectors, k, mode).numpy(),
        ),
        (
            "it used the rows of `vectors`: the eigen-directions are its columns",
            lambda: _reference(h, mean, vectors.T.contiguous(), k, mode).numpy(),
        ),
        (
            "it used the last k directions: the top k are the first k columns (largest "
            "eigenvalue first)",
            lambda: _reference(h, mean, vectors.flip(1), k, mode).numpy(),
        ),
        (f"that is mode {other!r}", lambda: _reference(h, mean, vectors, k, other).numpy()),
    ]


def _check_one(eigen_ablate, h, mean, vectors, k, mode, want, case, *, rel=1e-6, abs=1e-6):
    got = call(eigen_ablate, h, mean, vectors, k, mode, case=case)
    got = array(got, case, tuple(h.shape), torch_dtype=h.dtype)
    hints = _ablation_hints(h, mean, vectors, k, mode)
    arrays_close(got, np.asarray(want, dtype=np.float64), case, rel=rel, abs=abs, hints=hints)


def check_eigen_ablate(eigen_ablate: Callable) -> None:
    """``eigen_ablate(h, mean, vectors, k, mode)``: ``mean + (h - mean) P`` on the last axis of
    ``h`` with ``P = V_k V_k^T`` (``mode="keep"``) or ``I - V_k V_k^T`` (``"remove"``), ``V_k``
    the first ``k`` columns of ``vectors``; same shape and dtype as ``h``."""
    name = "eigen_ablate"

    def test() -> str:
        require_function(eigen_ablate, name)
        m, v = HAND_MEAN, HAND_VECTORS
        # (x - m) = (2, 3); (x-m).u1 = 5/sqrt2 -> keep (5.5, 1.5); (x-m).u2 = -1/sqrt2 -> remove
        _check_one(eigen_ablate, HAND_X, m, v, 1, "keep", [[5.5, 1.5]], f"{HAND_CASE}, keep k=1")
        _check_one(
            eigen_ablate, HAND_X, m, v, 1, "remove", [[2.5, -0.5]], f"{HAND_CASE}, remove k=1"
        )
        _check_one(eigen_ablate, HAND_X, m, v, 0, "keep", [[3.0, -1.0]], f"{HAND_CASE}, keep k=0")
        _check_one(eigen_ablate, HAND_X, m, v, 2, "keep", [[5.0, 2.0]], f"{HAND_CASE}, keep k=2")
        zero = torch.zeros(3)
        _check_one(
            eigen_ablate,
            PERM_X,
            zero,
            PERM_VECTORS,
            1,
            "keep",
            [[0.0, 2, 0]],
            f"{PERM_CASE}, keep k=1",
        )
        _check_one(
            eigen_ablate,
            PERM_X,
            zero,
            PERM_VECTORS,
            2,
            "remove",
            [[1.0, 0, 0]],
            f"{PERM_CASE}, remove k=2",
        )
        # (batch, sequence, d): the projection acts on the last axis only
        batch = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
        want = _reference(batch.double(), m.double(), v.double(), 1, "keep")
        case = f"{HAND_CASE.split(', h =')[0]}), h of shape (2, 3, 2), keep k=1"
        _check_one(eigen_ablate, batch, m, v, 1, "keep", want.numpy(), case)
        # real states; the package's EigenBasis and its forward hook (the ablation package
        # loads the model stack: only once the hand-solved cases pass)
        from ..ablation import eigen_ablation, fit_eigenbasis  # noqa: PLC0415

        x = realdata.minilm_tokens(LAYER)
        basis = fit_eigenbasis(x)
        mean = torch.from_numpy(basis.mean).float()
        vectors = torch.from_numpy(basis.vectors).float()
        h = torch.from_numpy(x[:390]).reshape(6, 65, x.shape[1])
        scale = float(np.abs(x).max())
        what = f"{realdata.describe()}, layer {LAYER}, h of shape (6, 65, 384)"
        modes: tuple[Literal["keep", "remove"], ...] = ("keep", "remove")
        for k, mode in product((1, 16, 128), modes):
            case = f"{what}, {mode} k={k}"
            want = basis.apply(h.numpy(), k, mode)
            _check_one(
                eigen_ablate, h, mean, vectors, k, mode, want, case, rel=1e-4, abs=1e-5 * scale
            )
        module = torch.nn.Linear(x.shape[1], x.shape[1])
        torch.nn.init.eye_(module.weight)
        torch.nn.init.zeros_(module.bias)
        inputs = h[:2]
        hooked = module.register_forward_hook(
            lambda _module, _inputs, out: eigen_ablate(out, mean, vectors, 16, "remove")
        )
        case = f"{what}, as a forward hook on a module, remove k=16"
        try:
            with torch.no_grad():
                got = call(module, inputs, case=case)
        finally:
            hooked.remove()
        with torch.no_grad(), eigen_ablation(module, basis, 16, "remove"):
            want = module(inputs)
        got = array(got, case, tuple(want.shape), torch_dtype=want.dtype)
        arrays_close(got, want.numpy(), case, rel=1e-4, abs=1e-5 * scale)
        return f"7 hand-solved cases and {what} (EigenBasis.apply, eigen_ablation as a hook)"

    run_check(name, test)
