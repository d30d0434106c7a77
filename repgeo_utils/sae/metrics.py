"""How good an SAE is on held-out activations: MSE, fraction of variance unexplained, L0,
dead and dense latents, streamed over any activation source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

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
    source = ChunkSource(activations, sae.d_in)
    device = sae.W_enc.device
    n = 0
    sq_err = torch.zeros((), dtype=torch.float64)
    x_sum = torch.zeros(sae.d_in, dtype=torch.float64)
    x_sq = torch.zeros((), dtype=torch.float64)
    l0_sum = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
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
            n += x.shape[0]
    if n == 0:
        raise ValueError("No evaluation tokens.")
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
    )


@torch.no_grad()
def encode_batches(
    sae: SparseAutoencoder, activations: ActivationSource, batch_size: int = 8192
) -> Iterator[Float[Tensor, "batch d_sae"]]:
    """Latents of ``activations``, batch by batch, in order (on the SAE's device)."""
    source = ChunkSource(activations, sae.d_in)
    for chunk in source.chunks(None):
        for x in chunk.split(batch_size):
            yield sae.encode(x.to(sae.W_enc.device))
