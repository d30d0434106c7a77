"""Eigen-direction ablation inside the forward pass (paper 2, Table 2): the eigenbasis of a
representation, a forward hook that keeps or removes its top-k directions, and a sweep over k.

:func:`fit_eigenbasis` gives the eigenvectors of a representation's centred covariance
(:class:`EigenBasis`); :func:`eigen_ablation` projects a torch module's output onto its top-k
directions (or removes them) through a forward hook; :func:`ablation_sweep` tabulates a metric
over k. These moved here from :mod:`repgeo_utils.spectral`, which keeps arrays in and numbers out.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..spectral import TORCH_EIGH_MIN_SIZE, CovarianceAccumulator, as_float_matrix

log = logging.getLogger(__name__)

AblationMode = Literal["keep", "remove"]

#: The two projections of :meth:`EigenBasis.projector`.
ABLATION_MODES: tuple[str, str] = ("keep", "remove")


def _check_k(k, dim: int) -> int:
    """``k`` as a Python int in ``[0, dim]``, or a ValueError naming ``dim``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an integer in [0, {dim}] (d = {dim}), got {k!r}.")
    if not 0 <= int(k) <= dim:
        raise ValueError(
            f"k must be in [0, {dim}]: the basis has d = {dim} eigen-directions, got k = {k}."
        )
    return int(k)


def check_ks(ks, dim: int) -> list[int]:
    """``ks`` (one ``k`` or a non-empty sequence) as a list of ints in ``[0, dim]``, or a
    ValueError naming ``dim``."""
    if isinstance(ks, numbers.Integral):
        ks = [ks]
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one number of eigen-directions.")
    return [_check_k(k, dim) for k in ks]


def _check_mode(mode) -> str:
    if mode not in ABLATION_MODES:
        raise ValueError(f"Unknown ablation mode {mode!r}; use 'keep' or 'remove'.")
    return mode


