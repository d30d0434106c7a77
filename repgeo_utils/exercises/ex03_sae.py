"""Checks of notebook ``exercises/ex03_sae.ipynb``: a ReLU SAE's forward pass, its training
loss, and the metrics FVU, mean L0 and dead latents.

Hand-solved cases are tests/test_sae.py's (the 2 -> 3 SAE of ``test_evaluate_sae_hand_made``,
the FVU and sparsity matrices). The real case is an SAE of the package trained on MiniLM's
layer-3 states (:func:`repgeo_utils.sae.train_sae`), a few of its latents switched off so that
dead latents exist, compared with the package's forward pass, training loss and
:func:`repgeo_utils.sae.evaluate_sae`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import realdata
from .checking import (
    CheckFailed,
    array,
    arrays_close,
    call,
    close,
    items,
    number,
    require_function,
    run_check,
)

LAYER = 3
D_SAE = 512
#: every DEAD_EVERY-th latent of the real SAE gets a large negative encoder bias: dead
DEAD_EVERY = 16

# The 2 -> 3 SAE of tests/test_sae.py, and a copy with biases.
W_ENC = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
W_DEC = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -2.0], [0.0, 0.0]])
B_ENC = torch.tensor([0.0, 0.0, -0.5])
B_DEC = torch.tensor([1.0, 1.0])


@functools.cache
def _real_sae() -> tuple[Any, torch.Tensor]:
    """A ReLU SAE trained on MiniLM's layer-3 states (seconds), with dead latents added."""
    # the SAE package loads the activation and caching machinery: only on the real-data step
    from ..sae import SAEConfig, train_sae  # noqa: PLC0415

    x = torch.from_numpy(realdata.minilm_tokens(LAYER))
    config = SAEConfig(d_in=x.shape[1], d_sae=D_SAE, epochs=5, batch_size=64, seed=0)
    sae, _ = train_sae(config, x, device="cpu", progress=False)
    with torch.no_grad():
        sae.b_enc[::DEAD_EVERY] = -1e4
    return sae, x


def _real_case() -> str:
    n_off = len(range(0, D_SAE, DEAD_EVERY))
    return f"an SAE of the package on {realdata.describe()}, layer {LAYER}, {n_off} latents off"


def _forward_reference(x, w_enc, b_enc, w_dec, b_dec, subtract=True):
    centred = x - b_dec if subtract else x
    h = torch.relu(centred @ w_enc + b_enc)
    return h @ w_dec + b_dec, h


def _check_forward_output(result: Any, case: str, n: int, d_in: int, d_sae: int):
    x_hat, h = items(result, ("x_hat", "h"), case)
    if getattr(x_hat, "shape", None) == (n, d_sae) and getattr(h, "shape", None) == (n, d_in):
        raise CheckFailed(f"{case}: the outputs look swapped: return (x_hat, h), in that order")
    x_hat = array(x_hat, f"{case}, x_hat", (n, d_in), torch_dtype=torch.float32)
    h = array(h, f"{case}, h", (n, d_sae), torch_dtype=torch.float32)
    return x_hat, h


