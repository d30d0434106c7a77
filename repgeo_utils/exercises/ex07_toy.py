"""Checks of notebook ``exercises/ex07_toy.ipynb``: the loss and gradients of paper 2's linear
cross-entropy toy model, and one full-batch gradient-descent step.

With one-hot inputs the embedding is ``F = W`` (``n x d``), the logits ``Z = W U``
(``U``: ``d x C``), and the loss the mean over the ``n`` inputs of the cross-entropy against
soft targets ``T``: ``L = -(1/n) sum_ic T_ic log softmax(Z_i)_c``. Its gradients are
``dL/dZ = (softmax(Z) - T) / n``, ``dL/dW = dL/dZ U^T`` and ``dL/dU = W^T dL/dZ``.

Hand-solved cases: zero weights (uniform softmax, loss log C, zero gradients), one input and two
classes worked by hand, a central finite difference, and logits near 1000 (a softmax that does
not shift by the row maximum overflows). The real case is one step of
:func:`repgeo_utils.toy.train_toy`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..toy import ToyConfig, train_toy
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

#: The real case: a small toy run, started large enough that the softmax is far from uniform.
TOY = ToyConfig(n_samples=48, n_classes=12, d_embed=3, init_scale=0.5, steps=1, seed=3)
TOY_CASE = (
    f"one step of repgeo_utils.toy.train_toy (n = {TOY.n_samples}, C = {TOY.n_classes}, "
    f"d = {TOY.d_embed}, lr {TOY.learning_rate:g})"
)


@functools.cache
def _toy_step() -> dict[str, np.ndarray]:
    """Inputs and results of one step of the package's toy model.

    ``train_toy`` keeps the embeddings at step 0 (``snapshot_steps``), its labels, and ``W``,
    ``U`` after the step; the targets and the initial ``U`` are drawn here as it draws them,
    and the initial ``W`` is compared with its snapshot, so a change in how ``train_toy`` draws
    them fails loudly instead of checking against the wrong numbers."""
    run = train_toy(replace(TOY, snapshot_steps=(0,)))
    rng = np.random.default_rng(TOY.seed)
    pi = TOY.class_distribution()
    labels = rng.choice(TOY.n_classes, size=TOY.n_samples, p=pi)
    w0 = rng.normal(scale=TOY.init_scale, size=(TOY.n_samples, TOY.d_embed))
    u0 = rng.normal(scale=TOY.init_scale, size=(TOY.d_embed, TOY.n_classes))
    if not (np.array_equal(labels, run.labels) and np.array_equal(w0, run.snapshots[0])):
        raise RuntimeError("the check no longer draws train_toy's initial weights as it does")
    eps = TOY.label_smoothing
    targets = (1 - eps) * np.eye(TOY.n_classes)[labels] + eps * pi[None, :]
    assert run.readout is not None
    return {
        "w0": w0,
        "u0": u0,
        "targets": targets,
        "w1": run.embeddings,
        "u1": run.readout,
        "loss": np.array(run.loss[0]),
    }


def _reference(w, u, t):
    """The loss and gradients, written out (for finite differences and hints)."""
    z = w @ u
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    n = len(w)
    loss = -np.sum(t * log_p) / n
    g = (np.exp(log_p) - t) / n
    return loss, g @ u.T, w.T @ g


def _unpack(result, case: str, n: int, d: int, c: int):
    loss, grad_w, grad_u = items(result, ("loss", "grad_w", "grad_u"), case)
    loss = number(loss, f"{case}, loss")
    if getattr(grad_w, "shape", None) == (d, n) and (d, n) != (n, d):
        raise CheckFailed(f"{case}: grad_w has shape (d, n) = {(d, n)}: it must match W, (n, d)")
    if getattr(grad_u, "shape", None) == (c, d) and (c, d) != (d, c):
        raise CheckFailed(f"{case}: grad_u has shape (C, d) = {(c, d)}: it must match U, (d, C)")
    grad_w = array(grad_w, f"{case}, grad_w", (n, d))
    grad_u = array(grad_u, f"{case}, grad_u", (d, c))
    return loss, grad_w, grad_u


def _scaled_hints(reference: tuple, n: int, which: int) -> list:
    return [
        (
            "it is n times too large: the loss is a mean over the n inputs, so each gradient "
            "carries a 1/n",
            lambda: np.asarray(reference[which]) * n,
        ),
        ("its sign is flipped: the gradient points uphill", lambda: -np.asarray(reference[which])),
    ]


def check_toy_loss_and_grads(toy_loss_and_grads: Callable) -> None:
    """``toy_loss_and_grads(W, U, T) -> (loss, grad_W, grad_U)`` for the mean cross-entropy of
    ``softmax(W U)`` against the soft targets ``T`` (rows summing to 1)."""
    name = "toy_loss_and_grads"

    def test() -> str:
        require_function(toy_loss_and_grads, name)
        # zero weights: uniform softmax over C = 4 classes, loss log 4, gradients zero
        n, d, c = 5, 2, 4
        t = np.full((n, c), 0.1) + 0.6 * np.eye(c)[[0, 1, 2, 3, 0]]
        case = "zero weights (n = 5, d = 2, C = 4): loss log 4, zero gradients"
        got = call(toy_loss_and_grads, np.zeros((n, d)), np.zeros((d, c)), t, case=case)
        loss, grad_w, grad_u = _unpack(got, case, n, d, c)
        hints = [("the loss is summed over inputs: average it", lambda: n * math.log(c))]
        close(loss, math.log(c), f"{case}, loss", hints=hints)
        arrays_close(grad_w, np.zeros((n, d)), f"{case}, grad_w")
        arrays_close(grad_u, np.zeros((d, c)), f"{case}, grad_u")
        # one input, two classes: logits (log 3, 0) -> softmax (3/4, 1/4); target (1, 0)
        w, u, t = np.array([[1.0]]), np.array([[math.log(3), 0.0]]), np.array([[1.0, 0.0]])
        case = "one input, two classes (logits [log 3, 0], target [1, 0])"
        loss, grad_w, grad_u = _unpack(call(toy_loss_and_grads, w, u, t, case=case), case, 1, 1, 2)
        close(loss, math.log(4 / 3), f"{case}, loss")
        arrays_close(grad_w, np.array([[-math.log(3) / 4]]), f"{case}, grad_w")
        arrays_close(grad_u, np.array([[-0.25, 0.25]]), f"{case}, grad_u")
        # finite differences on a random problem
        rng = np.random.default_rng(0)
        n, d, c = 6, 3, 5
        w, u = rng.normal(size=(n, d)), rng.normal(size=(d, c))
        t = rng.dirichlet(np.ones(c), size=n)
        case = "a random problem (n = 6, d = 3, C = 5) against central finite differences"
        loss, grad_w, grad_u = _unpack(call(toy_loss_and_grads, w, u, t, case=case), case, n, d, c)
        reference = _reference(w, u, t)
        hints = [("the loss is summed over inputs: average it", lambda: n * reference[0])]
        close(loss, reference[0], f"{case}, loss", rel=1e-9, hints=hints)
        numeric_w, numeric_u = _finite_differences(w, u, t)
        arrays_close(
            grad_w,
            numeric_w,
            f"{case}, grad_w",
            rel=1e-5,
            abs=1e-8,
            hints=_scaled_hints(reference, n, 1),
        )
        arrays_close(
            grad_u,
            numeric_u,
            f"{case}, grad_u",
            rel=1e-5,
            abs=1e-8,
            hints=_scaled_hints(reference, n, 2),
        )
        # large logits: exp overflows unless each row is shifted by its maximum
        w, u, t = np.array([[100.0]]), np.array([[10.0, 0.0]]), np.array([[0.0, 1.0]])
        case = "logits [1000, 0] with target [0, 1] (loss 1000)"
        got = call(toy_loss_and_grads, w, u, t, case=case)
        try:
            loss, grad_w, grad_u = _unpack(got, case, 1, 1, 2)
        except CheckFailed as err:
            raise CheckFailed(
                f"{err}; exp(1000) overflows: subtract each row's largest logit before the "
                "softmax (it does not change the result)"
            ) from None
        close(loss, 1000.0, f"{case}, loss", rel=1e-9)
        arrays_close(grad_w, np.array([[10.0]]), f"{case}, grad_w", rel=1e-9)
        arrays_close(grad_u, np.array([[100.0, -100.0]]), f"{case}, grad_u", rel=1e-9)
        # the package's own step: gradient = (before - after) / learning rate
        real = _toy_step()
        lr = TOY.learning_rate
        got = call(toy_loss_and_grads, real["w0"], real["u0"], real["targets"], case=TOY_CASE)
        loss, grad_w, grad_u = _unpack(got, TOY_CASE, TOY.n_samples, TOY.d_embed, TOY.n_classes)
        close(loss, float(real["loss"]), f"{TOY_CASE}, loss", rel=1e-9)
        arrays_close(
            grad_w, (real["w0"] - real["w1"]) / lr, f"{TOY_CASE}, grad_w", rel=1e-7, abs=1e-12
        )
        arrays_close(
            grad_u, (real["u0"] - real["u1"]) / lr, f"{TOY_CASE}, grad_u", rel=1e-7, abs=1e-12
        )
        return f"4 known cases (by hand and by finite differences) and {TOY_CASE}"

    run_check(name, test)


def _finite_differences(w, u, t, h: float = 1e-6):
    """Central differences of the loss in every entry of W and of U."""
    grads = []
    for which in (0, 1):
        params = [w.copy(), u.copy()]
        grad = np.zeros_like(params[which])
        for index in np.ndindex(grad.shape):
            up, down = [p.copy() for p in params], [p.copy() for p in params]
            up[which][index] += h
            down[which][index] -= h
            loss_up = _reference(up[0], up[1], t)[0]
            loss_down = _reference(down[0], down[1], t)[0]
            grad[index] = (loss_up - loss_down) / (2 * h)
        grads.append(grad)
    return grads


def check_toy_step(toy_step: Callable) -> None:
    """``toy_step(W, U, T, lr) -> (W_new, U_new, loss)``: one full-batch gradient-descent
    step, both gradients taken at the old ``(W, U)``; ``loss`` is the loss before the step."""
    name = "toy_step"

    def test() -> str:
        require_function(toy_step, name)
        rng = np.random.default_rng(1)
        n, d, c = 6, 3, 5
        w, u = rng.normal(size=(n, d)), rng.normal(size=(d, c))
        t = rng.dirichlet(np.ones(c), size=n)
        lr = 0.5
        case = "a random problem (n = 6, d = 3, C = 5), lr 0.5"
        got = call(toy_step, w, u, t, lr, case=case)
        w_new, u_new, loss = items(got, ("W_new", "U_new", "loss"), case)
        w_new = array(w_new, f"{case}, W_new", (n, d))
        u_new = array(u_new, f"{case}, U_new", (d, c))
        loss0, grad_w, grad_u = _reference(w, u, t)
        sequential = u - lr * ((w - lr * grad_w).T @ ((_softmax(w @ u) - t) / n))
        after = _reference(w - lr * grad_w, u - lr * grad_u, t)[0]
        hints = [("that is the loss after the step: return the loss before it", lambda: after)]
        close(number(loss, f"{case}, loss"), loss0, f"{case}, loss", hints=hints)
        arrays_close(
            w_new,
            w - lr * grad_w,
            f"{case}, W_new",
            rel=1e-9,
            hints=[("the step goes uphill: subtract lr * gradient", lambda: w + lr * grad_w)],
        )
        hints = [
            (
                "U's gradient was taken at the already updated W: compute both gradients "
                "first, then update both",
                lambda: sequential,
            ),
            ("the step goes uphill: subtract lr * gradient", lambda: u + lr * grad_u),
        ]
        arrays_close(u_new, u - lr * grad_u, f"{case}, U_new", rel=1e-9, hints=hints)
        real = _toy_step()
        lr = TOY.learning_rate
        got = call(toy_step, real["w0"], real["u0"], real["targets"], lr, case=TOY_CASE)
        w_new, u_new, loss = items(got, ("W_new", "U_new", "loss"), TOY_CASE)
        shape_w, shape_u = real["w1"].shape, real["u1"].shape
        arrays_close(
            array(w_new, f"{TOY_CASE}, W_new", shape_w),
            real["w1"],
            f"{TOY_CASE}, W_new",
            rel=1e-9,
            abs=1e-12,
        )
        arrays_close(
            array(u_new, f"{TOY_CASE}, U_new", shape_u),
            real["u1"],
            f"{TOY_CASE}, U_new",
            rel=1e-9,
            abs=1e-12,
        )
        close(number(loss, f"{TOY_CASE}, loss"), float(real["loss"]), f"{TOY_CASE}, loss")
        return f"a random problem against the formulas and {TOY_CASE}"

    run_check(name, test)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
