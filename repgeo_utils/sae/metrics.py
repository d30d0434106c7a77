"""How good an SAE is on held-out activations: MSE, fraction of variance unexplained, L0,
dead and dense latents, shrinkage and cosine, streamed over any activation source.

Shrinkage and cosine follow SAEBench's core evaluation (its "shrinkage" and "reconstruction
quality" metrics, computed as in SAELens's ``evals``): per token ``||x_hat|| / ||x||`` (a
token with ``||x|| < 1e-4`` divides by 1) and ``cos(x_hat, x)``, each averaged over tokens, on
the raw (uncentred) activations; plus the relative reconstruction bias of Marks et al. (2024),
``E||x_hat||^2 / E<x, x_hat>`` (1 when the reconstruction is unbiased in scale, < 1 when the
L1 penalty shrinks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .. import validate
from .model import SparseAutoencoder
from .sources import ActivationSource, ChunkSource


@dataclass(frozen=True)
class SAEMetrics:
    """Quality of an SAE on held-out activations (raw units)."""

    n_tokens: int
    #: mean over tokens and features of (x_hat - x)^2
    mse: float
    #: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
    fvu: float
    #: mean number of non-zero latents per token
    mean_l0: float
    #: latents never active on these tokens
    dead: int
    #: latents active on more than ``dense_threshold`` of the tokens
    dense: int
    d_sae: int
    dense_threshold: float = 0.1
    #: mean over tokens of ||x_hat|| / ||x|| (SAEBench's ``l2_ratio``; < 1: shrunk)
    shrinkage: float = float("nan")
    #: mean over tokens of cos(x_hat, x) (SAEBench's ``cossim``)
    cosine: float = float("nan")
    #: E||x_hat||^2 / E<x, x_hat> (Marks et al. 2024; SAEBench's
    #: ``relative_reconstruction_bias``)
    relative_reconstruction_bias: float = float("nan")

    @property
    def fve(self) -> float:
        """Fraction of variance explained, ``1 - fvu``."""
        return 1.0 - self.fvu

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "fve": self.fve}


@dataclass(frozen=True)
class SparsityStats:
    """L0 and firing statistics of a latent matrix."""

    mean_l0: float
    dead: int
    dense: int
    firing_frequency: Float[Tensor, " d_sae"]


def sparsity_stats(
    latents: Float[Tensor, "tokens d_sae"], dense_threshold: float = 0.1
) -> SparsityStats:
    """Mean L0, dead latents (never non-zero) and dense latents (non-zero on > threshold)."""
    if latents.ndim != 2 or latents.shape[0] == 0:
        raise ValueError(
            f"latents must be a non-empty (tokens x d_sae) matrix, got {latents.shape}"
        )
    active = latents != 0
    frequency = active.double().mean(0)
    return SparsityStats(
        mean_l0=float(active.sum(1).double().mean()),
        dead=int((frequency == 0).sum()),
        dense=int((frequency > dense_threshold).sum()),
        firing_frequency=frequency,
    )


def _norm_ratio_and_cosine(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per token (float64): ``||x_hat|| / ||x||`` (``||x|| < 1e-4`` divides by 1, as SAELens
    does), ``cos(x_hat, x)`` (0 where either is the zero vector), ``||x_hat||^2`` and
    ``<x, x_hat>``."""
    x, x_hat = x.double(), x_hat.double()
    norm_x = torch.linalg.vector_norm(x, dim=-1)
    norm_hat = torch.linalg.vector_norm(x_hat, dim=-1)
    dot = (x * x_hat).sum(-1)
    ratio = norm_hat / torch.where(norm_x < 1e-4, torch.ones_like(norm_x), norm_x)
    denominator = norm_x * norm_hat
    cosine = torch.where(denominator > 0, dot / denominator.clamp(min=1e-300), 0.0)
    return ratio, cosine, norm_hat.square(), dot


def shrinkage(x: Float[Tensor, "tokens d"], x_hat: Float[Tensor, "tokens d"]) -> float:
    """Mean over tokens of ``||x_hat|| / ||x||`` (SAEBench's ``l2_ratio``): 1 for a reconstruction
    of the right length, 0.5 for ``x_hat = x / 2``."""
    _check_pair(x, x_hat)
    return float(_norm_ratio_and_cosine(x, x_hat)[0].mean())


