"""The small causal LM and how one optimizer step trains it: :class:`PretrainConfig` (the whole
run's settings, its cache key), :data:`PRETRAIN_SETTINGS`, a seeded GPT-NeoX
(:func:`build_model`, Pythia's architecture: rotary embeddings on a quarter of each head,
parallel residual, untied embeddings), AdamW with Pythia's settings (:func:`make_optimizer`)
and :func:`train_step`.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from .. import validate

log = logging.getLogger(__name__)

#: Bumped whenever the code changes what a config produces (part of every corpus and run key).
#: 2: the corpus reads the BBC files through ``data.read_bbc``, which decodes the one file that
#: is not UTF-8 as Latin-1 (a pound sign) where version 1 put U+FFFD.
FORMAT_VERSION = 2

#: Bumped whenever the training loop changes the numbers a run produces (part of run keys only,
#: so the corpus and tokenizer stay shared). 2: fused AdamW and for-each gradient clipping,
#: which round differently from the per-tensor loops that version 1 used on the CPU.
TRAINING_VERSION = 2

#: The AdamW implementations :func:`make_optimizer` offers (torch's ``fused`` kernel, its
#: ``foreach`` multi-tensor path, or the per-tensor ``for-loop`` that torch picks on the CPU by
#: default). ``benchmarks/bench_pretrain.py`` times them against each other.
OPTIMIZER_IMPLEMENTATIONS: tuple[str, ...] = ("fused", "foreach", "for-loop")


# --- configuration ---------------------------------------------------------------------------


@validate.refuse_unknown_names
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
        problems: list[str] = []

        def check(name: str, rule, *args, **kwargs) -> None:
            try:
                value = rule(name, getattr(self, name), *args, **kwargs)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
                return
            if isinstance(value, int):  # a NumPy integer becomes an int (equal keys)
                object.__setattr__(self, name, value)

        check("seed", validate.non_negative_int)
        check("corpus_seed", validate.non_negative_int)
        # 256 bytes + special tokens; token ids are stored as uint16 and 65,535 is the document
        # separator of the n-gram index
        check("vocab_size", validate.integer, minimum=260, maximum=65_535)
        for name in ("num_layers", "hidden_size", "num_heads", "steps", "batch_size"):
            check(name, validate.positive_int)
        check("checkpoint_every", validate.positive_int)
        check("context_length", validate.integer, minimum=2)
        if self.intermediate_size is not None:
            check("intermediate_size", validate.positive_int)
        if self.max_documents is not None:
            check("max_documents", validate.integer, minimum=4)
        check("rotary_pct", validate.real, minimum=0.0, maximum=1.0, strict_minimum=True)
        check("init_std", validate.positive_float)
        check("learning_rate", validate.positive_float)
        check("min_lr_ratio", validate.fraction)
        check("warmup_fraction", validate.fraction, open_high=True)
        check("weight_decay", validate.non_negative_float)
        check("holdout_fraction", validate.real, minimum=0.0, maximum=0.5,
              strict_minimum=True, strict_maximum=True)  # fmt: skip
        if self.grad_clip is not None:
            check("grad_clip", validate.positive_float)
        for name in ("cosine_decay", "use_bbc", "use_tweets"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                problems.append(
                    f"{name} must be True or False, got {type(value).__name__} {value!r}"
                )
        try:
            betas = validate.pair("adam_betas", self.adam_betas)
            for i, beta in enumerate(betas):
                validate.fraction(f"adam_betas[{i}]", beta, open_high=True)
        except (TypeError, ValueError) as err:
            problems.append(str(err))
        if not problems and self.hidden_size % self.num_heads:
            problems.append(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads}); e.g. num_heads={_divisor_near(self.hidden_size, self.num_heads)}"
            )
        if not problems and not (self.use_bbc or self.use_tweets):
            problems.append("the corpus needs at least one source: use_bbc or use_tweets")
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
        return {"config": asdict(self), "format": FORMAT_VERSION, "training": TRAINING_VERSION}

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


def _divisor_near(hidden: int, heads: int) -> int:
    """The divisor of ``hidden`` closest to ``heads`` (for an error message)."""
    return min((d for d in range(1, hidden + 1) if hidden % d == 0), key=lambda d: abs(d - heads))


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
    returns the batch's loss. The learning rate is whatever the optimizer's groups hold.
    Clipping uses torch's multi-tensor (``foreach``) norm, one kernel for all gradients."""
    loss = model(input_ids=input_ids, labels=input_ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()
    return float(loss.detach())


#: glibc's ``mallopt`` parameters (malloc.h) and the values :func:`retain_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETAINED_BLOCK_BYTES = 64 << 20  # blocks below this come from the heap, not their own mmap
RETAINED_TOP_BYTES = 128 << 20  # free memory kept at the heap's top before any goes back


def retain_freed_memory() -> bool:
    """Keep memory that torch frees in the process, ready for the next training step.

    By default glibc gives large freed blocks back to the operating system (``munmap``, or
    trimming the heap), so every training step faults its largest tensors in again: at the
    standard setting the step's 8 x 64 x 1,024 logits and their gradient (2 MiB each), 433
    page faults a step on the 2-core machine of ``benchmarks/results/pretrain.json``; 1,000
    steps of the quick setting spent 3.2 s in the kernel. With glibc's mmap threshold raised to
    64 MiB and its trim threshold to 128 MiB, the same blocks are reused (under 10 faults a
    step) and the quick setting trains about 10% faster. The arithmetic is untouched: the
    weights after training are the same bits (``tests/test_pretrain.py``).

    Process-wide and permanent (the process keeps up to 128 MiB of free heap; its peak memory
    grew by 6 MiB in that measurement). Returns whether it applied: False where the C library
    has no ``mallopt`` (not glibc: macOS, musl), where nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into this process
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAINED_BLOCK_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, RETAINED_TOP_BYTES)
    )


def make_optimizer(model, config: PretrainConfig, implementation: str = "fused"):
    """AdamW with Pythia's settings: decay on weight matrices only, eps 1e-8.

    ``implementation`` picks torch's kernel (:data:`OPTIMIZER_IMPLEMENTATIONS`): ``"fused"``
    (the default since training version 2) updates every parameter in one kernel;
    ``"for-loop"`` is what torch chooses on the CPU when not told, and was about 11% of a
    training step of the quick setting (``benchmarks/bench_pretrain.py`` measures both).
    """
    validate.one_of("implementation", implementation, OPTIMIZER_IMPLEMENTATIONS)
    kwargs: dict[str, Any] = {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for-loop": {"foreach": False},
    }[implementation]
    return torch.optim.AdamW(
        _parameter_groups(model, config.weight_decay),
        lr=config.lr_at(0),
        betas=config.adam_betas,
        eps=1e-8,
        **kwargs,
    )
