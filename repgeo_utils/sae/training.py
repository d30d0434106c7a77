"""Training an SAE: :func:`train_sae`, with hand-written gradients and a sparse CPU route.

:func:`train_sae` takes an in-memory matrix or a re-iterable stream of batches (memory-mapped
activation shards), computes the gradients by hand (five matrix products a step, no autograd
bookkeeping) and uses a fused Adam, so it is bound by matrix-multiply speed. On the CPU, once
few latents are active (TopK, or a well-sparsified ReLU SAE), a step switches to sparse products
for everything but the encoder (:data:`SPARSE_DENSITY`).

Why by hand rather than with autograd or a library's trainer: a step needs five matrix products
(a generic autograd step six, plus its bookkeeping), and ``benchmarks/results/sae.json``
measured this code at 45,309 / 46,116 tokens/s with batches of 1,024 / 4,096 for a 384 -> 1,024
SAE on 2 CPU cores, 74-75% of the float32 GEMM bound of the same run (61,261 tokens/s); TopK
with k = 32 through the sparse route ran at 42,811 tokens/s, and the paper's batch of 16 at
10,115 tokens/s. (The file holds no autograd run, so the gain over autograd itself is not
recorded there.)
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import validate
from .model import SAEConfig, SparseAutoencoder, topk
from .sources import ActivationSource, ChunkSource, as_matrix, pool_sequences

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    """Losses of a training run (in the scaled units the SAE was trained in)."""

    step_loss: list[float] = field(default_factory=list)
    step_mse: list[float] = field(default_factory=list)
    #: mean over tokens of sum_i h_i (the L1 term before multiplying by ``config.l1_weight``)
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
    source: ChunkSource, batch_size: int, generator: torch.Generator, scale: float, device
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
        values, index = topk(pre, c.active_k)
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
            rows = torch.arange(n).repeat_interleave(c.active_k)
            crow = torch.arange(0, n * c.active_k + 1, c.active_k)
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


def default_device() -> torch.device:
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
    if not isinstance(config, SAEConfig):
        raise TypeError(
            f"config must be an SAEConfig, got {type(config).__name__} {config!r:.80}; make one "
            "with SAEConfig(...) or SAEConfig.preset(name, d_in, d_sae)"
        )
    device = validate.torch_device("device", device) if device is not None else default_device()
    if config.train_on == "sequence_means":
        if offsets is None or not isinstance(activations, Tensor | np.ndarray):
            raise ValueError(
                "train_on='sequence_means' needs the token activations as one matrix plus their "
                "offsets (offsets[i]:offsets[i+1] = rows of sequence i), or already pooled means "
                "passed with train_on='tokens'."
            )
        activations = pool_sequences(as_matrix(activations, config.d_in, "activations"), offsets)
    elif offsets is not None:
        log.info("offsets are only used with train_on='sequence_means'; ignoring them")
    return train_on_source(config, ChunkSource(activations, config.d_in), device, progress)


def train_on_source(
    config: SAEConfig, source: ChunkSource, device: torch.device, progress: bool
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
    l1 = config.l1_weight  # the coefficient of sum_i h_i (l1_reduction "mean": / d_sae)
    # On the CPU, a step whose latents were sparse enough last time takes the sparse route.
    allow_sparse = device.type == "cpu"
    sparse = (
        allow_sparse
        and config.architecture == "topk"
        and config.active_k < SPARSE_DENSITY * config.d_sae
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
