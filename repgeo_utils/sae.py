# ruff: noqa: F722  (jaxtyping shape strings are not forward references)
"""Sparse autoencoders (SAEs) on layer activations: training, metrics, features, save/load.

Two architectures share one module, :class:`SparseAutoencoder`, with the weight names other SAE
tools use (``W_enc`` d_in x d_sae, ``b_enc``, ``W_dec`` d_sae x d_in, ``b_dec``):

- ``"relu"``: the paper's SAE (Nadipalli 2025, section 3.2.3). Latents ``h = ReLU((x - b_dec)
  W_enc + b_enc)``, reconstruction ``h W_dec + b_dec``, loss ``MSE + lambda * sum_i h_i``
  (the L1 of the non-negative latents, summed over latents and averaged over tokens).
- ``"topk"``: only the ``k`` largest pre-activations of a token survive (then a ReLU), so a token
  has at most ``k`` (in practice exactly ``k``) active latents; the loss is the MSE alone.

Options the field uses: unit-norm decoder rows (``normalize_decoder``), subtracting the decoder
bias before encoding (``subtract_decoder_bias``), and scaling the inputs by one constant
(``scale_inputs``) so that their mean squared distance from their mean is ``d_in``; the training
MSE then reads directly as a fraction of variance unexplained. The scale is folded into the
weights when training ends, so a trained SAE always takes raw activations.

Training (:func:`train_sae`) takes an in-memory matrix or a re-iterable stream of batches
(memory-mapped activation shards), computes the gradients by hand (five matrix products a step,
no autograd bookkeeping) and uses a fused Adam, so it is bound by matrix-multiply speed. On the
CPU, once few latents are active (TopK, or a well-sparsified ReLU SAE), a step switches to
sparse products for everything but the encoder. :func:`train_sae_on_activations` streams one
layer of a cached :class:`~repgeo_utils.activations.ActivationSet` and caches the trained SAE.

The paper's optimiser setting (Adam, lr 2e-5, 10 epochs; its code used batch 16) is the preset
``SAEConfig.preset("paper", ...)``. At batch 16 it takes 16 times as many steps as batch 256
and runs several times slower (MiniLM layer 3, BBC headlines: FVE 0.83 at L0 178); at lr 2e-5
with batch 256 it is far from converged after 10 epochs (FVE 0.66). The defaults (lr 1e-3,
batch 256, centred and scaled inputs) reach FVE 0.90 in the same 10 epochs. See :data:`PRESETS`
for the measured trade-offs.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .activations import ActivationSet

log = logging.getLogger(__name__)

Architecture = Literal["relu", "topk"]
TrainOn = Literal["tokens", "sequence_means"]

#: File names inside a saved SAE folder.
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "repgeo-sae/1"

#: What an activation source may be: a matrix, a sequence of shards (or an
#: ``activations.ShardedArray``), a re-iterable of batches, or a function returning a fresh
#: iterator of batches.
ActivationSource = (
    Tensor | np.ndarray | Sequence[Tensor | np.ndarray] | Iterable | Callable[[], Iterator]
)


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEConfig:
    """Architecture and training settings of one SAE (all of it goes into cache keys).

    ``l1_coefficient`` only acts on the ``"relu"`` architecture; ``k`` only on ``"topk"``.
    ``train_on="sequence_means"`` trains on the mean activation of each sequence (what the
    paper's code did) instead of on single tokens; :func:`train_sae` then needs offsets.
    """

    d_in: int
    d_sae: int
    architecture: Architecture = "relu"
    k: int | None = None
    l1_coefficient: float = 1e-3
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 256
    seed: int = 0
    normalize_decoder: bool = True
    subtract_decoder_bias: bool = True
    scale_inputs: bool = True
    train_on: TrainOn = "tokens"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    #: tokens used to estimate the input mean and scale before training starts
    stats_tokens: int = 65_536
    #: ReLU only: start each latent active on this share of tokens (b_enc from the sample's
    #: quantiles); None starts b_enc at zero, where half the latents fire and the L1 penalty
    #: needs thousands of steps to sparsify them. TopK ignores it (it keeps k latents anyway).
    init_density: float | None = 0.1

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_in", "d_sae", "epochs", "batch_size", "stats_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if self.architecture not in ("relu", "topk"):
            problems.append(f"architecture must be 'relu' or 'topk', got {self.architecture!r}")
        if self.architecture == "topk":
            if self.k is None:
                problems.append("architecture 'topk' needs k (active latents per token)")
            elif not isinstance(self.k, int) or self.k < 1:
                problems.append(f"k must be a positive int, got {self.k!r}")
            elif isinstance(self.d_sae, int) and self.k > self.d_sae:
                problems.append(f"k={self.k} is larger than d_sae={self.d_sae}")
        elif self.k is not None:
            problems.append(f"k={self.k} only applies to architecture 'topk', not 'relu'")
        if not (isinstance(self.l1_coefficient, int | float) and self.l1_coefficient >= 0):
            problems.append(f"l1_coefficient must be >= 0, got {self.l1_coefficient!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be a non-negative int, got {self.seed!r}")
        if self.init_density is not None and not (
            isinstance(self.init_density, int | float) and 0 < self.init_density < 1
        ):
            problems.append(f"init_density must be in (0, 1) or None, got {self.init_density!r}")
        if self.train_on not in ("tokens", "sequence_means"):
            problems.append(f"train_on must be 'tokens' or 'sequence_means', got {self.train_on!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            problems.append(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if problems:
            raise ValueError("Invalid SAEConfig: " + "; ".join(problems) + ".")

    @classmethod
    def preset(cls, name: str, d_in: int, d_sae: int, **overrides: Any) -> SAEConfig:
        """A named setting (see :data:`PRESETS`) for ``d_in -> d_sae``, with ``overrides``."""
        try:
            settings = PRESETS[name]
        except KeyError:
            raise ValueError(
                f"Unknown SAE preset {name!r}. Known presets: {', '.join(sorted(PRESETS))}."
            ) from None
        return cls(d_in=d_in, d_sae=d_sae, **{**settings, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown SAEConfig fields: {', '.join(sorted(unknown))}.")
        data = dict(data)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)


#: Named settings.
#:
#: - ``default``: the paper's SAE (ReLU, L1 1e-3) trained so that it converges on token
#:   activations: lr 1e-3, batch 256, 10 epochs, centred and scaled inputs, unit-norm decoder,
#:   encoder bias started at 10% density. On MiniLM tokens: FVE ~0.9, but ~200 of 1024 latents
#:   active a token (L1 1e-3 is weak at this scale).
#: - ``l1-sparse``: the same with L1 1e-2: ~12-20 active latents a token, FVE ~0.71.
#: - ``topk-32``: TopK with k = 32: FVE ~0.82 at 32 active latents.
#: - ``paper``: Nadipalli (2025) section 3.2.3 as written and as its code ran it: ReLU + L1 1e-3,
#:   Adam lr 2e-5 for 10 epochs, batch 16, raw inputs, free decoder norms, zero encoder bias.
#:
#: Every setting starts the decoder bias at the data mean and the encoder at the transpose of
#: random unit decoder rows.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "l1-sparse": dict(l1_coefficient=1e-2),
    "topk-32": dict(architecture="topk", k=32),
    "paper": dict(
        architecture="relu",
        l1_coefficient=1e-3,
        lr=2e-5,
        epochs=10,
        batch_size=16,
        normalize_decoder=False,
        subtract_decoder_bias=False,
        scale_inputs=False,
        init_density=None,
    ),
}


# --- the model -----------------------------------------------------------------------------


class SparseAutoencoder(nn.Module):
    """One SAE: ``encode`` gives latents, ``decode`` reconstructions, ``forward`` both.

    SAEs returned by :func:`train_sae` and :func:`load_sae` have ``requires_grad`` off, so
    their outputs are plain tensors (call ``requires_grad_(True)`` to differentiate them).

    ``input_scale`` records the constant the inputs were multiplied by during training; it is
    already folded into the weights of a trained SAE (so it takes raw activations).
    """

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        self.W_enc = nn.Parameter(torch.empty(config.d_in, config.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.W_dec = nn.Parameter(torch.empty(config.d_sae, config.d_in))
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))
        self.input_scale = 1.0
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows: random unit directions; encoder: their transpose; biases zero.

        (:func:`train_sae` then sets ``b_dec`` to the data mean and, with
        ``config.init_density``, ``b_enc`` from the data.)"""
        w = torch.randn(self.config.d_sae, self.config.d_in, generator=generator)
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

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.config.d_in:
            raise ValueError(
                f"This SAE takes activations with d_in={self.config.d_in} features, got a tensor "
                f"of shape {tuple(x.shape)}."
            )

    def pre_activations(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Encoder pre-activations ``(x - b_dec) W_enc + b_enc`` (bias subtracted if set)."""
        if not isinstance(x, Tensor):  # NumPy arrays and memory maps
            x = torch.as_tensor(np.asarray(x))
        self._check_input(x)
        x = x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        if self.config.subtract_decoder_bias:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Non-negative latents of ``x``."""
        return _activation(self.pre_activations(x), self.config)

    def decode(self, h: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction ``h W_dec + b_dec``."""
        return h @ self.W_dec + self.b_dec

    def forward(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_in"], Float[Tensor, "*batch d_sae"]]:
        """``(reconstruction, latents)``."""
        h = self.encode(x)
        return self.decode(h), h

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``x * scale`` take raw ``x`` (same latents, raw-unit output)."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)
        self.input_scale = float(scale) * self.input_scale

    def extra_repr(self) -> str:
        c = self.config
        extra = f", k={c.k}" if c.architecture == "topk" else f", l1={c.l1_coefficient:g}"
        return f"{c.architecture}: {c.d_in} -> {c.d_sae}{extra}"


def _activation(pre: Tensor, config: SAEConfig) -> Tensor:
    if config.architecture == "relu":
        return torch.relu(pre)
    values, index = _topk(pre, config.k)
    return torch.zeros_like(pre).scatter_(-1, index, torch.relu(values))


def _topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row (in no particular order) and their indices.

    On the CPU a NumPy introselect (``argpartition``) is about 3x faster than ``torch.topk``
    here; the values are gathered from ``pre`` so autograd still flows through them.
    """
    if pre.device.type != "cpu" or pre.dtype not in (torch.float32, torch.float64):
        return pre.topk(k, dim=-1, sorted=False)
    flat = pre.detach().reshape(-1, pre.shape[-1]).numpy()
    index = np.argpartition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    index = torch.from_numpy(index).reshape(*pre.shape[:-1], k)
    return torch.gather(pre, -1, index), index


# --- activation sources --------------------------------------------------------------------


class RowSelection:
    """Chosen rows of an array-like (e.g. one memory-mapped shard), read only when used.

    A list of these is a shard sequence :func:`train_sae` can stream: its length is known
    without touching the disk, and each shard's rows are loaded one shard at a time.
    """

    def __init__(self, array: Any, rows: Int[np.ndarray, " rows"] | None = None) -> None:
        self.array = array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array) if self.rows is None else len(self.rows)

    def load(self) -> np.ndarray:
        """The selected rows as one in-memory array."""
        if self.rows is None:
            return np.asarray(self.array)
        return np.asarray(self.array[self.rows])


def _as_tensor(chunk: Any, d_in: int, where: str) -> Tensor:
    """A 2-D floating-point tensor from one chunk, checked for shape and NaN."""
    if isinstance(chunk, RowSelection):
        chunk = chunk.load()
    if isinstance(chunk, np.ndarray):
        chunk = np.ascontiguousarray(chunk)
        with warnings.catch_warnings():  # read-only memory maps: we never write into them
            warnings.simplefilter("ignore", UserWarning)
            chunk = torch.from_numpy(chunk)
    if not isinstance(chunk, Tensor):
        raise TypeError(f"Activations must be tensors or arrays; {where} is {type(chunk).__name__}")
    if chunk.ndim != 2:
        raise ValueError(
            f"Activations must be a (tokens x d_in) matrix; {where} has shape {tuple(chunk.shape)}"
        )
    if chunk.shape[1] != d_in:
        raise ValueError(
            f"Activations have {chunk.shape[1]} features ({where}, shape {tuple(chunk.shape)}) "
            f"but the SAE config says d_in={d_in}."
        )
    if not chunk.is_floating_point():
        raise TypeError(f"Activations must be floating point; {where} has dtype {chunk.dtype}")
    finite = torch.isfinite(chunk)
    if not bool(finite.all()):
        bad = (~finite).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"Activations contain NaN or infinite values: {len(bad)} rows in {where} "
            f"(first rows {bad[:5].tolist()}). Check the activation extraction (e.g. a float16 "
            "overflow) before training an SAE."
        )
    return chunk


class _Source:
    """Uniform view of an activation source: ``chunks()`` yields 2-D float tensors."""

    def __init__(self, data: ActivationSource, d_in: int) -> None:
        self.d_in = d_in
        self.matrix: Tensor | None = None
        self.shards: Sequence | None = None
        self.factory: Callable[[], Iterator] | None = None
        self.iterator: Iterator | None = None
        self.used = False
        self.replay: list[Tensor] = []  # chunks of a one-shot iterator read ahead by head()
        if isinstance(data, Tensor | np.ndarray):
            self.matrix = _as_tensor(data, d_in, "the activation matrix")
        elif callable(getattr(data, "parts", None)):  # activations.ShardedArray: its shards
            self.shards = list(data.parts())
        elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
            if len(data) == 0:
                raise ValueError("The activation source is an empty sequence of shards.")
            self.shards = data
        elif callable(data):
            self.factory = data
        elif isinstance(data, Iterator):
            self.iterator = data
        elif isinstance(data, Iterable):
            self.factory = lambda: iter(data)
        else:
            raise TypeError(
                "Activations must be a tensor/array, a sequence of shards, an iterable of "
                f"batches, or a function returning an iterator; got {type(data).__name__}."
            )

    @property
    def n_tokens(self) -> int | None:
        if self.matrix is not None:
            return self.matrix.shape[0]
        if self.shards is not None:
            return sum(len(s) for s in self.shards)
        return None

    def head(self, max_tokens: int, generator: torch.Generator | None = None) -> Tensor:
        """Up to ``max_tokens`` rows to estimate statistics on: a random subset of a matrix,
        else the first rows of the stream (kept for replay when the stream is one-shot)."""
        if self.matrix is not None:
            n = self.matrix.shape[0]
            if n <= max_tokens:
                return self.matrix
            rows = torch.randperm(n, generator=generator)[:max_tokens].sort().values
            return self.matrix[rows]
        parts, total = [], 0
        if self.iterator is not None:
            while total < max_tokens:
                try:
                    chunk = _as_tensor(next(self.iterator), self.d_in, "a batch")
                except StopIteration:
                    break
                self.replay.append(chunk)
                parts.append(chunk[: max_tokens - total])
                total += parts[-1].shape[0]
        else:
            for chunk in self.chunks(None):
                parts.append(chunk[: max_tokens - total])
                total += parts[-1].shape[0]
                if total >= max_tokens:
                    break
        if total == 0:
            raise ValueError("The activation source yielded no tokens.")
        return torch.cat(parts)

    def chunks(self, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """One pass; shard order is shuffled when ``generator`` is given."""
        if self.matrix is not None:
            yield self.matrix
            return
        if self.shards is not None:
            order = (
                torch.randperm(len(self.shards), generator=generator).tolist()
                if generator is not None
                else range(len(self.shards))
            )
            for i in order:
                yield _as_tensor(self.shards[i], self.d_in, f"shard {i}")
            return
        if self.iterator is not None:
            if self.used:
                raise ValueError(
                    "The activations were given as a one-shot iterator, which is exhausted after "
                    "one pass. For more than one epoch pass a list of shards, a re-iterable "
                    "object, or a function that returns a fresh iterator."
                )
            self.used = True
            yield from self.replay
            self.replay = []
            batches: Iterator = self.iterator
        else:
            batches = iter(self.factory())
        for i, chunk in enumerate(batches):
            yield _as_tensor(chunk, self.d_in, f"batch {i}")


def _pool_sequences(
    x: Float[Tensor, "tokens d"], offsets: Int[Tensor, " seq_plus_1"]
) -> Float[Tensor, "seq d"]:
    """Mean of each sequence's rows; ``offsets[i]:offsets[i+1]`` are sequence ``i``'s tokens."""
    offsets = torch.as_tensor(offsets, dtype=torch.long)
    lengths = offsets.diff()
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != x.shape[0] or (lengths < 1).any():
        raise ValueError(
            "offsets must be increasing sequence starts from 0 to the token count "
            f"({x.shape[0]}), one more than the number of sequences."
        )
    seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    sums = torch.zeros(len(lengths), x.shape[1], dtype=torch.float64).index_add_(0, seq, x.double())
    return (sums / lengths[:, None]).to(x.dtype)


# --- training ------------------------------------------------------------------------------


@dataclass
class TrainHistory:
    """Losses of a training run (in the scaled units the SAE was trained in)."""

    step_loss: list[float] = field(default_factory=list)
    step_mse: list[float] = field(default_factory=list)
    #: mean over tokens of sum_i h_i (the L1 term before multiplying by the coefficient)
    step_l1: list[float] = field(default_factory=list)
    #: mean active latents a token in each training batch (nan where not counted, on a GPU)
    step_l0: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    epoch_mse: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0
    input_scale: float = 1.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds > 0 else float("nan")


def _batches(
    source: _Source, batch_size: int, generator: torch.Generator, scale: float, device
) -> Iterator[Tensor]:
    """Shuffled, scaled batches of exactly ``batch_size`` rows (the last may be short)."""
    carry: Tensor | None = None
    for chunk in source.chunks(generator):
        chunk = chunk.to(device=device, dtype=torch.float32)
        perm = torch.randperm(chunk.shape[0], generator=generator).to(device)
        chunk = chunk[perm]
        if scale != 1.0:
            chunk.mul_(scale)
        if carry is not None:
            chunk = torch.cat([carry, chunk])
            carry = None
        full = (chunk.shape[0] // batch_size) * batch_size
        if full:
            yield from chunk[:full].split(batch_size)
        if full < chunk.shape[0]:
            carry = chunk[full:]
    if carry is not None and carry.shape[0]:
        yield carry


def _input_stats_of(x: Tensor) -> tuple[Tensor, float]:
    """Mean vector and mean squared distance from it."""
    mean = x.mean(0)
    msd = float(((x - mean) ** 2).sum(1).mean())
    if msd <= 0:
        raise ValueError("The activations have zero variance; there is nothing to encode.")
    return mean.float(), msd


#: Latent density below which a CPU step uses sparse products for everything but the encoder
#: (measured crossover, one CPU thread: about 6% at batch 256, 9% at batch 1024).
SPARSE_DENSITY = 0.05
#: Sample tokens used to set the initial encoder bias (``SAEConfig.init_density``).
INIT_TOKENS = 4096


@torch.no_grad()
def _grad_step(
    sae: SparseAutoencoder, x: Tensor, l1: float, sparse: bool = False, measure: bool = True
) -> tuple[Tensor, Tensor, float]:
    """Set ``.grad`` of every parameter for one batch; return ``(mse, l1 term, density)``.

        Loss = mean over batch and features of (x_hat - x)^2 + l1 * mean over batch of sum_i h_i.
        The encoder sees ``x - b_dec`` with ``b_dec`` held fixed (it learns through the decoder),
        which saves a sixth matrix product a step. ``density`` is the share of non-zero latents
    (negative when ``measure`` is off on the dense route: counting them syncs a GPU).

        Dense route: five matrix products. Sparse route (``sparse=True``, for a few active latents a
        token): only the encoder product is dense; decoding and the two weight gradients are
        sparse-dense products over the active latents, and the gradient at the latents is sampled
        at the active ones only (``torch.sparse.sampled_addmm``). Both give the same gradients.
    """
    c = sae.config
    n, d = x.shape
    xc = x - sae.b_dec if c.subtract_decoder_bias else x
    pre = torch.addmm(sae.b_enc, xc, sae.W_enc)
    if c.architecture == "topk":
        values, index = _topk(pre, c.k)
        values.clamp_(min=0)
    if not sparse:
        if c.architecture == "relu":
            h = pre.clamp_(min=0)
        else:
            h = torch.zeros_like(pre).scatter_(1, index, values)
        err = torch.addmm(sae.b_dec, h, sae.W_dec).sub_(x)
        mse = torch.linalg.vector_norm(err).square() / (n * d)
        l1_term = h.sum() / n
        g_out = err.mul_(2.0 / (n * d))
        sae.W_dec.grad = torch.mm(h.T, g_out)
        sae.b_dec.grad = g_out.sum(0)
        if l1 > 0:  # the L1 gradient l1 / n rides along as the bias of the product
            g_h = torch.addmm(sae.b_enc.new_full((c.d_sae,), l1 / n), g_out, sae.W_dec.T)
        else:
            g_h = torch.mm(g_out, sae.W_dec.T)
        # gradient through ReLU / TopK: zero wherever the latent is zero (one fused pass)
        g_pre = torch.ops.aten.threshold_backward(g_h, h, 0.0)
        sae.W_enc.grad = torch.mm(xc.T, g_pre)
        sae.b_enc.grad = g_pre.sum(0)
        if not measure:
            nnz = -1
        else:  # latents are >= 0, so summing signs counts them (much faster than count_nonzero)
            nnz = int((h if c.architecture == "relu" else values).sign().sum())
    else:
        if c.architecture == "relu":
            active = pre.clamp_(min=0).nonzero()
            rows, cols = active[:, 0], active[:, 1]
            values = pre[rows, cols]
            crow = torch.zeros(n + 1, dtype=torch.long)
            torch.cumsum(torch.bincount(rows, minlength=n), 0, out=crow[1:])
        else:
            values, cols = values.reshape(-1), index.reshape(-1)
            rows = torch.arange(n).repeat_interleave(c.k)
            crow = torch.arange(0, n * c.k + 1, c.k)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            h = torch.sparse_csr_tensor(
                crow, cols, values, size=(n, c.d_sae), check_invariants=False
            )
        err = (h @ sae.W_dec).add_(sae.b_dec).sub_(x)
        mse = torch.linalg.vector_norm(err).square() / (n * d)
        l1_term = values.sum() / n
        g_out = err.mul_(2.0 / (n * d))
        transposed = torch.stack([cols, rows])  # pattern of h^T, (d_sae, n)
        sae.W_dec.grad = (
            torch.sparse_coo_tensor(transposed, values, (c.d_sae, n), check_invariants=False)
            @ g_out
        )
        sae.b_dec.grad = g_out.sum(0)
        g_h = torch.sparse.sampled_addmm(h, g_out, sae.W_dec.T, beta=0.0).values()
        if l1 > 0:
            g_h.add_(l1 / n)
        g_pre = g_h.mul_(values > 0)  # TopK latents clamped to zero pass no gradient
        g_enc = (
            torch.sparse_coo_tensor(transposed, g_pre, (c.d_sae, n), check_invariants=False) @ xc
        )
        sae.W_enc.grad = g_enc.T.contiguous()
        sae.b_enc.grad = torch.zeros(c.d_sae, dtype=x.dtype).index_add_(0, cols, g_pre)
        nnz = int(values.sign().sum())
    if c.normalize_decoder:
        w, g = sae.W_dec, sae.W_dec.grad
        g.sub_((g * w).sum(1, keepdim=True) * w)  # keep rows on the unit sphere
    return mse, l1_term, nnz / (n * c.d_sae)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_sae(
    config: SAEConfig,
    activations: ActivationSource,
    *,
    offsets: Int[Tensor, " seq_plus_1"] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[SparseAutoencoder, TrainHistory]:
    """Train an SAE on ``activations`` (tokens x d_in); returns ``(sae, history)``.

    ``activations``: a tensor or array (memory-mapped is fine), a sequence of shards, an
    iterable of batches, or a function returning a fresh iterator of batches; shards are
    shuffled in order and within themselves every epoch. With ``config.train_on ==
    "sequence_means"`` pass a matrix with its ``offsets`` (sequence ``i`` owns rows
    ``offsets[i]:offsets[i+1]``) and the SAE trains on per-sequence mean activations.

    Seeded by ``config.seed``. The input mean and scale are estimated on
    ``config.stats_tokens`` rows (a random subset of a matrix, the first rows of a stream);
    the returned SAE takes raw activations.
    """
    device = torch.device(device) if device is not None else _default_device()
    if config.train_on == "sequence_means":
        if offsets is None or not isinstance(activations, Tensor | np.ndarray):
            raise ValueError(
                "train_on='sequence_means' needs the token activations as one matrix plus their "
                "offsets (offsets[i]:offsets[i+1] = rows of sequence i), or already pooled means "
                "passed with train_on='tokens'."
            )
        activations = _pool_sequences(_as_tensor(activations, config.d_in, "activations"), offsets)
    elif offsets is not None:
        log.info("offsets are only used with train_on='sequence_means'; ignoring them")
    return _train_on_source(config, _Source(activations, config.d_in), device, progress)


def _train_on_source(
    config: SAEConfig, source: _Source, device: torch.device, progress: bool
) -> tuple[SparseAutoencoder, TrainHistory]:
    """The training loop of :func:`train_sae` on an already wrapped source."""
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(config)
    sae.reset_parameters(generator)
    sample = source.head(config.stats_tokens, generator).double().cpu()
    mean, msd = _input_stats_of(sample)
    scale = math.sqrt(config.d_in / msd) if config.scale_inputs else 1.0
    with torch.no_grad():
        sae.b_dec.copy_(mean * scale)
        if config.init_density is not None and config.architecture == "relu":
            # each latent starts active on init_density of the sample tokens
            x = sample[:INIT_TOKENS].float() * scale
            pre = ((x - sae.b_dec if config.subtract_decoder_bias else x) @ sae.W_enc).numpy()
            kth = min(int((1 - config.init_density) * len(pre)), len(pre) - 1)
            # np.partition: one O(n) selection per latent (torch.quantile sorts, 10x slower)
            sae.b_enc.copy_(-torch.from_numpy(np.partition(pre, kth, axis=0)[kth]))
    sae.to(device)
    if source.matrix is not None:
        source.matrix = source.matrix.to(device=device, dtype=torch.float32)
        if scale != 1.0:
            source.matrix = source.matrix * scale
        scale_per_batch = 1.0
    else:
        scale_per_batch = scale
    optimiser = torch.optim.Adam(
        sae.parameters(),
        lr=config.lr,
        betas=config.adam_betas,
        **({"fused": True} if device.type in ("cpu", "cuda") else {}),
    )
    history = TrainHistory(input_scale=scale)
    n_tokens = source.n_tokens
    total = math.ceil(n_tokens / config.batch_size) * config.epochs if n_tokens else None
    bar = tqdm(total=total, desc=f"SAE {sae.extra_repr()}", unit="step", disable=not progress)
    l1 = config.l1_coefficient if config.architecture == "relu" else 0.0
    # On the CPU, a step whose latents were sparse enough last time takes the sparse route.
    allow_sparse = device.type == "cpu"
    sparse = (
        allow_sparse and config.architecture == "topk" and config.k < SPARSE_DENSITY * config.d_sae
    )
    start = time.perf_counter()
    for epoch in range(config.epochs):
        losses: list[Tensor] = []
        sizes: list[int] = []
        densities: list[float] = []
        for x in _batches(source, config.batch_size, generator, scale_per_batch, device):
            mse, l1_term, density = _grad_step(sae, x, l1, sparse, measure=allow_sparse)
            sparse = allow_sparse and 0 <= density < SPARSE_DENSITY
            optimiser.step()
            if config.normalize_decoder:
                with torch.no_grad():
                    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_(min=1e-12))
            losses.append(torch.stack([mse, l1_term]))
            densities.append(density * config.d_sae if density >= 0 else float("nan"))
            sizes.append(x.shape[0])
            bar.update()
            if len(losses) % 200 == 0:
                bar.set_postfix(epoch=epoch, mse=f"{float(mse):.4f}", l1=f"{float(l1_term):.3g}")
        if not losses:
            raise ValueError("The activation source yielded no tokens in an epoch.")
        step = torch.stack(losses).double().cpu()
        if not bool(torch.isfinite(step).all()):
            raise FloatingPointError(
                f"SAE training diverged in epoch {epoch} (non-finite loss) with lr={config.lr}; "
                "lower the learning rate or enable scale_inputs."
            )
        weights = torch.tensor(sizes, dtype=torch.float64)
        loss = step[:, 0] + l1 * step[:, 1]
        history.step_mse += step[:, 0].tolist()
        history.step_l1 += step[:, 1].tolist()
        history.step_l0 += densities
        history.step_loss += loss.tolist()
        history.epoch_loss.append(float((loss * weights).sum() / weights.sum()))
        history.epoch_mse.append(float((step[:, 0] * weights).sum() / weights.sum()))
        history.tokens_seen += int(weights.sum())
        log.debug("epoch %d: loss %.5f", epoch, history.epoch_loss[-1])
    history.seconds = time.perf_counter() - start
    bar.close()
    sae.fold_input_scale(scale)
    sae.zero_grad(set_to_none=True)
    sae.requires_grad_(False)  # a trained SAE is for analysis: its outputs need no autograd
    sae.eval()
    log.info(
        "trained SAE %s: %d tokens in %.1f s (%.0f tokens/s), final epoch loss %.4g",
        sae.extra_repr(),
        history.tokens_seen,
        history.seconds,
        history.tokens_per_second,
        history.epoch_loss[-1],
    )
    return sae, history


# --- metrics -------------------------------------------------------------------------------


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
    source = _Source(activations, sae.d_in)
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
    source = _Source(activations, sae.d_in)
    for chunk in source.chunks(None):
        for x in chunk.split(batch_size):
            yield sae.encode(x.to(sae.W_enc.device))


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


# --- features ------------------------------------------------------------------------------


def latent_variance(
    latents: Float[Tensor, "tokens d_sae"] | Iterable[Float[Tensor, "batch d_sae"]],
) -> Float[Tensor, " d_sae"]:
    """Population variance of each latent over tokens (a matrix or an iterable of batches)."""
    batches = [latents] if isinstance(latents, Tensor | np.ndarray) else latents
    n, s1, s2 = 0, None, None
    for batch in batches:
        b = torch.as_tensor(batch).double().cpu()
        if b.ndim != 2:
            raise ValueError(f"latents must be (tokens x d_sae) matrices, got shape {b.shape}")
        s1 = b.sum(0) if s1 is None else s1 + b.sum(0)
        s2 = b.square().sum(0) if s2 is None else s2 + b.square().sum(0)
        n += b.shape[0]
    if n == 0:
        raise ValueError("No latents given.")
    mean = s1 / n
    return (s2 / n - mean.square()).clamp_(min=0)


def top_variance_features(
    latents: Float[Tensor, "tokens d_sae"] | Iterable[Float[Tensor, "batch d_sae"]], n: int
) -> Int[Tensor, " n"]:
    """The paper's selection: indices of the ``n`` latents with the highest variance over
    tokens, most variable first (ties broken by the lower index)."""
    variance = latent_variance(latents)
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
    feature_activations: Float[Tensor, " tokens"],
    token_ids: Int[Tensor, " tokens"],
    offsets: Int[Tensor, " seq_plus_1"],
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
    from scipy.optimize import linear_sum_assignment

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


# --- save / load ---------------------------------------------------------------------------


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``) and
    ``config.json`` into ``folder``; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: getattr(sae, name).detach().cpu().contiguous()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "config": sae.config.to_dict(), "input_scale": sae.input_scale}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Read an SAE written by :func:`save_sae`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"No SAE in {folder} (needs {WEIGHTS_FILE} and {CONFIG_FILE}).")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE} is format {meta.get('format')!r}, not {FORMAT}")
    sae = SparseAutoencoder(SAEConfig.from_dict(meta["config"]))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        raise ValueError(f"Weights in {folder} do not fit the config: {got} vs {expected}")
    sae.load_state_dict(tensors)
    sae.input_scale = float(meta.get("input_scale", 1.0))
    sae.requires_grad_(False)
    sae.eval()
    return sae.to(device)


