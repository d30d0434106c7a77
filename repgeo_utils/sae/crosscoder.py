"""A crosscoder on row-paired activations of two models (pre-trained and fine-tuned): one
dictionary that reads and writes both models' activations at the same tokens, and what its
decoder norms say about which features fine-tuning keeps, drops and creates.

**Model.** The encoder reads both models' activations at a token, ``x = [x_pre, x_post]``
(``2 d_in``), and gives ``d_sae`` non-negative latents ``f = ReLU((x - b_dec) W_enc + b_enc)``;
each model has its own decoder, ``x_hat_m = f W_dec^m + b_dec^m``. Stored as one ``W_dec`` of
``d_sae x 2 d_in`` (pre-trained columns first), so training is an SAE's five matrix products
on the concatenation.

**Loss (the main setting, ``sparsity="l1"``)**: Anthropic's crosscoder (Lindsey et al. 2024,
"Sparse Crosscoders for Cross-Layer Features and Model Diffing"; as in Kissane et al.'s open
replication, ckkissane/crosscoder-model-diff-replication), with the L1 penalty of each latent
weighted by the *sum of its decoder norms* over the two models:

    L = sum_m mean_{tokens, features} (x_hat_m - x_m)^2 + lambda * mean_tokens sum_i f_i (||d_i^pre|| + ||d_i^post||)

The decoder norms are free, so a latent that only one model uses can shrink the other's decoder
to zero: its **relative decoder norm** ``r_i = ||d_i^post|| / (||d_i^pre|| + ||d_i^post||)`` is
~0 for a pre-only latent, ~1 for a post-only one and ~0.5 for a shared one
(:data:`RELATIVE_NORM_BANDS`).

**The alternative (``sparsity="batchtopk"``)**: the BatchTopK crosscoder Minder et al. (2025,
"Overcoming Sparsity Artifacts in Crosscoders to Interpret Chat-Tuning") recommend: no L1; each
batch keeps its ``k x batch`` largest values of ``f_i (||d_i^pre|| + ||d_i^post||)``; at inference
a latent fires where that value exceeds a threshold learnt as the running mean of the batches'
cut-off. (Their auxiliary loss for dead latents is not included.)

**The known failure (Minder et al. 2025).** With L1, a latent can look model-specific only
because of the sparsity penalty: *complete shrinkage* (a concept present, but weaker, in the
other model has its decoder there shrunk to zero) and *latent decoupling* (the other model
reconstructs the same direction with other latents). **Latent scaling** checks it
(:func:`latent_scaling`): for a post-only latent with direction ``v = d^post``, fit per model
``m`` the scalar ``beta^m = argmin_beta sum_tokens ||beta f v - y^m||^2`` for ``y^m`` the model's
*error* plus the latent's own contribution (``nu_eps = beta^pre / beta^post``) and its
*reconstruction* without the latent (``nu_r``). ``nu`` near 0: the pre-trained model really lacks
the direction; near 1: it is there, and the latent is shared. :func:`latent_table` applies it to
the post-only and pre-only latents and counts those that are "really shared"
(``nu_eps`` or ``nu_r`` at least :data:`SHARED_NU`, our threshold).

All of it happens in the units the crosscoder was trained in: each model's activations are
scaled by one constant so that their mean squared distance from their mean is ``d_in`` (as the
SAE's ``scale_inputs``; Kissane et al. normalise each model separately too). Otherwise a model
with larger activations would get larger decoder norms. The scales are folded into the weights
after training (so the crosscoder takes raw activations) and kept in ``input_scales``;
:meth:`Crosscoder.decoder_norms` gives the norms in the training units.

Training (:func:`train_crosscoder`) uses hand-written gradients and a fused Adam, like
:func:`~repgeo_utils.sae.train_sae`; ``benchmarks/bench_crosscoder.py`` measures its
throughput against the GEMM bound and against the SAE per latent.
:func:`train_crosscoder_on_activations` caches a crosscoder per layer of two cached activation
sets, keyed by both sets' keys, the layer, the config and the split.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..cache import cache_entry
from .cached import DIVERGED_FVU, split_texts
from .sources import ChunkSource, RowSelection
from .training import default_device

if TYPE_CHECKING:
    from ..activations import ActivationSet

log = logging.getLogger(__name__)

Sparsity = Literal["l1", "batchtopk"]
MODELS = ("pre", "post")

#: Relative decoder norm ``r = ||d_post|| / (||d_pre|| + ||d_post||)`` bands, ``[low, high)``
#: (the last one closed): pre-only below 0.1, post-only above 0.9, shared between 0.3 and 0.7,
#: the two "leaning" bands in between. (Anthropic and Kissane et al. read the histogram's modes
#: at 0, 0.5 and 1; the cut-offs are ours.)
RELATIVE_NORM_BANDS: dict[str, tuple[float, float]] = {
    "pre-only": (0.0, 0.1),
    "pre-leaning": (0.1, 0.3),
    "shared": (0.3, 0.7),
    "post-leaning": (0.7, 0.9),
    "post-only": (0.9, 1.0),
}
#: A model-specific latent whose latent-scaling ratio ``nu_eps`` or ``nu_r`` reaches this is
#: counted as really shared: the other model carries at least half as much of its direction.
SHARED_NU = 0.5

FORMAT = "repgeo-crosscoder/1"
WEIGHTS_FILE = "repgeo_crosscoder.safetensors"
CONFIG_FILE = "config.json"


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class CrosscoderConfig:
    """Architecture and training settings of one crosscoder (all of it goes into cache keys).

    ``d_in`` is one model's width (the encoder reads ``2 d_in``). ``sparsity="l1"`` uses
    ``l1_coefficient`` (on ``f_i`` times the sum of its decoder norms); ``"batchtopk"`` uses
    ``k`` (mean active latents a token). Other fields as in :class:`~repgeo_utils.sae.SAEConfig`.
    """

    d_in: int
    d_sae: int
    sparsity: Sparsity = "l1"
    l1_coefficient: float = 1e-2
    k: int | None = None
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0
    subtract_decoder_bias: bool = True
    scale_inputs: bool = True
    stats_tokens: int = 65_536
    #: L1 only: start each latent active on this share of tokens (None: b_enc starts at 0)
    init_density: float | None = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_in", "d_sae", "epochs", "batch_size", "stats_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if self.sparsity not in ("l1", "batchtopk"):
            problems.append(f"sparsity must be 'l1' or 'batchtopk', got {self.sparsity!r}")
        if self.sparsity == "batchtopk":
            if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
                problems.append(f"sparsity 'batchtopk' needs a positive int k, got {self.k!r}")
            elif isinstance(self.d_sae, int) and self.k > self.d_sae:
                problems.append(f"k={self.k} is larger than d_sae={self.d_sae}")
        elif self.k is not None:
            problems.append(f"k={self.k} only applies to sparsity 'batchtopk'")
        if not (
            isinstance(self.l1_coefficient, int | float)
            and math.isfinite(self.l1_coefficient)
            and self.l1_coefficient >= 0
        ):
            problems.append(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be a non-negative int, got {self.seed!r}")
        if self.init_density is not None and not (
            isinstance(self.init_density, int | float) and 0 < self.init_density < 1
        ):
            problems.append(f"init_density must be in (0, 1) or None, got {self.init_density!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            problems.append(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if problems:
            raise ValueError("Invalid CrosscoderConfig: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrosscoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown CrosscoderConfig fields: {', '.join(sorted(unknown))}.")
        data = dict(data)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)


# --- the model -----------------------------------------------------------------------------


class Crosscoder(nn.Module):
    """``encode(x_pre, x_post)`` -> latents; ``decode(f)`` -> ``(x_hat_pre, x_hat_post)``.

    ``W_enc`` is ``2 d_in x d_sae`` (pre-trained rows first), ``W_dec`` ``d_sae x 2 d_in``
    (pre-trained columns first), ``b_dec`` ``2 d_in``. A trained crosscoder takes raw
    activations; ``input_scales`` are the two constants it was trained with (folded in).
    ``threshold`` is the BatchTopK inference threshold (unused by L1).
    """

    def __init__(self, config: CrosscoderConfig) -> None:
        super().__init__()
        self.config = config
        d2 = 2 * config.d_in
        self.W_enc = nn.Parameter(torch.empty(d2, config.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.W_dec = nn.Parameter(torch.empty(config.d_sae, d2))
        self.b_dec = nn.Parameter(torch.zeros(d2))
        self.register_buffer("input_scales", torch.ones(2))
        self.register_buffer("threshold", torch.zeros(()))
        self.reset_parameters()

    input_scales: Tensor
    threshold: Tensor

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows: random unit directions of the concatenated space (so about
        ``1/sqrt(2)`` in each model); encoder: their transpose; biases zero."""
        w = torch.randn(self.config.d_sae, 2 * self.config.d_in, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    def _pair(self, x_pre, x_post) -> Tensor:
        parts = []
        for name, x in (("x_pre", x_pre), ("x_post", x_post)):
            if not isinstance(x, Tensor):
                x = torch.as_tensor(np.asarray(x))
            if x.shape[-1] != self.d_in:
                raise ValueError(
                    f"This crosscoder takes {self.d_in} features a model; {name} has shape "
                    f"{tuple(x.shape)}."
                )
            parts.append(x.to(device=self.W_enc.device, dtype=self.W_enc.dtype))
        if parts[0].shape != parts[1].shape:
            raise ValueError(
                f"x_pre and x_post must be row-paired (one shape), got {tuple(parts[0].shape)} "
                f"and {tuple(parts[1].shape)}."
            )
        return torch.cat(parts, -1)

    def pre_activations(self, x_pre, x_post) -> Float[Tensor, "*batch d_sae"]:
        x = self._pair(x_pre, x_post)
        if self.config.subtract_decoder_bias:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x_pre, x_post) -> Float[Tensor, "*batch d_sae"]:
        """Latents of a token pair (BatchTopK: those above the learnt threshold)."""
        f = torch.relu(self.pre_activations(x_pre, x_post))
        if self.config.sparsity == "batchtopk":
            f = f * (f * self._norm_sum() > self.threshold)
        return f

    def decode(self, f: Float[Tensor, "*batch d_sae"]) -> tuple[Tensor, Tensor]:
        """``(x_hat_pre, x_hat_post)``."""
        out = f @ self.W_dec + self.b_dec
        return out[..., : self.d_in], out[..., self.d_in :]

    def forward(self, x_pre, x_post) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_hat_pre, x_hat_post, latents)``."""
        f = self.encode(x_pre, x_post)
        return (*self.decode(f), f)

    def _norm_sum(self) -> Tensor:
        norms = self.decoder_norms()
        return norms.sum(1).to(self.W_dec.dtype)

    def decoder_norms(self) -> Float[Tensor, "d_sae 2"]:
        """``||d_i^pre||`` and ``||d_i^post||`` per latent, in the training units (each model's
        activations scaled to mean squared distance ``d_in`` from their mean)."""
        w = self.W_dec.detach()
        pre = w[:, : self.d_in].norm(dim=1) * self.input_scales[0]
        post = w[:, self.d_in :].norm(dim=1) * self.input_scales[1]
        return torch.stack([pre, post], 1)

    def relative_norms(self) -> Float[Tensor, " d_sae"]:
        """``r_i = ||d_i^post|| / (||d_i^pre|| + ||d_i^post||)`` (NaN where both are 0)."""
        norms = self.decoder_norms().double()
        total = norms.sum(1)
        return torch.where(total > 0, norms[:, 1] / total.clamp(min=1e-300), math.nan)

    def decoder_cosines(self) -> Float[Tensor, " d_sae"]:
        """Cosine of each latent's pre-trained and fine-tuned decoder directions."""
        w = self.W_dec.detach().double()
        a, b = w[:, : self.d_in], w[:, self.d_in :]
        denominator = a.norm(dim=1) * b.norm(dim=1)
        return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp(min=1e-300), 0.0)

    @torch.no_grad()
    def fold_input_scales(self, scales: Tensor) -> None:
        """Make a crosscoder trained on ``x_m * s_m`` take raw ``x_m``."""
        s = torch.repeat_interleave(scales.to(self.W_enc.dtype), self.d_in)
        self.W_enc.mul_(s[:, None].to(self.W_enc.device))
        self.W_dec.div_(s.to(self.W_dec.device))
        self.b_dec.div_(s.to(self.b_dec.device))
        self.input_scales.mul_(scales.to(self.input_scales))

    def extra_repr(self) -> str:
        c = self.config
        extra = f"k={c.k}" if c.sparsity == "batchtopk" else f"l1={c.l1_coefficient:g}"
        return f"crosscoder {c.sparsity}: 2 x {c.d_in} -> {c.d_sae}, {extra}"


