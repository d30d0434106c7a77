"""What an SAE's latents are: firing statistics, the paper's top-variance features, the tokens
a feature fires on most, and one-to-one matching of the features of two SAEs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .. import validate
from .metrics import encode_batches
from .model import SparseAutoencoder
from .sources import ActivationSource


@dataclass(frozen=True)
class LatentStatistics:
    """Per-latent statistics of an SAE over a token set (one streaming pass)."""

    n_tokens: int
    #: share of tokens on which each latent is non-zero
    firing_frequency: Float[Tensor, " d_sae"]
    mean: Float[Tensor, " d_sae"]
    #: population variance over tokens (the paper's feature selection criterion)
    variance: Float[Tensor, " d_sae"]


@torch.no_grad()
def latent_statistics(
    sae: SparseAutoencoder, activations: ActivationSource, *, batch_size: int = 8192
) -> LatentStatistics:
    """Firing frequency, mean and variance of every latent over ``activations``, streamed."""
    validate.positive_int("batch_size", batch_size)
    n = 0
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    s1 = torch.zeros(sae.d_sae, dtype=torch.float64)
    s2 = torch.zeros(sae.d_sae, dtype=torch.float64)
    for h in encode_batches(sae, activations, batch_size):
        hd = h.double().cpu()
        fires += (hd != 0).sum(0)
        s1 += hd.sum(0)
        s2 += hd.square().sum(0)
        n += hd.shape[0]
    if n == 0:
        raise ValueError("No tokens to compute latent statistics on.")
    mean = s1 / n
    return LatentStatistics(
        n_tokens=n,
        firing_frequency=fires / n,
        mean=mean,
        variance=(s2 / n - mean.square()).clamp_(min=0),
    )


# --- top features and their tokens ---------------------------------------------------------


def latent_variance(
    latents: Float[Tensor, "tokens d_sae"] | Iterable[Float[Tensor, "batch d_sae"]],
) -> Float[Tensor, " d_sae"]:
    """Population variance of each latent over tokens (a matrix or an iterable of batches)."""
    batches = [latents] if isinstance(latents, Tensor | np.ndarray) else latents
    n = 0
    s1: Tensor | None = None
    s2: Tensor | None = None
    for batch in batches:
        b = torch.as_tensor(batch).double().cpu()
        if b.ndim != 2:
            raise ValueError(f"latents must be (tokens x d_sae) matrices, got shape {b.shape}")
        s1 = b.sum(0) if s1 is None else s1 + b.sum(0)
        s2 = b.square().sum(0) if s2 is None else s2 + b.square().sum(0)
        n += b.shape[0]
    if n == 0 or s1 is None or s2 is None:
        raise ValueError("No latents given.")
    mean = s1 / n
    return (s2 / n - mean.square()).clamp_(min=0)


def top_variance_features(
    latents: Float[Tensor, "tokens d_sae"] | Iterable[Float[Tensor, "batch d_sae"]], n: int
) -> Int[Tensor, " n"]:
    """The paper's selection: indices of the ``n`` latents with the highest variance over
    tokens, most variable first (ties broken by the lower index)."""
    variance = latent_variance(latents)
    n = validate.integer("n", n)
    if not 1 <= n <= variance.numel():
        raise ValueError(f"n must be between 1 and d_sae={variance.numel()}, got {n}")
    order = np.lexsort((np.arange(variance.numel()), -variance.numpy()))
    return torch.from_numpy(order[:n].copy())


@dataclass(frozen=True)
class TokenActivation:
    """One token where a feature fires, with its context in the sequence."""

    token: str
    activation: float
    sequence: int
    position: int
    left: str
    right: str

    def __str__(self) -> str:
        return f"{self.left} «{self.token}» {self.right}".strip()


def top_activating_tokens(
    feature_activations: Float[Tensor, " tokens"] | Float[np.ndarray, " tokens"],
    token_ids: Int[Tensor, " tokens"] | Int[np.ndarray, " tokens"],
    offsets: Int[Tensor, " seq_plus_1"] | Int[np.ndarray, " seq_plus_1"],
    tokenizer: Any,
    *,
    n: int = 10,
    context: int = 5,
) -> list[TokenActivation]:
    """The ``n`` tokens where one feature is largest, strongest first, each with up to
    ``context`` tokens either side from its own sequence.

    ``feature_activations[i]`` is the feature's value on token ``i`` of the flat token list
    ``token_ids``; sequence ``s`` owns tokens ``offsets[s]:offsets[s+1]``. Tokens with a zero
    activation are never returned.
    """
    n = validate.positive_int("n", n)
    context = validate.non_negative_int("context", context)
    acts = torch.as_tensor(feature_activations).flatten().double()
    ids = torch.as_tensor(token_ids).flatten().long()
    offsets = torch.as_tensor(offsets).flatten().long()
    if acts.numel() != ids.numel():
        raise ValueError(f"{acts.numel()} activations but {ids.numel()} token ids")
    if offsets.numel() < 2 or offsets[0] != 0 or offsets[-1] != ids.numel():
        raise ValueError(
            f"offsets must run from 0 to the token count ({ids.numel()}), got "
            f"{offsets[:3].tolist()}...{offsets[-2:].tolist()}"
        )
    k = min(n, int((acts != 0).sum()))
    if k == 0:
        return []
    values, index = acts.topk(k)
    sequences = torch.searchsorted(offsets, index, right=True) - 1
    out = []
    for value, i, s in zip(values.tolist(), index.tolist(), sequences.tolist(), strict=True):
        start, end = int(offsets[s]), int(offsets[s + 1])
        left = ids[max(start, i - context) : i].tolist()
        right = ids[i + 1 : min(end, i + 1 + context)].tolist()
        out.append(
            TokenActivation(
                token=tokenizer.convert_ids_to_tokens(int(ids[i])),
                activation=value,
                sequence=s,
                position=i - start,
                left=_join_tokens(tokenizer, left),
                right=_join_tokens(tokenizer, right),
            )
        )
    return out


def _join_tokens(tokenizer: Any, ids: list[int]) -> str:
    if not ids:
        return ""
    return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids))


@dataclass(frozen=True)
class FeatureMatch:
    """One-to-one matching of the features of SAE ``b`` to those of SAE ``a``.

    ``index_a[j]`` is the feature of ``a`` assigned to feature ``features_b[j]`` of ``b``
    (maximising the summed decoder cosine); ``cosine[j]`` its decoder cosine;
    ``nearest_cosine[j]`` the best cosine with any feature of ``a`` (no one-to-one constraint).
    """

    features_b: Int[Tensor, " m"]
    index_a: Int[Tensor, " m"]
    cosine: Float[Tensor, " m"]
    nearest_cosine: Float[Tensor, " m"]
    threshold: float

    @property
    def share_above(self) -> float:
        """Share of ``b``'s features whose assigned twin in ``a`` has cosine >= threshold."""
        return float((self.cosine >= self.threshold).double().mean())