# --- SAEs on cached activations ------------------------------------------------------------


def split_texts(n_texts: int, eval_fraction: float, seed: int) -> Bool[np.ndarray, " texts"]:
    """Held-out texts: a seeded random ``eval_fraction`` of ``n_texts`` (at least one text,
    and at least one left for training). Splitting by text keeps a text's tokens together."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if n_texts < 2:
        raise ValueError(f"Need at least 2 texts to hold some out, got {n_texts}")
    n_eval = min(max(1, round(eval_fraction * n_texts)), n_texts - 1)
    held_out = np.zeros(n_texts, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n_texts)[:n_eval]] = True
    return held_out


@dataclass
class TrainedSAE:
    """An SAE trained on one layer of an activation set, with its record."""

    sae: SparseAutoencoder
    history: TrainHistory
    #: metrics on the tokens of the held-out texts
    metrics: SAEMetrics
    #: the cache entry holding it
    path: Path
    #: the ``hidden_states`` index it was trained on
    layer: int
    #: True for the texts held out from training
    eval_texts: Bool[np.ndarray, " texts"]


def sae_cache_key(
    activations: ActivationSet,
    layer: int,
    config: SAEConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    exclude_special: bool = False,
) -> dict[str, Any]:
    """The cache key of :func:`train_sae_on_activations`: the activation entry's own key,
    the layer, every config field and the split."""
    return {
        "format": FORMAT,
        "activations": activations.key,
        "layer": int(layer) % activations.n_hidden_states,
        "config": config.to_dict(),
        "eval_fraction": eval_fraction,
        "split_seed": split_seed,
        "exclude_special": exclude_special,
    }


def _token_rows_by_shard(
    tokens: Any, token_mask: Bool[np.ndarray, " tokens"]
) -> list[RowSelection]:
    """One :class:`RowSelection` per shard of a ``ShardedArray``: the rows where mask is set."""
    out, start = [], 0
    for part in tokens.parts():
        rows = np.flatnonzero(token_mask[start : start + len(part)])
        start += len(part)
        if len(rows):
            out.append(RowSelection(part, rows))
    return out


def train_sae_on_activations(
    activations: ActivationSet,
    layer: int,
    config: SAEConfig,
    *,
    eval_fraction: float = 0.1,
    split_seed: int = 0,
    exclude_special: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    root: Path | None = None,
) -> TrainedSAE:
    """Train (or load from the cache) an SAE on one layer of a cached activation set.

    The texts are split by :func:`split_texts`; the SAE streams the training texts' token rows
    shard by shard from the memory-mapped activation cache (or, with ``config.train_on ==
    "sequence_means"``, trains on their mean activations) and is evaluated on the held-out
    texts' tokens. ``exclude_special`` leaves [CLS]/[SEP]-like tokens out of training and
    evaluation. The result is a cache entry of kind ``sae`` keyed by :func:`sae_cache_key`
    (the activation entry's key, the layer, the config and the split), so a rerun loads it.
    """
    from .cache import cache_entry

    tokens = activations.tokens(layer)  # validates the layer
    stored = int(layer) % activations.n_hidden_states
    if activations.d_model != config.d_in:
        raise ValueError(
            f"The activations have d_model={activations.d_model} but the SAE config says "
            f"d_in={config.d_in}."
        )
    if exclude_special and config.train_on == "sequence_means":
        raise ValueError("exclude_special applies to token training, not to sequence means.")
    held_out = split_texts(activations.n_texts, eval_fraction, split_seed)
    key = sae_cache_key(
        activations,
        stored,
        config,
        eval_fraction=eval_fraction,
        split_seed=split_seed,
        exclude_special=exclude_special,
    )
    name = f"{activations.path.name}__L{stored}__{config.architecture}"
    with cache_entry("sae", name, key, root=root) as entry:
        if not entry.exists:
            token_held_out = np.repeat(held_out, activations.lengths)
            keep = ~activations.special_mask if exclude_special else np.ones_like(token_held_out)
            eval_source = _token_rows_by_shard(tokens, token_held_out & keep)
            if config.train_on == "sequence_means":
                train_source = activations.pooled(stored, "mean")[~held_out]
            else:
                train_source = _token_rows_by_shard(tokens, ~token_held_out & keep)
            resolved = torch.device(device) if device is not None else _default_device()
            sae, history = _train_on_source(
                config, _Source(train_source, config.d_in), resolved, progress
            )
            metrics = evaluate_sae(sae, eval_source)
            save_sae(sae, entry.tmp)
            (entry.tmp / "history.json").write_text(json.dumps(asdict(history)))
            (entry.tmp / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=2))
            log.info("SAE %s layer %d: %s", name, stored, metrics)
    folder = entry.path
    record = json.loads((folder / "history.json").read_text())
    metrics_record = json.loads((folder / "metrics.json").read_text())
    metrics_record.pop("fve", None)
    return TrainedSAE(
        sae=load_sae(folder, device="cpu" if device is None else device),
        history=TrainHistory(**record),
        metrics=SAEMetrics(**metrics_record),
        path=folder,
        layer=stored,
        eval_texts=held_out,
    )
