"""The small causal LM and how one optimizer step trains it: :class:`PretrainConfig` (the whole
run's settings, its cache key), :data:`PRETRAIN_SETTINGS`, a seeded GPT-NeoX
(:func:`build_model`, Pythia's architecture: rotary embeddings on a quarter of each head,
parallel residual, untied embeddings), AdamW with Pythia's settings (:func:`make_optimizer`)
and :func:`train_step`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

log = logging.getLogger(__name__)

#: Bumped whenever the code changes what a config produces (part of every corpus and run key).
#: 2: the corpus reads the BBC files through ``data.read_bbc``, which decodes the one file that
#: is not UTF-8 as Latin-1 (a pound sign) where version 1 put U+FFFD.
FORMAT_VERSION = 2


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run (the whole dataclass is its cache key).

    The defaults are the ``quick`` setting of :data:`PRETRAIN_SETTINGS`, found in
    ``benchmarks/pretraining_phase_search.md``: a 2-layer, hidden-32 model with a 1,024-token
    vocabulary, batches of 8 x 64 tokens, 8,000 steps at a constant learning rate. It shows
    all three of paper 2's phases in a minute or two of training on a CPU. Pythia's
    own values are noted per field.
    """

    seed: int = 0
    # tokenizer and model (Pythia-70m: vocab 50,304, 6 layers, hidden 512, 8 heads, context 2048)
    vocab_size: int = 1024
    num_layers: int = 2
    hidden_size: int = 32
    num_heads: int = 2
    intermediate_size: int | None = None  # None: 4 x hidden_size, as in Pythia
    context_length: int = 64
    rotary_pct: float = 0.25  # Pythia: rotary embeddings on a quarter of each head
    init_std: float = 0.02
    # optimisation (Pythia: AdamW, betas 0.9/0.95, weight decay 0.01, warmup 1%, cosine to 10%;
    # batch 1,024 x 2,048 tokens, 143,000 steps)
    steps: int = 8000
    batch_size: int = 8
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1  # the cosine decays to learning_rate * min_lr_ratio
    warmup_fraction: float = 0.005
    cosine_decay: bool = False  # False: constant learning rate after warmup
    weight_decay: float = 0.0  # on weight matrices only, not on biases and LayerNorms
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    # checkpoints: step 0, 1, 2, 4, ..., 512 (as far as `steps` goes), then every this many
    checkpoint_every: int = 500
    # corpus
    use_bbc: bool = True
    use_tweets: bool = True
    holdout_fraction: float = 0.05  # share of documents held out, per source
    corpus_seed: int = 0  # which documents are held out (separate from the training seed)
    max_documents: int | None = None  # a seeded subset of each source (tests, tiny runs)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be a non-negative int, got {self.seed!r}")
        if not 260 <= self.vocab_size <= 65_535:
            problems.append(
                f"vocab_size must be between 260 (256 bytes + special tokens) and 65,535 "
                f"(token ids are stored as uint16), got {self.vocab_size}"
            )
        for name in ("num_layers", "hidden_size", "num_heads", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if self.intermediate_size is not None and self.intermediate_size < 1:
            problems.append(f"intermediate_size must be positive, got {self.intermediate_size}")
        if self.context_length < 2:
            problems.append(f"context_length must be at least 2, got {self.context_length}")
        if not 0.0 < self.rotary_pct <= 1.0:
            problems.append(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.steps < 1:
            problems.append(f"steps must be at least 1, got {self.steps}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be non-negative, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            problems.append(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be positive or None, got {self.grad_clip}")
        if not self.init_std > 0:
            problems.append(f"init_std must be positive, got {self.init_std}")
        if not (self.use_bbc or self.use_tweets):
            problems.append("the corpus needs at least one source: use_bbc or use_tweets")
        if not 0.0 < self.holdout_fraction < 0.5:
            problems.append(f"holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")
        if self.max_documents is not None and self.max_documents < 4:
            problems.append(f"max_documents must be at least 4 or None, got {self.max_documents}")
        if problems:
            raise ValueError("Invalid PretrainConfig: " + "; ".join(problems) + ".")
        # normalise so that equal settings give equal keys (a list from JSON vs a tuple)
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    @property
    def ffn_size(self) -> int:
        """Width of the MLP (``intermediate_size``, or 4 x hidden_size)."""
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def warmup_steps(self) -> int:
        """Number of linear-warmup steps (``round(warmup_fraction * steps)``)."""
        return int(round(self.warmup_fraction * self.steps))

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step (batch x context)."""
        return self.batch_size * self.context_length

    def corpus_key(self) -> dict[str, Any]:
        """The settings the corpus and tokenizer depend on (shared by runs that differ
        only in model or optimisation)."""
        return {
            "use_bbc": self.use_bbc,
            "use_tweets": self.use_tweets,
            "holdout_fraction": self.holdout_fraction,
            "corpus_seed": self.corpus_seed,
            "max_documents": self.max_documents,
            "vocab_size": self.vocab_size,
            "format": FORMAT_VERSION,
        }

    def run_key(self) -> dict[str, Any]:
        """The cache key of a run: every field plus the code's format version."""
        return {"config": asdict(self), "format": FORMAT_VERSION}

    def run_name(self) -> str:
        """A readable folder name; the hash of :meth:`run_key` makes it unique."""
        return (
            f"gptneox-L{self.num_layers}-d{self.hidden_size}-v{self.vocab_size}"
            f"-s{self.steps}-seed{self.seed}"
        )

    def lr_at(self, step: int) -> float:
        """Learning rate used for the update that takes the model from ``step`` to ``step+1``.

        Linear warmup from ``learning_rate / warmup_steps`` to ``learning_rate`` over the first
        ``warmup_steps`` updates, then a cosine from ``learning_rate`` down to
        ``learning_rate * min_lr_ratio`` at the last update (or constant if ``cosine_decay``
        is off).
        """
        warm = self.warmup_steps
        if step < warm:
            return self.learning_rate * (step + 1) / warm
        if not self.cosine_decay:
            return self.learning_rate
        span = max(1, self.steps - warm)
        progress = min(1.0, (step - warm) / span)
        floor = self.learning_rate * self.min_lr_ratio
        return floor + (self.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


#: Recommended runs (``benchmarks/pretraining_phase_search.md``, runs e10 and e11). Both show
#: the warmup collapse, the entropy-seeking expansion and the compression-seeking contraction
#: of the final layer's last-token RankMe; both use batches of 8 x 64 tokens, because the
#: phases run on a clock of optimizer steps rather than tokens.
PRETRAIN_SETTINGS: dict[str, PretrainConfig] = {
    # 91k parameters, 8,000 steps (4.1M tokens, 1.2 passes): 54,568 tokens/s on one thread in
    # benchmarks/results/pretrain.json, so about 75 s of training on an idle core. RankMe 19.6
    # at init, 5.1 at step 64, 18.8 at step 2,000, 16.4 at step 8,000.
    "quick": PretrainConfig(),
    # 231k parameters, 16,000 steps (8.2M tokens, 2.4 passes): 28,903 tokens/s on one thread
    # (pretrain.json), so about 5 minutes of training, longer when other jobs share the cores.
    # RankMe 30.5 at init, 7.3 at step 64, 26.6 at step 3,000, 17.3 at step 16,000; the
    # hidden size of 64 also leaves alpha-ReQ a fit range (ranks 12..63).
    "longer": PretrainConfig(
        hidden_size=64,
        num_heads=4,
        steps=16_000,
        warmup_fraction=0.0025,
        checkpoint_every=1000,
    ),
}


# --- model and training ------------------------------------------------------------------------


def build_model(config: PretrainConfig, vocab_size: int):
    """A freshly initialised ``GPTNeoXForCausalLM`` (seeded by ``config.seed``)."""
    model_config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.ffn_size,
        max_position_embeddings=config.context_length,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10_000,
            "partial_rotary_factor": config.rotary_pct,
        },
        hidden_act="gelu",
        initializer_range=config.init_std,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(config.seed)
    model = GPTNeoXForCausalLM(model_config)
    model.train()
    return model


def _parameter_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on 2-D weight matrices (incl. embeddings), none on biases and norms."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for _, param in sorted(model.named_parameters()):
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def count_parameters(model, non_embedding: bool = False) -> int:
    """Parameters of ``model``; ``non_embedding`` leaves out the input embedding table
    (Kaplan et al.'s convention; the unembedding matrix is kept, it costs FLOPs)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.get_input_embeddings().weight.numel()
    return total


def train_step(model, optimizer, input_ids, grad_clip: float | None = 1.0) -> float:
    """One optimizer update on a batch of token ids (next-token loss, gradient clipping);
    returns the batch's loss. The learning rate is whatever the optimizer's groups hold."""
    loss = model(input_ids=input_ids, labels=input_ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def make_optimizer(model, config: PretrainConfig):
    """AdamW with Pythia's settings: decay on weight matrices only, eps 1e-8."""
    return torch.optim.AdamW(
        _parameter_groups(model, config.weight_decay),
        lr=config.lr_at(0),
        betas=config.adam_betas,
        eps=1e-8,
    )