# --- training ------------------------------------------------------------------------------


@dataclass
class CrosscoderHistory:
    """Losses of a crosscoder run (training units)."""

    step_loss: list[float] = field(default_factory=list)
    #: sum over the two models of the mean squared error per feature
    step_mse: list[float] = field(default_factory=list)
    #: mean over tokens of sum_i f_i (||d_pre|| + ||d_post||)
    step_l1: list[float] = field(default_factory=list)
    step_l0: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0
    input_scales: list[float] = field(default_factory=lambda: [1.0, 1.0])

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds > 0 else float("nan")


@torch.no_grad()
def _grad_step(cc: Crosscoder, x: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """Set every parameter's ``.grad`` for one batch of scaled, concatenated activations;
    return ``(mse, l1 term, batch threshold, density)``. Five matrix products, as an SAE's:

        pre = (x - b_dec) W_enc + b_enc;  f = ReLU(pre) (BatchTopK: the batch's top k n of
        f * (||d_pre|| + ||d_post||) kept);  err = f W_dec + b_dec - x;
        loss = ||err||^2 / (n d_in) + l1 * sum(f * w) / n,  w_i = ||d_i^pre|| + ||d_i^post||.

    The L1 term's gradient is ``l1 w / n`` at the latents (riding along as the bias of the
    back-product) and ``l1 (sum_n f_ni) / n * d_i^m / ||d_i^m||`` at the decoder.
    """
    c = cc.config
    n, d2 = x.shape
    d = c.d_in
    w = cc.W_dec
    block_norms = torch.stack([w[:, :d].norm(dim=1), w[:, d:].norm(dim=1)], 1)  # (m, 2)
    weight = block_norms.sum(1)
    xc = x - cc.b_dec if c.subtract_decoder_bias else x
    pre = torch.addmm(cc.b_enc, xc, cc.W_enc)
    f = pre.clamp_(min=0)
    cut = torch.zeros((), dtype=x.dtype)
    if c.sparsity == "batchtopk":
        assert c.k is not None
        score = f * weight
        keep = min(c.k * n, score.numel())
        flat = score.reshape(-1)
        cut = (
            torch.kthvalue(flat, flat.numel() - keep + 1).values
            if keep < flat.numel()
            else (flat.min())
        )
        f.mul_(score >= cut)
        cut = cut.clamp(min=0)
    err = torch.addmm(cc.b_dec, f, w).sub_(x)
    mse = torch.linalg.vector_norm(err).square() / (n * d)
    g_out = err.mul_(2.0 / (n * d))
    w.grad = torch.mm(f.T, g_out)
    cc.b_dec.grad = g_out.sum(0)
    l1 = c.l1_coefficient if c.sparsity == "l1" else 0.0
    activity = f.sum(0)
    l1_term = (activity * weight).sum() / n
    if l1 > 0:
        g_f = torch.addmm(weight * (l1 / n), g_out, w.T)
        safe = block_norms.clamp(min=1e-12)
        scale = (activity * (l1 / n))[:, None] / safe  # (m, 2)
        w.grad[:, :d].addcmul_(w[:, :d], scale[:, :1])
        w.grad[:, d:].addcmul_(w[:, d:], scale[:, 1:])
    else:
        g_f = torch.mm(g_out, w.T)
    g_pre = torch.ops.aten.threshold_backward(g_f, f, 0.0)
    cc.W_enc.grad = torch.mm(xc.T, g_pre)
    cc.b_enc.grad = g_pre.sum(0)
    density = float(f.sign().sum()) / (n * c.d_sae)
    return mse, l1_term, cut, density


class PairedRows(RowSelection):
    """The same rows of two row-paired arrays (e.g. one shard of each model's activations),
    read when used as one ``(rows, 2 d)`` matrix: pre-trained columns, then fine-tuned."""

    def __init__(self, pre: Any, post: Any, rows: Int[np.ndarray, " rows"] | None = None):
        if len(pre) != len(post):
            raise ValueError(f"Paired arrays differ in length: {len(pre)} vs {len(post)} rows.")
        super().__init__(pre, rows)
        self.post = post

    def load(self) -> np.ndarray:
        if self.rows is None:
            a, b = np.asarray(self.array), np.asarray(self.post)
        else:
            a, b = np.asarray(self.array[self.rows]), np.asarray(self.post[self.rows])
        return np.concatenate([a, b], axis=1)


def _paired_source(x_pre: Any, x_post: Any, d_in: int) -> ChunkSource:
    """A :class:`ChunkSource` of concatenated rows from two row-paired sources (matrices,
    ``ShardedArray``s or equal-length shard sequences); with ``x_post`` None, ``x_pre`` is
    already paired (a list of :class:`PairedRows`, or a ``(tokens, 2 d_in)`` matrix)."""
    if x_post is None:
        return ChunkSource(x_pre, 2 * d_in)
    if isinstance(x_pre, Tensor | np.ndarray) and isinstance(x_post, Tensor | np.ndarray):
        a = x_pre if isinstance(x_pre, Tensor) else torch.from_numpy(np.asarray(x_pre))
        b = x_post if isinstance(x_post, Tensor) else torch.from_numpy(np.asarray(x_post))
        if a.shape != b.shape:
            raise ValueError(
                f"x_pre and x_post must be row-paired (one shape), got {tuple(a.shape)} and "
                f"{tuple(b.shape)}."
            )
        return ChunkSource(torch.cat([a.float(), b.float()], 1), 2 * d_in)
    parts_pre = list(x_pre.parts()) if callable(getattr(x_pre, "parts", None)) else list(x_pre)
    parts_post = list(x_post.parts()) if callable(getattr(x_post, "parts", None)) else list(x_post)
    if len(parts_pre) != len(parts_post):
        raise ValueError(f"{len(parts_pre)} pre-trained shards but {len(parts_post)} fine-tuned.")
    shards = []
    for a, b in zip(parts_pre, parts_post, strict=True):
        if isinstance(a, RowSelection) and isinstance(b, RowSelection):
            if a.rows is None or b.rows is None or not np.array_equal(a.rows, b.rows):
                raise ValueError("Paired row selections must select the same rows.")
            shards.append(PairedRows(a.array, b.array, a.rows))
        else:
            shards.append(PairedRows(a, b))
    return ChunkSource(shards, 2 * d_in)


def _shuffled_batches(
    source: ChunkSource, batch_size: int, generator: torch.Generator, device
) -> Iterator[Tensor]:
    carry: Tensor | None = None
    for chunk in source.chunks(generator):
        chunk = chunk.to(device=device, dtype=torch.float32)
        chunk = chunk[torch.randperm(chunk.shape[0], generator=generator).to(device)]
        if carry is not None:
            chunk, carry = torch.cat([carry, chunk]), None
        full = (chunk.shape[0] // batch_size) * batch_size
        if full:
            yield from chunk[:full].split(batch_size)
        if full < chunk.shape[0]:
            carry = chunk[full:]
    if carry is not None and carry.shape[0]:
        yield carry


def train_crosscoder(
    config: CrosscoderConfig,
    x_pre: Any,
    x_post: Any = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[Crosscoder, CrosscoderHistory]:
    """Train a crosscoder on row-paired activations (row ``i`` of ``x_pre`` and of ``x_post``
    are the same token in the two models): matrices, ``ShardedArray``s or equal-length shard
    sequences (or, with ``x_post`` None, already paired rows: :class:`PairedRows` shards or a
    ``(tokens, 2 d_in)`` matrix). Seeded by ``config.seed``; returns ``(crosscoder, history)``;
    the crosscoder takes raw activations."""
    device = torch.device(device) if device is not None else default_device()
    return _train(config, _paired_source(x_pre, x_post, config.d_in), device, progress)


def _train(
    config: CrosscoderConfig, source: ChunkSource, device: torch.device, progress: bool
) -> tuple[Crosscoder, CrosscoderHistory]:
    generator = torch.Generator().manual_seed(config.seed)
    cc = Crosscoder(config)
    cc.reset_parameters(generator)
    d = config.d_in
    sample = source.head(config.stats_tokens, generator).double().cpu()
    mean = sample.mean(0)
    centred = (sample - mean).square()
    scales = torch.ones(2, dtype=torch.float64)
    for m in range(2):
        msd = float(centred[:, m * d : (m + 1) * d].sum(1).mean())
        if msd <= 0:
            raise ValueError(f"The {MODELS[m]} activations have zero variance.")
        if config.scale_inputs:
            scales[m] = math.sqrt(d / msd)
    column_scale = torch.repeat_interleave(scales, d).float()
    with torch.no_grad():
        cc.b_dec.copy_(mean.float() * column_scale)
        if config.init_density is not None and config.sparsity == "l1":
            x = sample[:4096].float() * column_scale
            xc = x - cc.b_dec if config.subtract_decoder_bias else x
            pre = (xc @ cc.W_enc).numpy()
            kth = min(int((1 - config.init_density) * len(pre)), len(pre) - 1)
            cc.b_enc.copy_(-torch.from_numpy(np.partition(pre, kth, axis=0)[kth]))
    cc.to(device)
    column_scale = column_scale.to(device)
    if source.matrix is not None:
        source.matrix = source.matrix.to(device=device, dtype=torch.float32) * column_scale
        per_batch = None
    else:
        per_batch = column_scale
    optimiser = torch.optim.Adam(
        cc.parameters(),
        lr=config.lr,
        betas=config.adam_betas,
        **({"fused": True} if device.type in ("cpu", "cuda") else {}),
    )
    history = CrosscoderHistory(input_scales=scales.tolist())
    n_tokens = source.n_tokens
    total = math.ceil(n_tokens / config.batch_size) * config.epochs if n_tokens else None
    bar = tqdm(total=total, desc=cc.extra_repr(), unit="step", disable=not progress)
    cuts: list[Tensor] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        records: list[Tensor] = []
        sizes: list[int] = []
        densities: list[float] = []
        for x in _shuffled_batches(source, config.batch_size, generator, device):
            if per_batch is not None:
                x = x.mul_(per_batch)
            mse, l1_term, cut, density = _grad_step(cc, x)
            optimiser.step()
            records.append(torch.stack([mse, l1_term]))
            if config.sparsity == "batchtopk" and epoch == config.epochs - 1:
                cuts.append(cut)
            densities.append(density * config.d_sae)
            sizes.append(x.shape[0])
            bar.update()
        if not records:
            raise ValueError("The activation source yielded no tokens in an epoch.")
        step = torch.stack(records).double().cpu()
        if not bool(torch.isfinite(step).all()):
            raise FloatingPointError(
                f"Crosscoder training diverged in epoch {epoch} (non-finite loss) with "
                f"lr={config.lr}; lower the learning rate or enable scale_inputs."
            )
        weights = torch.tensor(sizes, dtype=torch.float64)
        l1 = config.l1_coefficient if config.sparsity == "l1" else 0.0
        loss = step[:, 0] + l1 * step[:, 1]
        history.step_mse += step[:, 0].tolist()
        history.step_l1 += step[:, 1].tolist()
        history.step_l0 += densities
        history.step_loss += loss.tolist()
        history.epoch_loss.append(float((loss * weights).sum() / weights.sum()))
        history.tokens_seen += int(weights.sum())
    history.seconds = time.perf_counter() - start
    bar.close()
    with torch.no_grad():
        if cuts:  # BatchTopK: the inference threshold, in training units (norms included)
            cc.threshold.fill_(float(torch.stack(cuts).double().mean()))
        cc.fold_input_scales(scales.float())  # decoder_norms() stays in training units
    cc.zero_grad(set_to_none=True)
    cc.requires_grad_(False)
    cc.eval()
    log.info(
        "trained %s: %d tokens in %.1f s (%.0f tokens/s)",
        cc.extra_repr(),
        history.tokens_seen,
        history.seconds,
        history.tokens_per_second,
    )
    return cc, history


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrosscoderMetrics:
    """Quality of a crosscoder on held-out token pairs (raw units)."""

    n_tokens: int
    #: fraction of variance unexplained of each model's activations
    fvu_pre: float
    fvu_post: float
    mean_l0: float
    dead: int
    dense: int
    d_sae: int
    dense_threshold: float = 0.1

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _pairs(x_pre: Any, x_post: Any, d_in: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Row-paired batches ``(x_pre, x_post)`` of any paired source."""
    for chunk in _paired_source(x_pre, x_post, d_in).chunks(None):
        for x in chunk.split(8192):
            yield x[:, :d_in], x[:, d_in:]


@torch.no_grad()
def evaluate_crosscoder(
    cc: Crosscoder, x_pre: Any, x_post: Any = None, *, dense_threshold: float = 0.1
) -> CrosscoderMetrics:
    """FVU of each model, mean L0, dead and dense latents on row-paired activations (given as
    for :func:`train_crosscoder`)."""
    n = 0
    sums = torch.zeros(2, cc.d_in, dtype=torch.float64)
    squares = torch.zeros(2, dtype=torch.float64)
    errors = torch.zeros(2, dtype=torch.float64)
    l0 = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(cc.d_sae, dtype=torch.float64)
    for a, b in _pairs(x_pre, x_post, cc.d_in):
        hat_a, hat_b, f = cc(a, b)
        for m, (x, x_hat) in enumerate(((a, hat_a), (b, hat_b))):
            xd = x.double()
            sums[m] += xd.sum(0)
            squares[m] += xd.square().sum()
            errors[m] += (x_hat.double() - xd).square().sum()
        active = f != 0
        l0 += active.sum()
        fires += active.sum(0).double()
        n += a.shape[0]
    if n == 0:
        raise ValueError("No evaluation tokens.")
    variance = squares - sums.square().sum(1) / n
    frequency = fires / n
    return CrosscoderMetrics(
        n_tokens=n,
        fvu_pre=float(errors[0] / variance[0]),
        fvu_post=float(errors[1] / variance[1]),
        mean_l0=float(l0 / n),
        dead=int((frequency == 0).sum()),
        dense=int((frequency > dense_threshold).sum()),
        d_sae=cc.d_sae,
        dense_threshold=dense_threshold,
    )


def relative_norm_band(r: float) -> str:
    """The :data:`RELATIVE_NORM_BANDS` name of a relative decoder norm (``"none"`` for NaN)."""
    if not math.isfinite(r):
        return "none"
    for name, (low, high) in RELATIVE_NORM_BANDS.items():
        if low <= r < high:
            return name
    return "post-only"  # r == 1


@dataclass(frozen=True)
class LatentScaling:
    """Minder et al.'s latent scaling of chosen latents (training units).

    ``beta[m]`` fits ``beta * f_j * v_j`` to model ``m``'s target: ``error`` = its activation
    minus its reconstruction without latent ``j`` (the error plus the latent's own contribution
    in that model); ``reconstruction`` = its reconstruction by all latents. (Minder et al.
    include the decoder bias in the reconstruction; we leave it out, since its constant offset
    projects onto ``v_j`` and would make ``nu_r`` depend on where the bias sits.) ``v_j`` is the latent's decoder direction in its own model (the one
    the latent is specific to)."""

    latents: Int[Tensor, " n"]
    #: the model each latent is specific to: 0 pre-trained, 1 fine-tuned
    own: Int[Tensor, " n"]
    beta_error: Float[Tensor, "n 2"]
    beta_reconstruction: Float[Tensor, "n 2"]
    #: tokens on which each latent fired
    active_tokens: Int[Tensor, " n"]

    @property
    def nu_error(self) -> Float[Tensor, " n"]:
        """``beta_other / beta_own`` for the error target (complete shrinkage check)."""
        return _ratio(self.beta_error, self.own)

    @property
    def nu_reconstruction(self) -> Float[Tensor, " n"]:
        """``beta_other / beta_own`` for the reconstruction target (latent decoupling check)."""
        return _ratio(self.beta_reconstruction, self.own)


def _ratio(beta: Tensor, own: Tensor) -> Tensor:
    rows = torch.arange(len(own))
    mine, other = beta[rows, own], beta[rows, 1 - own]
    return torch.where(mine != 0, other / torch.where(mine != 0, mine, 1.0), math.nan)


@torch.no_grad()
def latent_scaling(
    cc: Crosscoder,
    x_pre: Any,
    x_post: Any,
    latents: Sequence[int] | Tensor,
    own: Sequence[int] | Tensor | int,
) -> LatentScaling:
    """Latent scaling (Minder et al. 2025) of ``latents``, each specific to model ``own``
    (0 pre-trained, 1 fine-tuned), over row-paired activations (``x_post`` None: ``x_pre`` is
    already paired); closed form, one pass.

    For latent ``j`` with direction ``v = d_j^own`` and activations ``f`` over tokens, in each
    model ``m``: ``beta = sum_t f_t <v, y_t> / (||v||^2 sum_t f_t^2)`` with ``y_t`` the target
    (see :class:`LatentScaling`). Because the latent's own contribution is ``f_t d_j^m``, the
    error target needs no per-latent pass: ``<v, y_t> = <v, e_t> + f_t <v, d_j^m>`` with
    ``e = x - x_hat``; the reconstruction target is ``x_hat_t - b_dec``. For a latent specific to
    its model, ``beta_own`` is about 1 for both targets and ``beta_other`` about 0.
    """
    index = torch.as_tensor(np.array(latents), dtype=torch.long).flatten()
    own_t = torch.as_tensor(np.array(own), dtype=torch.long).flatten()
    if own_t.numel() == 1 and index.numel() != 1:
        own_t = own_t.expand(index.numel()).clone()
    if own_t.shape != index.shape or bool(((own_t < 0) | (own_t > 1)).any()):
        raise ValueError("own must give 0 (pre-trained) or 1 (fine-tuned) for every latent.")
    d = cc.d_in
    scales = torch.repeat_interleave(cc.input_scales.double(), d)
    w = cc.W_dec.detach().double() * scales  # decoders in training units
    blocks = [w[:, :d], w[:, d:]]
    v = torch.stack([blocks[int(o)][int(j)] for j, o in zip(index, own_t, strict=True)])
    v = v.reshape(len(index), d)
    v_sq = v.square().sum(1)
    self_dot = torch.stack([(v * blocks[m][index]).sum(1) for m in range(2)], 1)  # (n, 2)
    f_sq = torch.zeros(len(index), dtype=torch.float64)
    count = torch.zeros(len(index), dtype=torch.long)
    error_dot = torch.zeros(len(index), 2, dtype=torch.float64)
    recon_dot = torch.zeros(len(index), 2, dtype=torch.float64)
    for a, b in _pairs(x_pre, x_post, d):
        hat_a, hat_b, f = cc(a, b)
        fj = f[:, index].double()
        f_sq += fj.square().sum(0)
        count += (fj != 0).sum(0)
        for m, (x, x_hat) in enumerate(((a, hat_a), (b, hat_b))):
            s = cc.input_scales[m].double()
            e = (x.double() - x_hat.double()) * s
            r = (x_hat.double() - cc.b_dec[m * d : (m + 1) * d].double()) * s
            error_dot[:, m] += ((fj.T @ e) * v).sum(1)
            recon_dot[:, m] += ((fj.T @ r) * v).sum(1)
    denominator = (v_sq * f_sq)[:, None]
    safe = torch.where(denominator > 0, denominator, 1.0)
    beta_error = torch.where(denominator > 0, (error_dot + self_dot * f_sq[:, None]) / safe, 0.0)
    beta_recon = torch.where(denominator > 0, recon_dot / safe, 0.0)
    return LatentScaling(index, own_t, beta_error, beta_recon, count)


@torch.no_grad()
def latent_table(
    cc: Crosscoder,
    x_pre: Any,
    x_post: Any = None,
    *,
    shared_nu: float = SHARED_NU,
) -> pd.DataFrame:
    """One row per latent: ``norm_pre``, ``norm_post`` (training units), ``relative_norm``,
    ``band`` (:data:`RELATIVE_NORM_BANDS`; ``"dead"`` for a latent that never fires on these
    tokens), ``decoder_cosine``, ``firing_frequency``; for pre-only and post-only latents the
    latent-scaling ratios ``nu_error`` and ``nu_reconstruction`` (NaN for the others) and
    ``really_shared`` (either ratio >= ``shared_nu``)."""
    fires = torch.zeros(cc.d_sae, dtype=torch.float64)
    n = 0
    for a, b in _pairs(x_pre, x_post, cc.d_in):
        fires += (cc.encode(a, b) != 0).sum(0).double()
        n += a.shape[0]
    if n == 0:
        raise ValueError("No tokens to describe the latents on.")
    norms = cc.decoder_norms().double()
    relative = cc.relative_norms()
    frequency = fires / n
    bands = [
        relative_norm_band(float(r)) if f > 0 else "dead"
        for r, f in zip(relative, frequency, strict=True)
    ]
    table = pd.DataFrame(
        {
            "latent": np.arange(cc.d_sae),
            "norm_pre": norms[:, 0].numpy(),
            "norm_post": norms[:, 1].numpy(),
            "relative_norm": relative.numpy(),
            "band": bands,
            "decoder_cosine": cc.decoder_cosines().numpy(),
            "firing_frequency": frequency.numpy(),
            "nu_error": np.nan,
            "nu_reconstruction": np.nan,
            "really_shared": False,
        }
    )
    specific = table.index[table["band"].isin(["pre-only", "post-only"])].to_numpy()
    if len(specific):
        own = (table.loc[specific, "band"] == "post-only").astype(int).to_numpy()
        scaling = latent_scaling(cc, x_pre, x_post, specific, own)
        table.loc[specific, "nu_error"] = scaling.nu_error.numpy()
        table.loc[specific, "nu_reconstruction"] = scaling.nu_reconstruction.numpy()
        shared = (table.loc[specific, "nu_error"] >= shared_nu) | (
            table.loc[specific, "nu_reconstruction"] >= shared_nu
        )
        table.loc[specific, "really_shared"] = shared.to_numpy()
    table.attrs["shared_nu"] = shared_nu
    table.attrs["n_tokens"] = n
    return table


def band_counts(table: pd.DataFrame) -> dict[str, int | float]:
    """Counts per band of a :func:`latent_table`, the post-only and pre-only latents that latent
    scaling finds really shared, and ``share_kept``: of the latents the fine-tuned model uses
    (alive, ``r >= 0.1``), the share that the pre-trained model uses too (``r <= 0.9``) -- the
    crosscoder's counterpart of "fine-tuned features with a pre-trained twin"."""
    counts: dict[str, int | float] = {
        band: int((table["band"] == band).sum()) for band in (*RELATIVE_NORM_BANDS, "dead")
    }
    alive = table[table["band"] != "dead"]
    counts["alive"] = len(alive)
    for band in ("post-only", "pre-only"):
        rows = table[table["band"] == band]
        counts[f"{band} really shared"] = int(rows["really_shared"].sum())
    used_by_post = alive[alive["relative_norm"] >= RELATIVE_NORM_BANDS["pre-only"][1]]
    kept = used_by_post["relative_norm"] < RELATIVE_NORM_BANDS["post-only"][0]
    counts["share_kept"] = float(kept.mean()) if len(used_by_post) else math.nan
    counts["share_kept_after_scaling"] = (
        float((kept | used_by_post["really_shared"]).mean()) if len(used_by_post) else math.nan
    )
    return counts


# --- saving and caching --------------------------------------------------------------------


def save_crosscoder(cc: Crosscoder, folder: str | Path) -> Path:
    """Write ``repgeo_crosscoder.safetensors`` and ``config.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in cc.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "config": cc.config.to_dict()}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def load_crosscoder(folder: str | Path, device: str | torch.device = "cpu") -> Crosscoder:
    """Read a crosscoder written by :func:`save_crosscoder`."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"No crosscoder in {folder} (needs {WEIGHTS_FILE}, {CONFIG_FILE}).")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE} is format {meta.get('format')!r}, not {FORMAT}")
    cc = Crosscoder(CrosscoderConfig.from_dict(meta["config"]))
    cc.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    cc.requires_grad_(False)
    cc.eval()
    return cc.to(device)


@dataclass
class TrainedCrosscoder:
    """A crosscoder trained on one layer of two row-paired activation sets, with its record."""

    crosscoder: Crosscoder
    history: CrosscoderHistory
    #: metrics on the tokens of the held-out texts
    metrics: CrosscoderMetrics
    path: Path
    layer: int
    eval_texts: Bool[np.ndarray, " texts"]


def check_row_paired(pre: ActivationSet, post: ActivationSet) -> None:
    """Raise unless two activation sets hold the same texts, token for token (same offsets and
    token ids), as a crosscoder needs."""
    if pre.key.get("texts") != post.key.get("texts") or pre.n_texts != post.n_texts:
        raise ValueError("The two activation sets were made from different texts.")
    if not np.array_equal(pre.offsets, post.offsets) or not np.array_equal(
        pre.token_ids, post.token_ids
    ):
        raise ValueError(
            "The two activation sets are not row-paired: their texts were tokenised into "
            "different tokens (a crosscoder needs the same tokens in both models)."
        )
    if pre.d_model != post.d_model:
        raise ValueError(f"The models differ in width: {pre.d_model} vs {post.d_model}.")


def crosscoder_cache_key(
    pre: ActivationSet,
    post: ActivationSet,
    layer: int,
    config: CrosscoderConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    exclude_special: bool = False,
) -> dict[str, Any]:
    """The cache key of :func:`train_crosscoder_on_activations`: both activation entries' keys,
    the layer, every config field and the split."""
    return {
        "format": FORMAT,
        "activations_pre": pre.key,
        "activations_post": post.key,
        "layer": int(layer) % pre.n_hidden_states,
        "config": config.to_dict(),
        "eval_fraction": eval_fraction,
        "split_seed": split_seed,
        "exclude_special": exclude_special,
    }


def _paired_rows(pre: Any, post: Any, mask: np.ndarray) -> list[PairedRows]:
    out, start = [], 0
    for a, b in zip(pre.parts(), post.parts(), strict=True):
        rows = np.flatnonzero(mask[start : start + len(a)])
        start += len(a)
        if len(rows):
            out.append(PairedRows(a, b, rows))
    return out


def crosscoder_divergence(cc: Crosscoder, metrics: CrosscoderMetrics) -> str | None:
    """Why a trained crosscoder must not be kept (non-finite weights or metrics, or a held-out
    FVU above ``DIVERGED_FVU``), or None."""
    for name, parameter in cc.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            return f"non-finite values in {name}"
    for name in ("fvu_pre", "fvu_post", "mean_l0"):
        value = getattr(metrics, name)
        if not math.isfinite(value):
            return f"held-out {name} is {value}"
        if name != "mean_l0" and value > DIVERGED_FVU:
            return f"held-out {name} {value:.3g} > {DIVERGED_FVU:g}"
    return None


def held_out_pairs(
    pre: ActivationSet,
    post: ActivationSet,
    layer: int,
    eval_texts: Bool[np.ndarray, " texts"],
    *,
    exclude_special: bool = False,
    held_out: bool = True,
) -> list[PairedRows]:
    """The row-paired tokens of the held-out texts (``held_out=False``: of the others), shard by
    shard, for :func:`evaluate_crosscoder`, :func:`latent_table` and friends."""
    token_mask = np.repeat(eval_texts if held_out else ~eval_texts, pre.lengths)
    if exclude_special:
        token_mask &= ~pre.special_mask
    return _paired_rows(pre.tokens(layer), post.tokens(layer), token_mask)


def train_crosscoder_on_activations(
    pre: ActivationSet,
    post: ActivationSet,
    layer: int,
    config: CrosscoderConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    exclude_special: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    root: Path | None = None,
) -> TrainedCrosscoder:
    """Train (or load from the cache) a crosscoder on one layer of two row-paired cached
    activation sets (the pre-trained and the fine-tuned model on the same texts).

    The texts are split as the SAEs split them (:func:`~repgeo_utils.sae.split_texts`, same
    ``eval_fraction`` and ``split_seed`` -> the same held-out texts); training streams the
    training texts' token pairs shard by shard; metrics are on the held-out texts' tokens. A
    cache entry of kind ``crosscoder`` keyed by :func:`crosscoder_cache_key`; a run that
    diverges (non-finite weights or loss, held-out FVU > ``DIVERGED_FVU``) raises and caches
    nothing.
    """
    check_row_paired(pre, post)
    stored = int(layer) % pre.n_hidden_states
    pre.tokens(stored), post.tokens(stored)  # validates the layer in both
    if pre.d_model != config.d_in:
        raise ValueError(
            f"The activations have d_model={pre.d_model} but the crosscoder config says "
            f"d_in={config.d_in}."
        )
    eval_texts = split_texts(pre.n_texts, eval_fraction, split_seed)
    key = crosscoder_cache_key(
        pre, post, stored, config, eval_fraction=eval_fraction, split_seed=split_seed,
        exclude_special=exclude_special,
    )  # fmt: skip
    name = f"{pre.path.name}__{post.path.name}__L{stored}__{config.sparsity}"
    evaluation = held_out_pairs(pre, post, stored, eval_texts, exclude_special=exclude_special)
    with cache_entry("crosscoder", name, key, root=root) as entry:
        if not entry.exists:
            training = held_out_pairs(
                pre, post, stored, eval_texts, exclude_special=exclude_special, held_out=False
            )
            resolved = torch.device(device) if device is not None else default_device()
            cc, history = _train(config, ChunkSource(training, 2 * config.d_in), resolved,
                                 progress)  # fmt: skip
            cc = cc.cpu()
            metrics = evaluate_crosscoder(cc, evaluation)
            problem = crosscoder_divergence(cc, metrics)
            if problem is not None:
                raise FloatingPointError(
                    f"Crosscoder {name} diverged ({problem}) with lr={config.lr}; nothing was "
                    "cached. Lower the learning rate or enable scale_inputs."
                )
            save_crosscoder(cc, entry.build_dir)
            (entry.build_dir / "history.json").write_text(json.dumps(asdict(history)))
            (entry.build_dir / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=2))
    folder = entry.path
    return TrainedCrosscoder(
        crosscoder=load_crosscoder(folder, device="cpu" if device is None else device),
        history=CrosscoderHistory(**json.loads((folder / "history.json").read_text())),
        metrics=CrosscoderMetrics(**json.loads((folder / "metrics.json").read_text())),
        path=folder,
        layer=stored,
        eval_texts=eval_texts,
    )