@dataclass(frozen=True, eq=False)
class EigenBasis:
    """Eigen-directions of a representation's centred covariance, from :func:`fit_eigenbasis`.

    ``vectors[:, i]`` is the eigenvector of the ``i``-th largest eigenvalue (descending
    ``eigenvalues``, covariance ``/(n - 1)``), with its largest-magnitude entry positive. With
    fewer samples than dimensions the trailing eigenvalues are zero and their vectors are an
    arbitrary orthonormal basis of the remaining space. All arrays are float64.
    (``eq=False``: instances compare by identity, as arrays have no single truth value.)
    """

    mean: Float[np.ndarray, " d"]
    vectors: Float[np.ndarray, "d d"]
    eigenvalues: Float[np.ndarray, " d"]
    n_samples: int

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.mean.ndim != 1 or self.vectors.shape != (d, d) or self.eigenvalues.shape != (d,):
            raise ValueError(
                f"EigenBasis needs mean (d,), vectors (d, d) and eigenvalues (d,), got "
                f"{self.mean.shape}, {self.vectors.shape} and {self.eigenvalues.shape}."
            )

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the representation."""
        return int(self.mean.shape[0])

    def projector(self, k: int, mode: AblationMode = "keep") -> Float[np.ndarray, "d d"]:
        """The ``d x d`` orthogonal projector of an ablation, float64, symmetric, idempotent.

        ``mode="keep"``: ``U_k U_k^T`` onto the top-``k`` eigen-directions (``k = 0`` gives the
        zero matrix, ``k = d`` the identity). ``mode="remove"``: ``I - U_k U_k^T`` onto their
        orthogonal complement (``k = 0`` is the identity, ``k = d`` zero).
        """
        k = _check_k(k, self.dim)
        _check_mode(mode)
        top = self.vectors[:, :k]
        keep = top @ top.T
        return keep if mode == "keep" else np.eye(self.dim) - keep

    def apply(
        self, x: Float[np.ndarray, "... d"], k: int, mode: AblationMode = "keep"
    ) -> Float[np.ndarray, "... d"]:
        """``mean + (x - mean) @ P`` for rows ``x`` (last axis ``d``), in float64.

        The ablation acts on the centred representation: ``keep`` with ``k = 0`` (or
        ``remove`` with ``k = d``) sends every row to the mean.
        """
        if hasattr(x, "detach"):
            x = x.detach().cpu().float().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"x must have d = {self.dim} entries along its last axis, got shape {x.shape}."
            )
        return self.mean + (x - self.mean) @ self.projector(k, mode)

    def variance_fraction(self, k: int, mode: AblationMode = "keep") -> float:
        """Fraction of the fitted variance the projection keeps (``sum(lambda[:k]) / total``
        for ``keep``, the rest for ``remove``); NaN when the samples have no variance."""
        k = _check_k(k, self.dim)
        _check_mode(mode)
        total = float(self.eigenvalues.sum())
        if total <= 0:
            return float("nan")
        top = float(self.eigenvalues[:k].sum()) / total
        return top if mode == "keep" else 1.0 - top


def _orient(vectors: np.ndarray) -> np.ndarray:
    """Flip each column so its largest-magnitude entry (first one on ties) is positive."""
    rows = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def fit_eigenbasis(
    features: Float[np.ndarray, "samples d"], block_rows: int = 1 << 16
) -> EigenBasis:
    """Mean and covariance eigenvectors of the rows of ``features`` (e.g. token states).

    The centred covariance (``/(n - 1)``) is accumulated in float64 block by block (so a
    float32 token matrix is never copied whole to float64) and diagonalised with
    ``numpy.linalg.eigh``, or ``torch.linalg.eigh`` from :data:`TORCH_EIGH_MIN_SIZE`
    dimensions on. Eigenvalues are descending with round-off negatives set to zero;
    eigenvectors follow the sign convention of :class:`EigenBasis`.
    """
    x = as_float_matrix(features)
    n, d = x.shape
    if n < 2:
        raise ValueError("A centred covariance needs at least 2 samples, got 1.")
    acc = CovarianceAccumulator()
    for lo in range(0, n, block_rows):
        acc.update(x[lo : lo + block_rows])
    covariance = acc.covariance()
    if d >= TORCH_EIGH_MIN_SIZE:
        values, vectors = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(covariance)))
    else:
        values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1], vectors[:, ::-1]
    log.debug("fit_eigenbasis: %d samples x %d dimensions", n, d)
    return EigenBasis(
        mean=acc.mean,
        vectors=_orient(np.ascontiguousarray(vectors)),
        eigenvalues=np.clip(values, 0.0, None).copy(),
        n_samples=int(n),
    )


@dataclass
class AblationHook:
    """What :func:`eigen_ablation` yields: the ablation and how often the hook has fired."""

    k: int
    mode: str
    projector: Float[np.ndarray, "d d"]
    calls: int = 0


@contextmanager
def eigen_ablation(
    module, basis: EigenBasis, k: int, mode: AblationMode = "keep"
) -> Iterator[AblationHook]:
    """Within the block, ``module``'s output ``h`` (shape ``(..., d)``) is replaced by
    ``mean + (h - mean) @ P`` with ``P = basis.projector(k, mode)``.

    ``module`` is a torch ``nn.Module``; the projection is computed in ``h``'s dtype and on
    its device. A module returning a tuple (a Hugging Face transformer layer in older
    ``transformers``) has element 0 replaced and the rest kept; any other output type raises
    a TypeError, and a last dimension other than ``basis.dim`` a ValueError, when the module
    runs. The hook is removed on leaving the block, also on an exception. Yields an
    :class:`AblationHook` whose ``calls`` counts the forward passes it changed.
    """
    if not hasattr(module, "register_forward_hook"):
        raise TypeError(f"module must be a torch nn.Module, got {type(module).__name__}.")
    if not isinstance(basis, EigenBasis):
        raise TypeError(f"basis must be an EigenBasis, got {type(basis).__name__}.")
    projector = basis.projector(k, mode)
    record = AblationHook(k=int(k), mode=mode, projector=projector)
    cache: dict = {}  # (dtype, device) -> (mean, P) tensors

    def project(h):
        if h.shape[-1] != basis.dim:
            raise ValueError(
                f"The module's output has last dimension {h.shape[-1]} but the eigenbasis "
                f"has d = {basis.dim}."
            )
        key = (h.dtype, h.device)
        if key not in cache:
            cache[key] = (
                torch.as_tensor(basis.mean, dtype=h.dtype, device=h.device),
                torch.as_tensor(projector, dtype=h.dtype, device=h.device),
            )
        mean, p = cache[key]
        return mean + (h - mean) @ p

    def hook(_module, _inputs, output):
        if hasattr(output, "shape") and hasattr(output, "dtype"):
            new = project(output)
        elif isinstance(output, tuple) and output and hasattr(output[0], "shape"):
            new = (project(output[0]), *output[1:])
        else:
            raise TypeError(
                f"eigen_ablation supports modules returning a tensor or a tuple whose first "
                f"element is the hidden state, got {type(output).__name__}."
            )
        record.calls += 1
        return new

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


#: Columns of :func:`ablation_sweep`'s table before the metric columns.
ABLATION_COLUMNS = ("mode", "k", "variance_fraction")


def _as_metrics(value) -> dict[str, float]:
    """An ``evaluate()`` result as ``{column: float}``."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("evaluate() returned an empty dict.")
        out = {}
        for key, v in value.items():
            if str(key) in ABLATION_COLUMNS:
                raise ValueError(f"evaluate() returned a metric named {key!r}, a reserved column.")
            if not isinstance(v, numbers.Real):
                raise TypeError(f"evaluate() returned {key!r} = {v!r}, not a number.")
            out[str(key)] = float(v)
        return out
    if isinstance(value, numbers.Real) or (hasattr(value, "item") and np.ndim(value) == 0):
        return {"metric": float(value)}
    raise TypeError(
        f"evaluate() must return a float or a dict of floats, got {type(value).__name__}."
    )


