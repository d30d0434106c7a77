"""Distributional memorization: how closely a checkpoint's next-token probabilities follow the
infini-gram statistics of its own training tokens (paper 2, section 3.2, Fig 4 and Table 1).

Liu et al. (2024)'s **infini-gram** (the ``infini-gram`` package) is an n-gram model with
unbounded n: for a context it finds the longest suffix that occurs in the corpus and estimates
the next token's probability from the counts of that suffix, ``count(suffix + token) /
count(suffix)``. Wang et al. (2025) define **distributional memorization** as the Spearman rank
correlation between those estimates and the language model's own probabilities of the same
tokens; paper 2 follows it over Pythia's checkpoints and finds it rising through the
entropy-seeking phase and peaking near its end.

Here the corpus is the LM's own training stream (:func:`repgeo_utils.lm.prepare_corpus`), split
into its documents at ``<|endoftext|>``, and indexed by the package's own suffix-array builder
(:func:`build_ngram_index`; we write its token files ourselves so that no tokenizer of the
package's is needed). Per checkpoint, :func:`memorization_over_checkpoints` gives the Spearman
correlation over every predicted token of held-out and of training sequences, and
:func:`suffix_length_table` the distribution of the longest matching suffix (Table 1).
:func:`brute_force_infgram` computes the same estimate by scanning the token array; the tests
check the index against it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from .. import validate
from ..cache import cache_entry, key_hash
from ..models import load_model
from .checkpoints import quiet_progress_bars, revision_step
from .corpus import EOS_TOKEN, PreparedCorpus

log = logging.getLogger(__name__)

#: Token id that separates documents in the index files (uint16 ids; never a real token).
DOC_SEPARATOR = 0xFFFF
#: Version of the index and estimate layout (part of their cache keys).
INDEX_FORMAT = 1


# --- the index ---------------------------------------------------------------------------------


def split_documents(stream: np.ndarray, separator: int) -> list[np.ndarray]:
    """The documents of a token stream in which each document ends with ``separator`` (the
    training stream of :func:`repgeo_utils.lm.prepare_corpus`), separators dropped; empty
    documents are skipped."""
    stream = np.asarray(stream)
    ends = np.flatnonzero(stream == separator)
    docs, start = [], 0
    for end in [*ends.tolist(), len(stream)]:
        if end > start:
            docs.append(stream[start:end])
        start = end + 1
    return docs


def write_token_files(documents: Iterable[np.ndarray], folder: Path) -> tuple[int, int]:
    """Write ``tokenized.0`` and ``offset.0`` in the layout of the infini-gram indexer's first
    step (each document as ``0xFFFF`` followed by its uint16 ids, little-endian; the byte
    offset of each separator as uint64), so that step is skipped. One empty document is added
    at the end: without it the engine's next-token distribution mis-counts a match that ends
    at the very end of the corpus (the last document's tail). Returns (tokens written,
    documents written) including the separators and the empty document."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets, position, n_docs = [], 0, 0
    with open(folder / "tokenized.0", "wb") as handle:
        for doc in [*documents, np.zeros(0, dtype=np.uint16)]:
            doc = np.asarray(doc)
            if doc.size and (int(doc.max()) >= DOC_SEPARATOR or int(doc.min()) < 0):
                raise ValueError(
                    f"token ids must be in [0, {DOC_SEPARATOR - 1}] ({DOC_SEPARATOR} separates "
                    f"documents), got {int(doc.min())}..{int(doc.max())}"
                )
            block = np.concatenate([[DOC_SEPARATOR], doc]).astype("<u2").tobytes()
            handle.write(block)
            offsets.append(position)
            position += len(block)
            n_docs += 1
    np.asarray(offsets, dtype="<u8").tofile(folder / "offset.0")
    return position // 2, n_docs


