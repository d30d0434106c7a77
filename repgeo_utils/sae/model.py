"""The SAE itself: :class:`SAEConfig`, the named :data:`PRESETS` and :class:`SparseAutoencoder`.

Two architectures share one module, with the weight names other SAE tools use (``W_enc``
d_in x d_sae, ``b_enc``, ``W_dec`` d_sae x d_in, ``b_dec``):

- ``"relu"``: the paper's SAE (Nadipalli 2025, section 3.2.3). Latents ``h = ReLU((x - b_dec)
  W_enc + b_enc)``, reconstruction ``h W_dec + b_dec``, loss ``MSE + lambda * sum_i h_i``
  (the L1 of the non-negative latents, summed over latents and averaged over tokens; with
  ``l1_reduction="mean"`` averaged over latents too, ``MSE + lambda * mean_i h_i``, as the
  paper's code computed it).
- ``"topk"``: only the ``k`` largest pre-activations of a token survive (then a ReLU), so a token
  has at most ``k`` (in practice exactly ``k``) active latents; the loss is the MSE alone.

Options the field uses: unit-norm decoder rows (``normalize_decoder``), subtracting the decoder
bias before encoding (``subtract_decoder_bias``), and scaling the inputs by one constant
(``scale_inputs``) so that their mean squared distance from their mean is ``d_in``; the training
MSE then reads directly as a fraction of variance unexplained. The scale is folded into the
weights when training ends, so a trained SAE always takes raw activations.

The paper's optimiser setting (Adam, lr 2e-5, 10 epochs; its code used batch 16) is in the
presets ``"paper-text"`` (the L1 term as the text writes it, summed over latents) and
``"paper-code"`` (as its code computed it, averaged over latents: 1/d_sae as strong). At batch 16 it takes 16 times as many steps as batch 256
and runs several times slower (MiniLM layer 3, BBC headlines: FVE 0.83 at L0 178); at lr 2e-5
with batch 256 it is far from converged after 10 epochs (FVE 0.66). The defaults (lr 1e-3,
batch 256, centred and scaled inputs) reach FVE 0.90 in the same 10 epochs. See :data:`PRESETS`
for the measured trade-offs.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

Architecture = Literal["relu", "topk"]
TrainOn = Literal["tokens", "sequence_means"]
L1Reduction = Literal["sum", "mean"]

# --- configuration -------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """An int (NumPy's too), not a bool and not a float such as 16.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _is_real(value: Any) -> bool:
    """A finite real number, not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(value)
    )


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if isinstance(value, float | str) else repr(value)


@dataclass(frozen=True)
class SAEConfig:
    """Architecture and training settings of one SAE (all of it goes into cache keys).

    ``l1_coefficient`` only acts on the ``"relu"`` architecture; ``k`` only on ``"topk"``.
    ``l1_reduction`` says how the L1 term pools the latents of a token: ``"sum"`` (the paper's
    text and the field's usual convention, ``lambda * sum_i h_i``) or ``"mean"`` (the paper's
    code, ``lambda * mean_i h_i``: the same lambda is ``d_sae`` times weaker). Either way the
    term is averaged over the tokens of a batch.
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
    l1_reduction: L1Reduction = "sum"

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_in", "d_sae", "epochs", "batch_size", "stats_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name} must be a positive int, got {_shown(value)}")
        if self.architecture not in ("relu", "topk"):
            problems.append(f"architecture must be 'relu' or 'topk', got {self.architecture!r}")
        if self.architecture == "topk":
            if self.k is None:
                problems.append("architecture 'topk' needs k (active latents per token)")
            elif not _is_int(self.k) or self.k < 1:
                problems.append(f"k must be a positive int, got {_shown(self.k)}")
            elif isinstance(self.d_sae, int) and self.k > self.d_sae:
                problems.append(f"k={self.k} is larger than d_sae={self.d_sae}")
        elif self.k is not None:
            problems.append(f"k={self.k} only applies to architecture 'topk', not 'relu'")
        if not (_is_real(self.l1_coefficient) and self.l1_coefficient >= 0):
            problems.append(
                f"l1_coefficient must be >= 0 and finite, got {_shown(self.l1_coefficient)}"
            )
        if not (_is_real(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive finite number, got {_shown(self.lr)}")
        if not _is_int(self.seed) or self.seed < 0:
            problems.append(f"seed must be a non-negative int, got {_shown(self.seed)}")
        if self.init_density is not None and not (
            _is_real(self.init_density) and 0 < self.init_density < 1
        ):
            problems.append(
                f"init_density must be in (0, 1) or None, got {_shown(self.init_density)}"
            )
        for flag in ("normalize_decoder", "subtract_decoder_bias", "scale_inputs"):
            if not isinstance(getattr(self, flag), bool | np.bool_):
                problems.append(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.train_on not in ("tokens", "sequence_means"):
            problems.append(f"train_on must be 'tokens' or 'sequence_means', got {self.train_on!r}")
        betas = self.adam_betas
        if (
            isinstance(betas, str)
            or not isinstance(betas, Sequence)
            or len(betas) != 2
            or not all(_is_real(b) and 0 <= b < 1 for b in betas)
        ):
            problems.append(f"adam_betas must be two numbers in [0, 1), got {betas!r}")
        if self.l1_reduction not in ("sum", "mean"):
            problems.append(f"l1_reduction must be 'sum' or 'mean', got {self.l1_reduction!r}")
        if problems:
            raise ValueError("Invalid SAEConfig: " + "; ".join(problems) + ".")

    @classmethod
    def preset(cls, name: str, d_in: int, d_sae: int, **overrides: Any) -> SAEConfig:
        """A named setting (see :data:`PRESETS`) for ``d_in -> d_sae``, with ``overrides``."""
        if name in DEPRECATED_PRESETS:
            new = DEPRECATED_PRESETS[name]
            warnings.warn(
                f"SAE preset {name!r} is deprecated: it is {new!r} (the paper's L1 term as its "
                "text writes it, summed over latents); the paper's code averaged it over latents "
                "(preset 'paper-code'). Name the one you mean.",
                DeprecationWarning,
                stacklevel=2,
            )
            name = new
        try:
            settings = PRESETS[name]
        except KeyError:
            raise ValueError(
                f"Unknown SAE preset {name!r}. Known presets: {', '.join(sorted(PRESETS))}."
            ) from None
        return cls(d_in=d_in, d_sae=d_sae, **{**settings, **overrides})

    @property
    def active_k(self) -> int:
        """``k`` of a TopK SAE (checked when the config is made); a ValueError for ReLU."""
        if self.k is None:
            raise ValueError(f"A {self.architecture!r} SAE has no k (active latents per token).")
        return self.k

    @property
    def l1_weight(self) -> float:
        """The coefficient of ``sum_i h_i`` in the loss: ``l1_coefficient``, divided by
        ``d_sae`` for ``l1_reduction="mean"``; 0 for TopK (which has no L1 term)."""
        if self.architecture != "relu":
            return 0.0
        return self.l1_coefficient / (self.d_sae if self.l1_reduction == "mean" else 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists). Fields added after the first release
        are left out while they hold their default (:data:`LATER_FIELD_DEFAULTS`), so the
        cache keys of SAEs made before those fields existed stay what they were."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        for name, default in LATER_FIELD_DEFAULTS.items():
            if out[name] == default:
                del out[name]
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


#: Fields added to :class:`SAEConfig` after SAEs were first cached, with the default that
#: reproduces the old behaviour: :meth:`SAEConfig.to_dict` leaves them out at that value.
LATER_FIELD_DEFAULTS: dict[str, Any] = {"l1_reduction": "sum"}


#: Named settings.
#:
#: - ``default``: the paper's SAE (ReLU, L1 1e-3) trained so that it converges on token
#:   activations: lr 1e-3, batch 256, 10 epochs, centred and scaled inputs, unit-norm decoder,
#:   encoder bias started at 10% density. On MiniLM tokens: FVE ~0.9, but ~200 of 1024 latents
#:   active a token (L1 1e-3 is weak at this scale).
#: - ``l1-sparse``: the same with L1 1e-2: ~12-20 active latents a token, FVE ~0.71.
#: - ``topk-32``: TopK with k = 32: FVE ~0.82 at 32 active latents.
#: - ``paper-text``: Nadipalli (2025) section 3.2.3 as its text writes it: ReLU + L1 1e-3 on
#:   ``sum_i |h_i|`` (summed over latents), Adam lr 2e-5 for 10 epochs, with the batch of 16
#:   its code used, raw inputs, free decoder norms, zero encoder bias.
#: - ``paper-code``: the same with the L1 term as the paper's code computed it,
#:   ``1e-3 * mean(|h|)`` over the batch *and* the latents (``l1_reduction="mean"``): 1,024
#:   times weaker than the text's at 1,024 latents. (The code also trained 2 epochs on a 1%
#:   sample of per-text mean activations; the preset keeps the text's 10 epochs on tokens, and
#:   ``sae.grid.sequence_mean_comparison`` compares sequence-mean training separately.)
#: - ``paper``: deprecated name of ``paper-text`` (:data:`DEPRECATED_PRESETS`; it warns).
#:
#: Every setting starts the decoder bias at the data mean and the encoder at the transpose of
#: random unit decoder rows.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "l1-sparse": dict(l1_coefficient=1e-2),
    "topk-32": dict(architecture="topk", k=32),
    "paper-text": dict(
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
PRESETS["paper-code"] = {**PRESETS["paper-text"], "l1_reduction": "mean"}

#: Old preset names and the preset each now means (:meth:`SAEConfig.preset` warns).
DEPRECATED_PRESETS: dict[str, str] = {"paper": "paper-text"}


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
    values, index = topk(pre, config.active_k)
    return torch.zeros_like(pre).scatter_(-1, index, torch.relu(values))


def topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row (in no particular order) and their indices.

    On the CPU a NumPy introselect (``argpartition``) is about 3x faster than ``torch.topk``
    here; the values are gathered from ``pre`` so autograd still flows through them.
    """
    if pre.device.type != "cpu" or pre.dtype not in (torch.float32, torch.float64):
        return pre.topk(k, dim=-1, sorted=False)
    flat = pre.detach().reshape(-1, pre.shape[-1]).numpy()
    picked = np.argpartition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    index = torch.from_numpy(picked).reshape(*pre.shape[:-1], k)
    return torch.gather(pre, -1, index), index