def ablation_sweep(
    evaluate: Callable[[], float | Mapping[str, float]],
    module,
    basis: EigenBasis,
    ks: Sequence[int],
    modes: Sequence[str] = ABLATION_MODES,
    *,
    upstream: Sequence[torch.nn.Module] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """``evaluate()`` without an ablation and under every ``(mode, k)`` ablation of ``module``.

    ``evaluate`` takes no arguments and runs the model (so ``module``) itself, returning a
    float (column ``metric``) or a dict of floats (one column each). The table has columns
    ``mode``, ``k``, ``variance_fraction`` (the fraction of the fitted variance the projection
    keeps, :meth:`EigenBasis.variance_fraction`) and the metric(s): first a baseline row
    ``mode="none"``, ``k=basis.dim`` without any hook, then one row per mode and k in the
    order given. A RuntimeError is raised if ``evaluate()`` never ran ``module`` (an ablation
    that changes nothing). ``attrs`` holds ``dim`` and ``n_samples`` of the basis.

    ``upstream``: the modules that make ``module``'s output, ending with ``module``
    (``splice.upstream_modules``). The baseline pass records them and every ablated pass
    replays them (:class:`Replay`): the same numbers, without recomputing the unablated part of
    the model for every k. ``evaluate`` must then run the same batches each time.
    """
    if not callable(evaluate):
        raise TypeError("evaluate must be a zero-argument callable.")
    ks = check_ks(ks, basis.dim)
    modes = [_check_mode(m) for m in ([modes] if isinstance(modes, str) else list(modes))]
    if not modes:
        raise ValueError("modes is empty: use 'keep', 'remove' or both.")
    runs = [("none", basis.dim)] + [(m, k) for m in modes for k in ks]
    records = []
    metric_names: list[str] | None = None
    replay = None if upstream is None else Replay(upstream)
    if replay is not None and (not replay.modules or replay.modules[-1] is not module):
        raise ValueError("upstream must end with the ablated module.")
    for mode, k in tqdm(runs, desc="eigen-ablation", disable=not progress):
        if mode == "none":
            with replay.record() if replay is not None else nullcontext():
                metrics = _as_metrics(evaluate())
            fraction = 1.0
        else:
            with (
                replay.replayed() if replay is not None else nullcontext(),
                eigen_ablation(module, basis, k, mode) as hook,
            ):
                metrics = _as_metrics(evaluate())
            if hook.calls == 0:
                raise RuntimeError(
                    "evaluate() never ran the ablated module: the ablation changed nothing. "
                    "Pass the module that evaluate's model actually calls."
                )
            fraction = basis.variance_fraction(k, mode)
        if metric_names is None:
            metric_names = list(metrics)
        elif list(metrics) != metric_names:
            raise ValueError(
                f"evaluate() returned metrics {list(metrics)} after {metric_names} before."
            )
        records.append({"mode": mode, "k": k, "variance_fraction": fraction, **metrics})
    table = pd.DataFrame.from_records(records, columns=[*ABLATION_COLUMNS, *(metric_names or [])])
    table.attrs["dim"] = basis.dim
    table.attrs["n_samples"] = basis.n_samples
    return table


# --- replaying the unchanged part of a forward pass ---------------------------------------------


class Replay:
    """The outputs of the modules upstream of an ablated or spliced layer, recorded on a clean
    pass and handed back on later passes instead of computing them again.

    A hook on ``hidden_states[L]`` changes nothing before it, so every variant of an ablation or
    splice would otherwise recompute the same embeddings and layers ``1..L`` on the same inputs.
    :meth:`record` captures each module's output (forward hooks; the outputs themselves, in call
    order); inside :meth:`replayed`, each module's ``forward`` returns the next recorded output
    without running, and the forward hooks on it (the ablation's, the splice's) still apply. The
    results are the same bits as recomputing: the later modules get the very tensors a clean
    pass gives them. A replayed pass whose first module gets other inputs than the recorded
    pass (compared in full), or that calls a module more or fewer times, raises a RuntimeError
    instead of returning another pass's states. Modules must not modify their inputs in place
    (none of the Hugging Face layers do).
    """

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        self.modules = list(modules)
        self.outputs: list[list] = [[] for _ in self.modules]
        #: the first tensor argument of each recorded call of the first module
        self.inputs: list[torch.Tensor | None] = []

    @staticmethod
    def _first_tensor(args, kwargs) -> torch.Tensor | None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                return value
        return None

    @contextmanager
    def record(self) -> Iterator[Replay]:
        """Within the block, every call of the modules is recorded (outputs unchanged)."""
        self.outputs = [[] for _ in self.modules]
        self.inputs = []
        handles = []
        for i, module in enumerate(self.modules):

            def capture(_module, args, kwargs, output, i=i):
                self.outputs[i].append(output)
                if i == 0:
                    self.inputs.append(self._first_tensor(args, kwargs))

            handles.append(module.register_forward_hook(capture, with_kwargs=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _check_input(self, at: int, got: torch.Tensor | None) -> None:
        recorded = self.inputs[at]
        if got is None and recorded is None:
            return
        if (
            got is None
            or recorded is None
            or got.shape != recorded.shape
            or not torch.equal(got, recorded)
        ):
            shapes = [None if t is None else tuple(t.shape) for t in (got, recorded)]
            raise RuntimeError(
                f"Replay: {type(self.modules[0]).__name__} got other inputs than in the recorded "
                f"pass (call {at}: shape {shapes[0]}, recorded {shapes[1]})."
            )

    @contextmanager
    def replayed(self, upto: int | None = None) -> Iterator[Replay]:
        """Within the block, the first ``upto`` modules (all by default) return their recorded
        outputs in order instead of running; leaving it checks that each was called exactly as
        often as recorded."""
        count = len(self.modules) if upto is None else upto
        if not 0 <= count <= len(self.modules):
            raise ValueError(f"upto must be in [0, {len(self.modules)}], got {upto}")
        cursors = [0] * count
        saved = []
        for i, module in enumerate(self.modules[:count]):
            saved.append(module.__dict__.get("forward"))

            def forward(*args, i=i, **kwargs):
                at = cursors[i]
                if at >= len(self.outputs[i]):
                    raise RuntimeError(
                        f"Replay: {type(self.modules[i]).__name__} ran more often than in the "
                        f"recorded pass ({len(self.outputs[i])} calls)."
                    )
                if i == 0:
                    self._check_input(at, self._first_tensor(args, kwargs))
                cursors[i] = at + 1
                return self.outputs[i][at]

            module.forward = forward
        try:
            yield self
        finally:
            for module, before in zip(self.modules[:count], saved, strict=True):
                if before is None:
                    del module.forward
                else:
                    module.forward = before
        short = [
            type(self.modules[i]).__name__
            for i in range(count)
            if cursors[i] != len(self.outputs[i])
        ]
        if short:
            raise RuntimeError(
                f"Replay: {', '.join(short)} ran fewer times than in the recorded pass; the "
                "replayed pass did not repeat it."
            )