def _open_files_limit() -> int:
    """The ``--ulimit`` to give the indexer: 20,000 open files, or the machine's hard limit
    when that is lower (the indexer sets both limits to this value and fails above the hard
    one)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 20_000 if hard == resource.RLIM_INFINITY else min(20_000, int(hard))


def require_infini_gram() -> None:
    """Raise a clear error when the ``infini-gram`` package is missing (its wheels exist for
    CPython 3.11 and later)."""
    if importlib.util.find_spec("infini_gram") is None:
        raise ModuleNotFoundError(
            "distributional memorization needs the infini-gram package: pip install "
            "'infini-gram==2.6.0' (wheels for CPython 3.11 and later; `make setup` installs it)."
        )


def build_ngram_index(
    documents: Iterable[np.ndarray], folder: Path, *, cpus: int = 1, mem_gib: int = 4
) -> dict[str, int]:
    """Build an infini-gram index of ``documents`` (arrays of token ids < 65,535) in
    ``folder``: our token files, then the package's suffix-array builder
    (``python -m infini_gram.indexing``, run as a subprocess with absolute paths). Returns
    ``{"tokens": ..., "documents": ...}``."""
    require_infini_gram()
    folder = Path(folder).resolve()
    validate.positive_int("cpus", cpus)
    validate.positive_int("mem_gib", mem_gib)
    tokens, n_docs = write_token_files(documents, folder)
    with tempfile.TemporaryDirectory() as unused:  # --data_dir must exist; never read
        command = [
            sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(Path(unused)),
            "--save_dir", str(folder), "--token_dtype", "u16", "--cpus", str(cpus),
            "--mem", str(mem_gib), "--ulimit", str(_open_files_limit()),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (folder / "table.0").is_file():
        raise RuntimeError(
            f"the infini-gram indexer failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-2000:]}"
        )
    log.info(
        "infini-gram index of %d tokens (%d documents) built in %.1f s",
        tokens,
        n_docs,
        time.perf_counter() - start,
    )
    return {"tokens": tokens, "documents": n_docs}


@dataclass(frozen=True)
class NgramIndex:
    """An infini-gram index on disk and what it holds."""

    path: Path
    tokens: int  # in the index, separators included
    documents: int  # documents indexed, the trailing empty one included
    eos_token_id: int  # an id that never occurs in the documents (the engine reports it for
    # "the document ends here")

    def engine(self):
        """The package's query engine on this index (loaded into memory)."""
        require_infini_gram()
        # the engine is a compiled extension; load it only when an index is queried
        from infini_gram.engine import InfiniGramEngine  # noqa: PLC0415

        return InfiniGramEngine(
            index_dir=str(self.path),
            eos_token_id=int(self.eos_token_id),
            vocab_size=DOC_SEPARATOR,
            version=4,
            token_dtype="u16",
            load_to_ram=True,
        )

    def token_array(self) -> np.ndarray:
        """The indexed tokens (separators included) as one uint16 array."""
        return np.fromfile(self.path / "tokenized.0", dtype="<u2")


def corpus_ngram_index(data: PreparedCorpus, root: Path | None = None) -> NgramIndex:
    """The infini-gram index of a prepared corpus's training tokens (one document per
    ``<|endoftext|>``-ended stretch of the stream), cached under ``data/cache/ngram-index/``
    keyed by the corpus entry and its length."""
    tokenizer = data.load_tokenizer()
    eos = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    key = {
        "corpus": data.path.name,
        "train_tokens": int(len(data.train_ids)),
        "eos": eos,
        "format": INDEX_FORMAT,
    }
    with cache_entry("ngram-index", data.path.name, key, root=root) as entry:
        if not entry.exists:
            info = build_ngram_index(split_documents(data.train_ids, eos), entry.build_dir)
            (entry.build_dir / "index.json").write_text(json.dumps({**info, "eos": eos}))
    info = json.loads((entry.path / "index.json").read_text())
    return NgramIndex(entry.path, int(info["tokens"]), int(info["documents"]), eos)


# --- infini-gram estimates ---------------------------------------------------------------------


@dataclass(frozen=True)
class InfgramEstimate:
    """The infini-gram estimate of one next token."""

    prob: float  # cont_count / suffix_count (0 when the token never followed the suffix)
    suffix_len: int  # tokens of the longest suffix of the context found in the corpus
    suffix_count: int  # occurrences of that suffix
    cont_count: int  # occurrences of the suffix followed by the token


def infgram_estimate(engine, context: Sequence[int], token: int) -> InfgramEstimate:
    """The infini-gram estimate of ``token`` after ``context`` from an engine
    (:meth:`NgramIndex.engine`); ids go to the engine as Python ints."""
    result = engine.infgram_prob([int(t) for t in context], int(token))
    if "error" in result:
        raise ValueError(f"infini-gram query failed: {result['error']}")
    return InfgramEstimate(
        float(result["prob"]),
        int(result["suffix_len"]),
        int(result["prompt_cnt"]),
        int(result["cont_cnt"]),
    )


