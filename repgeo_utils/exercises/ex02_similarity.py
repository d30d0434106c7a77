"""Checks of notebook ``exercises/ex02_similarity.ipynb``: cosine of means, mean per-token
cosine and linear CKA of two paired ``(tokens, d)`` matrices.

The hand-solved case is tests/test_similarity.py's: three tokens, two features,
``a = [[1, 0], [0, 1], [1, 1]]`` and ``b = [[2, 0], [1, 1], [0, 1]]``. The real case is
MiniLM's layer 3 against its layer 6 on the same tokens, against :mod:`repgeo_utils.similarity`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import similarity
from . import realdata
from .checking import call, close, number, require_function, run_check

HAND_A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
HAND_B = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
HAND = "hand case (a = [[1,0],[0,1],[1,1]], b = [[2,0],[1,1],[0,1]])"

#: The two layers compared on real data, and the tolerance there (float32 inputs).
LAYERS = (3, 6)
REAL_REL = 1e-5


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def _pair(n: int = 40, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A non-centred related pair: b is a noisy linear map of a, plus an offset."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)) + rng.standard_normal(d)
    b = a @ rng.standard_normal((d, d)) * 0.5 + rng.standard_normal((n, d)) + 2.0
    return a, b


def _real() -> tuple[np.ndarray, np.ndarray, str]:
    a, b = (realdata.minilm_tokens(layer) for layer in LAYERS)
    return a, b, f"{realdata.describe()}, layer {LAYERS[0]} vs layer {LAYERS[1]}"


# --- what known mistakes give, for the hints ------------------------------------------------


def _token_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _uncentred_cka(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((b.T @ a) ** 2) / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def _unsquared_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(b.T @ a) / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


# --- checks ---------------------------------------------------------------------------------


def check_cosine_of_means(cosine_of_means: Callable) -> None:
    """``cosine_of_means(a, b)``: the cosine between the mean row of ``a`` and that of ``b``."""
    name = "cosine_of_means"

    def test() -> str:
        require_function(cosine_of_means, name)
        hints = [
            (
                "that is the mean of the per-token cosines (the next exercise): average the "
                "rows first, then take one cosine",
                lambda: float(_token_cosines(HAND_A, HAND_B).mean()),
            ),
        ]
        got = number(call(cosine_of_means, HAND_A, HAND_B, case=HAND), HAND)
        close(got, 10 / math.sqrt(104), HAND, hints=hints)
        scaled = "the same pair with b scaled by 3.5 (a cosine ignores scale)"
        got = number(call(cosine_of_means, HAND_A, 3.5 * HAND_B, case=scaled), scaled)
        close(got, 10 / math.sqrt(104), scaled)
        same = "a compared with itself"
        a, b = _pair()
        close(number(call(cosine_of_means, a, a, case=same), same), 1.0, same)
        case = "a random pair (40 tokens, 5 features)"
        want = similarity.cosine_of_means(a, b)
        close(number(call(cosine_of_means, a, b, case=case), case), want, case)
        x, y, what = _real()
        got = number(call(cosine_of_means, x, y, case=what), what)
        close(got, similarity.cosine_of_means(x, y), what, rel=REAL_REL)
        return f"3 hand-solved cases, a random pair, and {what}"

    run_check(name, test)


def check_mean_token_cosine(mean_token_cosine: Callable) -> None:
    """``mean_token_cosine(a, b)``: the mean over rows of the cosine of row i of a and of b."""
    name = "mean_token_cosine"

    def test() -> str:
        require_function(mean_token_cosine, name)
        hints = [
            (
                "that is the cosine of the means (the previous exercise): take one cosine per "
                "token, then average",
                lambda: 10 / math.sqrt(104),
            ),
            (
                "that is the cosine between columns (features), not rows (tokens): the norms "
                "and dot products run over axis 1",
                lambda: float(_token_cosines(HAND_A.T, HAND_B.T).mean()),
            ),
        ]
        got = number(call(mean_token_cosine, HAND_A, HAND_B, case=HAND), HAND)
        close(got, (1 + 2 / math.sqrt(2)) / 3, HAND, hints=hints)
        case = "rows scaled one by one (each token's cosine ignores its own scale)"
        scales = np.array([[0.5], [3.0], [10.0]])
        got = number(call(mean_token_cosine, HAND_A, HAND_B * scales, case=case), case)
        close(got, (1 + 2 / math.sqrt(2)) / 3, case)
        case = "a random pair (40 tokens, 5 features)"
        a, b = _pair()
        want = similarity.mean_token_cosine(a, b)
        close(number(call(mean_token_cosine, a, b, case=case), case), want, case)
        x, y, what = _real()
        got = number(call(mean_token_cosine, x, y, case=what), what)
        close(got, similarity.mean_token_cosine(x, y), what, rel=REAL_REL)
        return f"2 hand-solved cases, a random pair, and {what}"

    run_check(name, test)


def check_linear_cka(linear_cka: Callable) -> None:
    """``linear_cka(a, b)``: ``||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` of the column-centred
    matrices; ``a`` and ``b`` may differ in width."""
    name = "linear_cka"

    def test() -> str:
        require_function(linear_cka, name)
        hints = [
            (
                "it matches CKA without centring: subtract each column's mean first",
                lambda: _uncentred_cka(HAND_A, HAND_B),
            ),
            (
                "the numerator is the squared Frobenius norm of B^T A, not the norm itself",
                lambda: _unsquared_cka(HAND_A, HAND_B),
            ),
        ]
        got = number(call(linear_cka, HAND_A, HAND_B, case=HAND), HAND)
        close(got, 126 / math.sqrt(90 * 522), HAND, hints=hints)
        a, b = _pair()
        case = "a random pair against a rotated and scaled copy of itself (CKA = 1)"
        rotated = 2.5 * a @ _rotation(a.shape[1], 1)
        got = number(call(linear_cka, a, rotated, case=case), case)
        close(got, 1.0, case, abs=1e-9, note="CKA ignores rotations and scaling of either side")
        case = "matrices of different widths (40 x 5 and 40 x 8)"
        wide = np.concatenate([b, b[:, :3] ** 2], axis=1)
        want = similarity.linear_cka(a, wide)
        close(number(call(linear_cka, a, wide, case=case), case), want, case, rel=1e-8)
        case = "the same pair shifted by 1000 (CKA ignores offsets)"
        want = similarity.linear_cka(a, b)
        close(number(call(linear_cka, a + 1e3, b - 1e3, case=case), case), want, case, rel=1e-6)
        x, y, what = _real()
        got = number(call(linear_cka, x, y, case=what), what)
        close(got, similarity.linear_cka(x, y), what, rel=REAL_REL)
        return f"a hand-solved case, 3 invariances, and {what}"

    run_check(name, test)