def check_sae_forward(sae_forward: Callable) -> None:
    """``sae_forward(x, W_enc, b_enc, W_dec, b_dec) -> (x_hat, h)`` with
    ``h = ReLU((x - b_dec) W_enc + b_enc)`` and ``x_hat = h W_dec + b_dec``."""
    name = "sae_forward"

    def test() -> str:
        require_function(sae_forward, name)
        zero_enc, zero_dec = torch.zeros(3), torch.zeros(2)
        case = "hand case (2 -> 3 SAE, zero biases)"
        got = call(sae_forward, X, W_ENC, zero_enc, W_DEC, zero_dec, case=case)
        x_hat, h = _check_forward_output(got, case, 4, 2, 3)
        want_h = [[1.0, 0, 0], [0, 2, 0], [0, 0, 0], [0, 0, 0]]
        arrays_close(h, np.array(want_h), f"{case}, h", note="h = ReLU(x W_enc + b_enc) here")
        want = [[1.0, 0], [0, 1], [0, 0], [0, 0]]
        arrays_close(x_hat, np.array(want), f"{case}, x_hat", note="x_hat = h W_dec + b_dec")
        case = "hand case (2 -> 3 SAE, b_enc = [0, 0, -0.5], b_dec = [1, 1])"
        got = call(sae_forward, X, W_ENC, B_ENC, W_DEC, B_DEC, case=case)
        x_hat, h = _check_forward_output(got, case, 4, 2, 3)
        wrong = _forward_reference(X, W_ENC, B_ENC, W_DEC, B_DEC, subtract=False)
        hints = [
            (
                "it matches an encoder that does not subtract b_dec: encode x - b_dec",
                lambda: wrong[1].numpy(),
            )
        ]
        want_h = [[0.0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
        arrays_close(h, np.array(want_h), f"{case}, h", hints=hints)
        want = [[1.0, 1], [1, 1.5], [1, 1], [1, 1]]
        arrays_close(x_hat, np.array(want), f"{case}, x_hat", note="x_hat = h W_dec + b_dec")
        sae, x = _real_sae()
        case = _real_case()
        weights = [p.detach().clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
        got = call(sae_forward, x, *weights, case=case)
        x_hat, h = _check_forward_output(got, case, x.shape[0], x.shape[1], D_SAE)
        with torch.no_grad():
            want_x_hat, want_h = sae(x)
        arrays_close(h, want_h.numpy(), f"{case}, h", rel=1e-4, abs=1e-4)
        arrays_close(x_hat, want_x_hat.numpy(), f"{case}, x_hat", rel=1e-4, abs=1e-4)
        return f"2 hand-solved cases and {case}"

    run_check(name, test)


# --- loss -----------------------------------------------------------------------------------

LOSS_X = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
LOSS_X_HAT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
LOSS_H = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
LOSS_CASE = (
    "hand case (x = [[1,0],[0,2]], x_hat = [[1,0],[0,1]], h = [[1,0,0],[0,2,0]], lambda 0.1)"
)


def check_sae_loss(sae_loss: Callable) -> None:
    """``sae_loss(x, x_hat, h, l1_coefficient)``: the mean over tokens and features of
    ``(x_hat - x)^2`` plus ``l1_coefficient`` times the mean over tokens of ``sum_i h_i``."""
    name = "sae_loss"

    def test() -> str:
        require_function(sae_loss, name)
        # MSE (0 + 0 + 0 + 1) / 4 = 0.25; L1 term (1 + 2) / 2 = 1.5; loss 0.25 + 0.1 * 1.5
        hints = [
            (
                "the L1 term is averaged over latents (the paper's code): sum it over latents "
                "(the paper's text), then average over tokens",
                lambda: 0.25 + 0.1 * 0.5,
            ),
            (
                "the squared error is summed over features: the MSE averages over tokens and "
                "features",
                lambda: 0.5 + 0.1 * 1.5,
            ),
            ("the squared error is summed over everything: average it", lambda: 1.0 + 0.1 * 1.5),
            ("the L1 term is summed over tokens: average it over tokens", lambda: 0.25 + 0.3),
            ("the L1 term is missing", lambda: 0.25),
        ]
        got = number(call(sae_loss, LOSS_X, LOSS_X_HAT, LOSS_H, 0.1, case=LOSS_CASE), LOSS_CASE)
        close(got, 0.4, LOSS_CASE, rel=1e-6, hints=hints)
        case = "the same with lambda 0 (the MSE alone)"
        got = number(call(sae_loss, LOSS_X, LOSS_X_HAT, LOSS_H, 0.0, case=case), case)
        close(got, 0.25, case, rel=1e-6)
        sae, x = _real_sae()
        case = _real_case() + ", lambda 3e-3"
        with torch.no_grad():
            x_hat, h = sae(x)
        got = number(call(sae_loss, x, x_hat, h, 3e-3, case=case), case)
        # the package's training step: the loss it minimises, in float64
        from ..sae.training import _grad_step  # noqa: PLC0415  (loaded with _real_sae's imports)

        reference = copy.deepcopy(sae).double()
        mse, l1_term, _ = _grad_step(reference, x.double(), 3e-3)
        close(got, float(mse) + 3e-3 * float(l1_term), case, rel=1e-4)
        return f"2 hand-solved cases and {case} (the package's training loss)"

    run_check(name, test)


# --- metrics --------------------------------------------------------------------------------

# tests/test_sae.py: mean (2, 0), total squared deviation 10; errors 1 and 4 -> FVU 0.5
FVU_X = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [2.0, -2.0]])
FVU_X_HAT = torch.tensor([[2.0, 0.0], [3.0, 0.0], [2.0, 0.0], [2.0, -2.0]])
FVU_CASE = "hand case (x = [[1,0],[3,0],[2,2],[2,-2]], squared errors 1 and 4)"

# tests/test_sae.py: L0 per token 2, 1, 2, 1 -> 1.5; latents 0 and 4 never fire
LATENTS = torch.tensor(
    [
        [0.0, 1.0, 0.0, 2.0, 0.0],
        [0.0, 3.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.5, 0.0, 0.0],
        [0.0, 2.0, 0.0, 0.0, 0.0],
    ]
)
LATENTS_CASE = "hand case (4 tokens x 5 latents: L0 2, 1, 2, 1; latents 0 and 4 never fire)"


def check_fvu(fvu: Callable) -> None:
    """``fvu(x, x_hat)``: ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens."""
    name = "fvu"

    def test() -> str:
        require_function(fvu, name)
        hints = [
            (
                "the denominator is not centred: divide by the squared deviation from the mean "
                "token, sum ||x - mean(x)||^2",
                lambda: 5 / 26,
            ),
        ]
        got = number(call(fvu, FVU_X, FVU_X_HAT, case=FVU_CASE), FVU_CASE)
        close(got, 0.5, FVU_CASE, rel=1e-6, hints=hints)
        case = "a perfect reconstruction"
        close(number(call(fvu, FVU_X, FVU_X.clone(), case=case), case), 0.0, case, abs=1e-7)
        case = "predicting the mean token for every token (explains nothing)"
        mean = FVU_X.mean(0).expand_as(FVU_X).clone()
        close(number(call(fvu, FVU_X, mean, case=case), case), 1.0, case, rel=1e-6)
        sae, x = _real_sae()
        case = _real_case()
        with torch.no_grad():
            x_hat, _ = sae(x)
        got = number(call(fvu, x, x_hat, case=case), case)
        close(got, _evaluate(sae, x).fvu, case, rel=1e-4)
        return f"3 hand-solved cases and {case} (evaluate_sae)"

    run_check(name, test)


def _evaluate(sae, x):
    from ..sae import evaluate_sae  # noqa: PLC0415  (loaded with _real_sae's imports)

    return evaluate_sae(sae, x)


def check_mean_l0(mean_l0: Callable) -> None:
    """``mean_l0(h)``: the number of non-zero latents of a token, averaged over tokens."""
    name = "mean_l0"

    def test() -> str:
        require_function(mean_l0, name)
        hints = [
            ("that is the total count of non-zero entries: average it over tokens", lambda: 6),
            ("that is a fraction of latents: count them per token instead", lambda: 0.3),
            ("that is the sum of the activations, not a count", lambda: 9.5 / 4),
        ]
        got = number(call(mean_l0, LATENTS, case=LATENTS_CASE), LATENTS_CASE)
        close(got, 1.5, LATENTS_CASE, hints=hints)
        case = "no latent active"
        close(number(call(mean_l0, torch.zeros(3, 4), case=case), case), 0.0, case)
        sae, x = _real_sae()
        case = _real_case()
        with torch.no_grad():
            h = sae.encode(x)
        got = number(call(mean_l0, h, case=case), case)
        close(got, _evaluate(sae, x).mean_l0, case, rel=1e-9)
        return f"2 hand-solved cases and {case} (evaluate_sae)"

    run_check(name, test)


def check_dead_latents(dead_latents: Callable) -> None:
    """``dead_latents(h)``: how many latents are zero on every token (an int)."""
    name = "dead_latents"

    def test() -> str:
        require_function(dead_latents, name)
        hints = [
            ("that is a fraction: return how many latents, not which share", lambda: 0.4),
            ("that counts the latents that do fire", lambda: 3),
        ]
        got = number(call(dead_latents, LATENTS, case=LATENTS_CASE), LATENTS_CASE)
        close(got, 2, LATENTS_CASE, hints=hints)
        case = "every latent fires somewhere"
        close(number(call(dead_latents, torch.eye(4), case=case), case), 0, case)
        sae, x = _real_sae()
        case = _real_case()
        with torch.no_grad():
            h = sae.encode(x)
        got = number(call(dead_latents, h, case=case), case)
        close(got, _evaluate(sae, x).dead, case, rel=0)
        return f"2 hand-solved cases and {case} (evaluate_sae)"

    run_check(name, test)