def brute_force_infgram(tokens: np.ndarray, context: Sequence[int], token: int) -> InfgramEstimate:
    """The infini-gram estimate by scanning ``tokens`` (the index's token array, separators
    included): the longest suffix of ``context`` that occurs, its count, and how often
    ``token`` follows it. With no suffix found (``suffix_len`` 0) the estimate is the
    unigram frequency of ``token`` among all positions. A reference for tests, O(corpus)."""
    arr = np.asarray(tokens)
    context = [int(t) for t in context]
    ends = np.flatnonzero(arr == context[-1]) if context else np.zeros(0, dtype=np.int64)
    best, best_ends = 0, None
    for length in range(1, len(context) + 1):
        if length > 1:
            ends = ends[ends >= length - 1]
            ends = ends[arr[ends - length + 1] == context[-length]]
        if not ends.size:
            break
        best, best_ends = length, ends
    if best == 0:
        count = int((arr == token).sum())
        return InfgramEstimate(count / len(arr), 0, len(arr), count)
    assert best_ends is not None
    following = best_ends[best_ends + 1 < len(arr)] + 1
    cont = int((arr[following] == token).sum())
    return InfgramEstimate(cont / len(best_ends), best, int(len(best_ends)), cont)


def target_sequences(
    documents: Sequence[np.ndarray], *, n: int, max_tokens: int, min_tokens: int = 8, seed: int = 0
) -> list[list[int]]:
    """``n`` target sequences: the opening ``max_tokens`` tokens (at most; a model's context)
    of ``n`` seeded documents with at least ``min_tokens`` tokens (fewer when fewer qualify)."""
    validate.positive_int("n", n)
    validate.integer("max_tokens", max_tokens, minimum=2)
    eligible = [i for i, doc in enumerate(documents) if len(doc) >= min_tokens]
    if not eligible:
        raise ValueError(f"no document has {min_tokens} tokens or more.")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(eligible), size=min(n, len(eligible)), replace=False)
    return [np.asarray(documents[eligible[i]][:max_tokens]).astype(int).tolist() for i in picks]


def infgram_table(index: NgramIndex, sequences: Sequence[Sequence[int]]) -> pd.DataFrame:
    """The infini-gram estimate of every predicted token of ``sequences`` (positions 1..end;
    the context of position ``t`` is the sequence's tokens before ``t``): columns
    ``sequence, position, token, ig_prob, suffix_len, suffix_count, cont_count``."""
    engine = index.engine()
    rows = []
    for s, seq in enumerate(sequences):
        for t in range(1, len(seq)):
            est = infgram_estimate(engine, seq[:t], seq[t])
            rows.append((s, t, int(seq[t]), est.prob, est.suffix_len, est.suffix_count,
                         est.cont_count))  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=["sequence", "position", "token", "ig_prob", "suffix_len", "suffix_count",
                 "cont_count"],
    )  # fmt: skip


def cached_infgram_table(
    index: NgramIndex, sequences: Sequence[Sequence[int]], root: Path | None = None
) -> pd.DataFrame:
    """:func:`infgram_table`, cached under ``data/cache/infgram-estimates/`` (key: the index
    folder and the sequences)."""
    key = {
        "index": index.path.name,
        "sequences": key_hash({"s": [list(map(int, s)) for s in sequences]}, 16),
        "format": INDEX_FORMAT,
    }
    with cache_entry("infgram-estimates", index.path.name[:40], key, root=root) as entry:
        if not entry.exists:
            infgram_table(index, sequences).to_csv(entry.build_dir / "estimates.csv", index=False)
    return pd.read_csv(entry.path / "estimates.csv")


# --- the language model's side -----------------------------------------------------------------