def decoder_directions(sae: SparseAutoencoder) -> Float[Tensor, "d_sae d_in"]:
    """Unit-norm decoder rows (the feature directions in activation space)."""
    w = sae.W_dec.detach().double().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp(min=1e-12)


def match_features(
    sae_a: SparseAutoencoder,
    sae_b: SparseAutoencoder,
    *,
    threshold: float = 0.7,
    alive_a: Bool[Tensor, " d_sae_a"] | None = None,
    alive_b: Bool[Tensor, " d_sae_b"] | None = None,
) -> FeatureMatch:
    """Match every feature of ``sae_b`` to a distinct feature of ``sae_a`` by decoder-direction
    cosine (Hungarian assignment, :func:`scipy.optimize.linear_sum_assignment`).

    ``alive_a`` / ``alive_b`` restrict the matching to chosen features (e.g. those not dead).
    When ``b`` keeps more features than ``a``, the surplus features of ``b`` get no twin:
    ``index_a`` -1 and ``cosine`` -1, so they count as unmatched.
    """
    validate.real("threshold", threshold, minimum=-1.0, maximum=1.0)
    if sae_a.d_in != sae_b.d_in:
        raise ValueError(f"The SAEs read different spaces: d_in {sae_a.d_in} vs {sae_b.d_in}")
    da, db = decoder_directions(sae_a), decoder_directions(sae_b)
    rows_a = _feature_subset(alive_a, da.shape[0], "alive_a")
    rows_b = _feature_subset(alive_b, db.shape[0], "alive_b")
    sim = db[rows_b] @ da[rows_a].T  # (m_b, m_a)
    r, c = linear_sum_assignment(sim.numpy(), maximize=True)
    index_a = torch.full((len(rows_b),), -1, dtype=torch.long)
    cosine = torch.full((len(rows_b),), -1.0, dtype=torch.float64)
    index_a[r] = rows_a[c]
    cosine[r] = sim[r, c]
    return FeatureMatch(
        features_b=rows_b,
        index_a=index_a,
        cosine=cosine,
        nearest_cosine=sim.max(dim=1).values,
        threshold=threshold,
    )


def _feature_subset(mask: Tensor | None, size: int, name: str) -> Tensor:
    if mask is None:
        return torch.arange(size)
    mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
    if mask.numel() != size:
        raise ValueError(f"{name} has {mask.numel()} entries but the SAE has {size} features")
    if not mask.any():
        raise ValueError(f"{name} selects no features")
    return mask.nonzero().flatten()