def reconstruction_cosine(x: Float[Tensor, "tokens d"], x_hat: Float[Tensor, "tokens d"]) -> float:
    """Mean over tokens of ``cos(x_hat, x)`` (SAEBench's ``cossim``)."""
    _check_pair(x, x_hat)
    return float(_norm_ratio_and_cosine(x, x_hat)[1].mean())


def _check_pair(x: Tensor, x_hat: Tensor) -> None:
    if x.shape != x_hat.shape or x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(
            f"x and x_hat must be non-empty (tokens x d) matrices of one shape, got "
            f"{tuple(x.shape)} and {tuple(x_hat.shape)}"
        )


def fraction_of_variance_unexplained(
    x: Float[Tensor, "tokens d"], x_hat: Float[Tensor, "tokens d"]
) -> float:
    """``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat differ in shape: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    x, x_hat = x.double(), x_hat.double()
    total = ((x - x.mean(0)) ** 2).sum()
    if total <= 0:
        raise ValueError("x has zero variance; the fraction of variance is undefined.")
    return float(((x - x_hat) ** 2).sum() / total)


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    activations: ActivationSource,
    *,
    batch_size: int = 8192,
    dense_threshold: float = 0.1,
) -> SAEMetrics:
    """:class:`SAEMetrics` on held-out ``activations``, streamed in batches."""
    validate.positive_int("batch_size", batch_size)
    validate.fraction("dense_threshold", dense_threshold)
    source = ChunkSource(activations, sae.d_in)
    if source.matrix is not None and source.matrix.shape[0] == 0:
        raise ValueError(
            f"The evaluation activations are empty (shape {tuple(source.matrix.shape)}): "
            "give at least one token row."
        )
    device = sae.W_enc.device
    n = 0
    sq_err = torch.zeros((), dtype=torch.float64)
    x_sum = torch.zeros(sae.d_in, dtype=torch.float64)
    x_sq = torch.zeros((), dtype=torch.float64)
    l0_sum = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    ratio_sum = torch.zeros((), dtype=torch.float64)
    cosine_sum = torch.zeros((), dtype=torch.float64)
    hat_sq_sum = torch.zeros((), dtype=torch.float64)
    dot_sum = torch.zeros((), dtype=torch.float64)
    for chunk in source.chunks(None):
        for x in chunk.split(batch_size):
            x = x.to(device=device, dtype=torch.float32)
            x_hat, h = sae(x)
            active = h != 0
            sq_err += (x_hat - x).double().square().sum().cpu()
            xd = x.double()
            x_sum += xd.sum(0).cpu()
            x_sq += xd.square().sum().cpu()
            l0_sum += active.sum().double().cpu()
            fires += active.sum(0).double().cpu()
            ratio, cosine, hat_sq, dot = _norm_ratio_and_cosine(x, x_hat)
            ratio_sum += ratio.sum().cpu()
            cosine_sum += cosine.sum().cpu()
            hat_sq_sum += hat_sq.sum().cpu()
            dot_sum += dot.sum().cpu()
            n += x.shape[0]
    if n == 0:
        raise ValueError("No evaluation tokens: the activation source yielded no rows.")
    total_var = x_sq - x_sum.square().sum() / n
    frequency = fires / n
    return SAEMetrics(
        n_tokens=n,
        mse=float(sq_err / (n * sae.d_in)),
        fvu=float(sq_err / total_var),
        mean_l0=float(l0_sum / n),
        dead=int((frequency == 0).sum()),
        dense=int((frequency > dense_threshold).sum()),
        d_sae=sae.d_sae,
        dense_threshold=dense_threshold,
        shrinkage=float(ratio_sum / n),
        cosine=float(cosine_sum / n),
        relative_reconstruction_bias=float(hat_sq_sum / dot_sum) if dot_sum != 0 else math.nan,
    )


@torch.no_grad()
def encode_batches(
    sae: SparseAutoencoder, activations: ActivationSource, batch_size: int = 8192
) -> Iterator[Float[Tensor, "batch d_sae"]]:
    """Latents of ``activations``, batch by batch, in order (on the SAE's device)."""
    validate.positive_int("batch_size", batch_size)
    source = ChunkSource(activations, sae.d_in)
    for chunk in source.chunks(None):
        for x in chunk.split(batch_size):
            yield sae.encode(x.to(sae.W_enc.device))