def lm_token_probabilities(
    model, sequences: Sequence[Sequence[int]], *, batch_size: int = 64
) -> list[np.ndarray]:
    """``p_LM(x_t | x_<t)`` for t = 1..end of each sequence (float64 arrays, one a sequence),
    in the order of :func:`infgram_table`'s rows. Sequences must fit the model's context."""
    positions = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(s) for s in sequences)
    if positions is not None and longest > positions:
        raise ValueError(
            f"a target sequence has {longest} tokens but the model has {positions} positions; "
            f"cut the sequences to at most {positions} tokens."
        )
    out: list[np.ndarray] = [np.zeros(0)] * len(sequences)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            chunk = list(sequences[start : start + batch_size])
            width = max(len(s) for s in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logp = torch.log_softmax(
                model(input_ids=ids, attention_mask=mask).logits[:, :-1].double(), -1
            )
            picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).exp().numpy()
            for row, seq in enumerate(chunk):
                out[start + row] = picked[row, : len(seq) - 1]
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation of two equally long arrays and its p-value."""
    result = stats.spearmanr(np.asarray(x), np.asarray(y))
    return float(result.statistic), float(result.pvalue)


def jackknife_spread(groups: np.ndarray, x: np.ndarray, y: np.ndarray, blocks: int = 10) -> float:
    """Delete-a-block jackknife standard error of Spearman's rho over ``blocks`` blocks of
    ``groups`` (sequence ids): the tokens of one sequence are not independent, so whole
    sequences are what is left out."""
    ids = np.unique(groups)
    if len(ids) < blocks:
        blocks = len(ids)
    if blocks < 2:
        return float("nan")
    parts = np.array_split(ids, blocks)
    values = []
    for part in parts:
        keep = ~np.isin(groups, part)
        values.append(spearman(x[keep], y[keep])[0])
    values_arr = np.asarray(values)
    return float(np.sqrt((blocks - 1) / blocks * ((values_arr - values_arr.mean()) ** 2).sum()))


def memorization_row(estimates: pd.DataFrame, lm_probs: Sequence[np.ndarray]) -> dict[str, float]:
    """Distributional memorization of one checkpoint on one set of sequences: Spearman's rho
    between the infini-gram and the LM probabilities over every predicted token (Wang et al.
    2025), its p-value and jackknife spread over sequences, the same over sequences of their
    mean log-probabilities (paper 2's eq. 2 scores whole targets), and the LM's mean
    log-probability."""
    lm = np.concatenate(list(lm_probs))
    if len(lm) != len(estimates):
        raise ValueError(f"{len(lm)} LM probabilities for {len(estimates)} estimates.")
    ig = estimates["ig_prob"].to_numpy()
    groups = estimates["sequence"].to_numpy()
    rho, p = spearman(ig, lm)
    floor = 1e-12
    per_seq = (
        pd.DataFrame({"s": groups, "ig": np.log(np.maximum(ig, floor)), "lm": np.log(lm)})
        .groupby("s")
        .mean()
    )
    rho_seq, p_seq = spearman(per_seq["ig"].to_numpy(), per_seq["lm"].to_numpy())
    return {
        "spearman": rho,
        "spearman_p": p,
        "spearman_spread": jackknife_spread(groups, ig, lm),
        "spearman_sequences": rho_seq,
        "spearman_sequences_p": p_seq,
        "lm_mean_logprob": float(np.log(lm).mean()),
        "tokens": int(len(lm)),
        "sequences": int(per_seq.shape[0]),
    }


# --- over checkpoints --------------------------------------------------------------------------


@dataclass
class MemorizationResult:
    """What :func:`memorization_over_checkpoints` returns."""

    # per (split, revision): step, spearman (+ p, spread), spearman_sequences, lm_mean_logprob
    trajectory: pd.DataFrame
    # per split: the infini-gram estimate of every predicted token (suffix lengths for Table 1)
    estimates: dict[str, pd.DataFrame]
    index: NgramIndex

    def suffix_lengths(self) -> pd.DataFrame:
        """Table 1 for each split (:func:`suffix_length_table`)."""
        return pd.concat(
            [
                suffix_length_table(e["suffix_len"]).assign(split=s)
                for s, e in self.estimates.items()
            ],
            ignore_index=True,
        )


def memorization_sequences(
    data: PreparedCorpus, *, n: int, max_tokens: int, seed: int = 0
) -> dict[str, list[list[int]]]:
    """Target sequences of both kinds: ``"held-out"`` (openings of held-out documents,
    tokenized) and ``"training"`` (openings of training documents from the stream)."""
    tokenizer = data.load_tokenizer()
    eos = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
    encoded = tokenizer.backend_tokenizer.encode_batch(
        list(data.holdout_texts), add_special_tokens=False
    )
    held = [np.asarray(enc.ids) for enc in encoded]
    train = split_documents(data.train_ids, eos)
    return {
        "held-out": target_sequences(held, n=n, max_tokens=max_tokens, seed=seed),
        "training": target_sequences(train, n=n, max_tokens=max_tokens, seed=seed),
    }


def memorization_over_checkpoints(
    model: str | Path,
    revisions: Sequence[str],
    data: PreparedCorpus,
    *,
    n_sequences: int = 256,
    max_tokens: int = 64,
    seed: int = 0,
    root: Path | None = None,
    progress: bool = True,
) -> MemorizationResult:
    """Distributional memorization of each revision of a pretraining run (a run folder of
    :func:`repgeo_utils.lm.pretrain` with its ``data``), on ``n_sequences`` held-out and
    ``n_sequences`` training sequences of at most ``max_tokens`` tokens (the context).
    The index and the infini-gram estimates are cached; the LM side is a forward pass per
    revision."""
    validate.positive_int("n_sequences", n_sequences)
    index = corpus_ngram_index(data, root=root)
    sequences = memorization_sequences(data, n=n_sequences, max_tokens=max_tokens, seed=seed)
    estimates = {split: cached_infgram_table(index, seqs, root=root)
                 for split, seqs in sequences.items()}  # fmt: skip
    rows: list[dict[str, Any]] = []
    for revision in tqdm(list(revisions), desc="memorization", disable=not progress, leave=False):
        with quiet_progress_bars():
            net, _ = load_model(model, revision, kind="causal-lm")
        for split, seqs in sequences.items():
            probs = lm_token_probabilities(net, seqs)
            rows.append(
                {
                    "split": split,
                    "revision": revision,
                    "step": revision_step(revision),
                    **memorization_row(estimates[split], probs),
                }  # fmt: skip
            )
    return MemorizationResult(pd.DataFrame(rows), estimates, index)


#: Table 1's buckets of the longest matching suffix (in tokens).
SUFFIX_BUCKETS: tuple[str, ...] = ("<=3", "4", "5", "6", "7", "8", ">=9")


def suffix_length_table(suffix_lengths: Iterable[int]) -> pd.DataFrame:
    """Share of predicted tokens (percent) by the length of the longest suffix of their
    context found in the corpus, in Table 1's buckets (``<=3``, 4, ..., 8, ``>=9``)."""
    lengths = np.asarray(list(suffix_lengths), dtype=int)
    if not lengths.size:
        raise ValueError("suffix_length_table needs at least one suffix length.")
    labels = np.where(lengths <= 3, "<=3", np.where(lengths >= 9, ">=9", lengths.astype(str)))
    counts = pd.Series(labels).value_counts()
    return pd.DataFrame(
        {
            "suffix_length": list(SUFFIX_BUCKETS),
            "tokens": [int(counts.get(b, 0)) for b in SUFFIX_BUCKETS],
            "percent": [100.0 * counts.get(b, 0) / lengths.size for b in SUFFIX_BUCKETS],
        }
    )


def memorization_peak(trajectory: pd.DataFrame, split: str = "held-out") -> dict[str, float]:
    """Step and value of the largest Spearman rho of ``split`` after step 0 (the
    initialisation's correlation is not memorization), with the rho at the last step."""
    part = trajectory[(trajectory["split"] == split) & (trajectory["step"] > 0)]
    if part.empty:
        raise ValueError(f"no checkpoint after step 0 for split {split!r}.")
    part = part.sort_values("step")
    best = part.loc[part["spearman"].idxmax()]
    last = part.iloc[-1]
    return {
        "peak_step": int(best["step"]),
        "peak_spearman": float(best["spearman"]),
        "peak_spread": float(best["spearman_spread"]),
        "final_step": int(last["step"]),
        "final_spearman": float(last["spearman"]),
        "final_spread": float(last["spearman_spread"]),
    }


__all__ = [
    "DOC_SEPARATOR",
    "SUFFIX_BUCKETS",
    "InfgramEstimate",
    "MemorizationResult",
    "NgramIndex",
    "brute_force_infgram",
    "build_ngram_index",
    "cached_infgram_table",
    "corpus_ngram_index",
    "infgram_estimate",
    "infgram_table",
    "lm_token_probabilities",
    "memorization_over_checkpoints",
    "memorization_peak",
    "memorization_row",
    "memorization_sequences",
    "spearman",
    "split_documents",
    "suffix_length_table",
    "target_sequences",
    "write_token_files",
]
