"""Hidden states of chosen layers for a text set, streamed to disk and read back memory-mapped.

For a model (registry key, hub id or local checkpoint folder), a list of texts and a list of
``hidden_states`` layers (0 = the embeddings, ``-1`` = the last layer), :func:`extract_activations`
returns an :class:`ActivationSet` holding

- **per-token activations** of the real tokens only: padding never reaches the disk; special
  tokens ([CLS], [SEP]) are kept and flagged in :attr:`ActivationSet.special_mask`; the token ids
  and per-sequence :attr:`~ActivationSet.offsets` map every row back to its text and position;
- **pooled activations** per text: ``mean`` over its real tokens (special tokens included),
  ``cls`` (its first token, the [CLS] of a BERT) and ``last`` (its last real token; the [SEP]
  of a BERT, the final token of a causal LM). ``cls`` and ``last`` are rows of the token
  matrix and ``mean`` is one pass over it, so they are computed on reading, not stored.

How it runs: texts are tokenized once to learn their lengths, sorted by length and cut into
batches under a token budget (so almost no compute is spent on padding), and run under
``torch.inference_mode`` in float32 or bfloat16 autocast. Each batch's real-token rows are
written straight to their place in pre-sized safetensors shards (one tensor per layer, plus
``input_ids``, ``special_mask`` and per-shard ``offsets``) with ``os.pwrite``, so resident memory
does not grow with the number of texts. Rows are stored in text order whatever the batching, so two
extractions of the same texts are row-for-row paired.

Caching: the result is a :func:`repgeo_utils.cache.cache_entry` of kind ``activations``, keyed by
the model's identity (plus :meth:`ModelRef.fingerprint`, a digest of a local folder's files, so a
checkpoint rewritten in place is never mistaken for the old one), the revision, a hash of the
texts, ``max_length``, the layers, the compute dtype and the batching (``batch_tokens``,
``max_batch_size``: which texts share a batch moves the float sums in the last digits). The
entry is built in a temporary folder and renamed into place when complete, so a run killed
half-way leaves nothing a later run would reuse, and every file is checked on reuse.

>>> acts = extract_activations("minilm-l6", ["a first text", "and a second"], layers=[0, -1])
>>> acts.tokens(-1).shape, acts.pooled(-1, "mean").shape  # doctest: +SKIP
((9, 384), (2, 384))
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from . import validate
from .cache import cache_entry, read_meta
from .models import ModelRef, load_config, load_model, load_tokenizer, resolve_model

log = logging.getLogger(__name__)

#: Bump when the on-disk layout changes; it is part of the cache key.
FORMAT_VERSION = 1
KIND = "activations"
POOLINGS = ("mean", "cls", "last")
Dtype = Literal["float32", "bfloat16"]
Pooling = Literal["mean", "cls", "last"]

_ST_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "BOOL": np.dtype("bool"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def texts_hash(texts: Sequence[str]) -> str:
    """SHA-256 of the texts in order (each length-prefixed, so no two text lists collide)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def resolve_layers(layers: Sequence[int] | int | None, n_hidden_states: int) -> tuple[int, ...]:
    """Normalise ``hidden_states`` indices to sorted, unique, non-negative ones.

    ``None`` means all of them. Negative indices count from the end (``-1`` is the last layer).
    An index outside ``-n_hidden_states .. n_hidden_states - 1`` is an error naming the range.
    """
    if layers is None:
        return tuple(range(n_hidden_states))
    if isinstance(layers, int):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("layers is empty: name at least one hidden_states index.")
    resolved = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layers must be integers, got {layer!r}")
        if not -n_hidden_states <= layer < n_hidden_states:
            raise IndexError(
                f"layer {layer} is out of range: this model has {n_hidden_states} hidden states, "
                f"valid indices are 0..{n_hidden_states - 1} (0 = embeddings) or "
                f"-{n_hidden_states}..-1."
            )
        resolved.add(int(layer) % n_hidden_states)
    return tuple(sorted(resolved))


def _model_config(ref: ModelRef):
    # through models' loader: an unreachable hub model raises ModelUnavailableError
    return load_config(ref)


def _hidden_size(config) -> int:
    for name in ("hidden_size", "d_model", "n_embd"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(f"Cannot tell the hidden size of a {type(config).__name__}.")


# --------------------------------------------------------------------------------------------
# Safetensors shards, written in place and read memory-mapped
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class _ShardWriter:
    """A safetensors file whose header is written first and whose data is filled in place.

    The file is sized up front; :meth:`write_rows` puts rows of one tensor at a row offset with
    ``os.pwrite``, so nothing is buffered in this process and the page cache, not the process,
    holds what was written.
    """

    def __init__(self, path: Path, specs: list[_TensorSpec], metadata: dict[str, str]):
        header: dict[str, Any] = {"__metadata__": metadata}
        self.offsets: dict[str, int] = {}
        self.row_bytes: dict[str, int] = {}
        self.specs = {spec.name: spec for spec in specs}
        start = 0
        for spec in specs:
            header[spec.name] = {
                "dtype": _ST_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [start, start + spec.nbytes],
            }
            self.offsets[spec.name] = start
            self.row_bytes[spec.name] = (
                int(np.prod(spec.shape[1:], dtype=np.int64)) * spec.dtype.itemsize
            )
            start += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self.data_start = 8 + len(raw)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(self.fd, self.data_start + start)

    def write_rows(self, name: str, row: int, values: np.ndarray) -> None:
        """Write ``values`` (rows of tensor ``name``) starting at row ``row``."""
        spec = self.specs[name]
        values = np.ascontiguousarray(values, dtype=spec.dtype)
        position = self.data_start + self.offsets[name] + row * self.row_bytes[name]
        view = values.data.cast("B")
        while view:
            written = os.pwrite(self.fd, view, position)
            view = view[written:]
            position += written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """``(data_start, header)`` of a safetensors file."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return 8 + size, header


def _memmap_tensor(path: Path, data_start: int, entry: dict[str, Any]) -> np.ndarray:
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end == begin:
        return np.zeros(shape, dtype=_ST_DTYPES[entry["dtype"]])
    return np.memmap(
        path, dtype=_ST_DTYPES[entry["dtype"]], mode="r", offset=data_start + begin, shape=shape
    )


class ShardedArray:
    """Rows of one matrix split over memory-mapped shards, indexed as if concatenated.

    ``x[i:j]`` and ``x[index_array]`` return NumPy arrays (a view when the rows lie in one
    shard); ``np.asarray(x)`` loads everything; :meth:`parts` yields the per-shard memmaps.
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("A ShardedArray needs at least one part.")
        self._parts = list(parts)
        trailing = {p.shape[1:] for p in self._parts}
        if len(trailing) != 1:
            raise ValueError(f"Shards disagree on their trailing shape: {trailing}")
        self._starts = np.cumsum([0] + [len(p) for p in self._parts])
        self.shape: tuple[int, ...] = (int(self._starts[-1]), *self._parts[0].shape[1:])
        self.dtype = self._parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def parts(self) -> Iterator[np.ndarray]:
        """The per-shard arrays, in order."""
        yield from self._parts

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        return (
            np.array(out, dtype=dtype, copy=True) if dtype is not None or copy else np.asarray(out)
        )

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, tuple):
            rows, *rest = index
            columns = (slice(None), *rest)
            return self[rows][columns]
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"row {index} out of range for {n} rows")
            index = int(index) % n
            part = int(np.searchsorted(self._starts, index, side="right")) - 1
            return self._parts[part][index - self._starts[part]]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            if stop <= start:
                return np.empty((0, *self.shape[1:]), dtype=self.dtype)
            first = int(np.searchsorted(self._starts, start, side="right")) - 1
            last = int(np.searchsorted(self._starts, stop - 1, side="right")) - 1
            pieces = [
                self._parts[p][max(start - self._starts[p], 0) : stop - self._starts[p]]
                for p in range(first, last + 1)
            ]
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} rows")
            index = np.flatnonzero(index)
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"unsupported index {index!r}")
        index = np.where(index < 0, index + len(self), index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((index.size, *self.shape[1:]), dtype=self.dtype)
        part_of = np.searchsorted(self._starts, index, side="right") - 1
        for part in np.unique(part_of):
            sel = part_of == part
            out[sel] = self._parts[part][index[sel] - self._starts[part]]
        return out.reshape(*index.shape, *self.shape[1:])

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self._parts)})"


# --------------------------------------------------------------------------------------------
# The result object
# --------------------------------------------------------------------------------------------


class ActivationSet:
    """A complete activations cache entry, read back memory-mapped.

    Layers are ``hidden_states`` indices of the model that made it; negative ones count from
    the model's last layer, as in :func:`extract_activations`.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.meta: dict[str, Any] = read_meta(self.path)
        self.key: dict[str, Any] = self.meta["key"]
        self.layers: tuple[int, ...] = tuple(self.key["layers"])
        self.n_hidden_states: int = int(self.meta["n_hidden_states"])
        self.n_texts: int = int(self.meta["n_texts"])
        self.n_tokens: int = int(self.meta["n_tokens"])
        self.d_model: int = int(self.meta["d_model"])
        self._shards = []
        for shard in self.meta["shards"]:
            file = self.path / shard["file"]
            data_start, header = read_safetensors_header(file)
            self._shards.append((file, data_start, header))
        self._cache: dict[str, Any] = {}
        self._tokenizer = None

    def __repr__(self) -> str:
        return (
            f"ActivationSet(model={self.key['model'].get('model')!r}, texts={self.n_texts}, "
            f"tokens={self.n_tokens}, layers={list(self.layers)}, d_model={self.d_model})"
        )

    # -- raw tensors ----------------------------------------------------------------------------
    def _tensor(self, name: str) -> ShardedArray:
        if name not in self._cache:
            self._cache[name] = ShardedArray(
                [_memmap_tensor(file, start, header[name]) for file, start, header in self._shards]
            )
        return self._cache[name]

    def _layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
            raise TypeError(
                f"layer must be an int (a hidden_states index), got {type(layer).__name__} "
                f"{layer!r}"
            )
        if not -self.n_hidden_states <= layer < self.n_hidden_states:
            raise IndexError(
                f"layer {layer} is out of range: the model had {self.n_hidden_states} hidden "
                f"states (0..{self.n_hidden_states - 1})."
            )
        stored = int(layer) % self.n_hidden_states
        if stored not in self.layers:
            raise KeyError(
                f"layer {layer} was not extracted; this set holds layers {list(self.layers)}."
            )
        return stored

    # -- public accessors -----------------------------------------------------------------------
    def tokens(self, layer: int) -> ShardedArray:
        """Per-token activations of ``layer``: ``(n_tokens, d_model)`` float32, text order."""
        return self._tensor(f"tokens.{self._layer(layer)}")

    def pooled(self, layer: int, how: Pooling = "mean") -> Float[np.ndarray, "texts d_model"]:  # noqa: F722
        """Per-text activations of ``layer``, ``(n_texts, d_model)`` float32, in memory.

        ``how``: ``mean`` over the text's real tokens (special tokens included, padding never),
        ``cls`` its first token (the [CLS] of a BERT) or ``last`` its last real token. ``cls``
        and ``last`` are rows of :meth:`tokens`; ``mean`` is summed in float64, shard by shard.
        """
        if how not in POOLINGS:
            raise ValueError(f"Unknown pooling {how!r}; use one of {POOLINGS}.")
        stored = self._layer(layer)
        memo = f"_{how}.{stored}"
        if memo not in self._cache:
            tokens = self.tokens(stored)
            if how == "cls":
                out = tokens[self.offsets[:-1]]
            elif how == "last":
                out = tokens[self.offsets[1:] - 1]
            else:
                out = np.empty((self.n_texts, self.d_model), dtype=np.float32)
                for part, shard in zip(tokens.parts(), self.meta["shards"], strict=True):
                    lo, hi = shard["texts"]
                    local = self.offsets[lo : hi + 1] - self.offsets[lo]
                    out[lo:hi] = _segment_means(part, local)
            self._cache[memo] = out
        return self._cache[memo]

    @property
    def token_ids(self) -> Int[np.ndarray, " tokens"]:  # noqa: F722
        """Token id of every row."""
        if "_ids" not in self._cache:
            self._cache["_ids"] = np.asarray(self._tensor("input_ids"), dtype=np.int64)
        return self._cache["_ids"]

    @property
    def special_mask(self) -> Bool[np.ndarray, " tokens"]:  # noqa: F722
        """True for special tokens ([CLS], [SEP], ...)."""
        if "_special" not in self._cache:
            self._cache["_special"] = np.asarray(self._tensor("special_mask"), dtype=bool)
        return self._cache["_special"]

    @property
    def offsets(self) -> Int[np.ndarray, " texts_plus_1"]:  # noqa: F722
        """Text ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""
        if "_offsets" not in self._cache:
            pieces, base = [np.zeros(1, dtype=np.int64)], 0
            for file, start, header in self._shards:
                local = np.asarray(_memmap_tensor(file, start, header["offsets"]))
                pieces.append(local[1:] + base)
                base += int(local[-1])
            self._cache["_offsets"] = np.concatenate(pieces)
        return self._cache["_offsets"]

    @property
    def lengths(self) -> Int[np.ndarray, " texts"]:  # noqa: F722
        """Real tokens per text (after truncation to ``max_length``)."""
        return np.diff(self.offsets)

    def text_rows(self, text_index: int) -> slice:
        """The rows of one text."""
        if isinstance(text_index, bool) or not isinstance(text_index, int | np.integer):
            raise TypeError(
                f"text_index must be an int, got {type(text_index).__name__} {text_index!r}"
            )
        if not 0 <= text_index < self.n_texts:
            raise IndexError(
                f"text {text_index} out of range: this set holds {self.n_texts} texts "
                f"(0..{self.n_texts - 1})"
            )
        return slice(int(self.offsets[text_index]), int(self.offsets[text_index + 1]))

    def tokenizer(self):
        """The tokenizer of the model that made this set (loaded on first use)."""
        if self._tokenizer is None:
            model = self.key["model"]
            self._tokenizer = load_tokenizer(
                model["path"], None if model["source"] == "local" else model["revision"]
            )
        return self._tokenizer

    def locate(self, rows: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """Map token rows back to ``text_index``, ``position``, ``token_id``, ``token`` and
        ``special`` (one DataFrame row per requested row, in the order given)."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        outside = rows[(rows < 0) | (rows >= self.n_tokens)]
        if outside.size:
            raise IndexError(
                f"rows {outside[:5].tolist()} are out of range: this set has {self.n_tokens} "
                f"token rows (0..{self.n_tokens - 1})"
            )
        text_index = np.searchsorted(self.offsets, rows, side="right") - 1
        ids = self.token_ids[rows]
        return pd.DataFrame(
            {
                "row": rows,
                "text_index": text_index,
                "position": rows - self.offsets[text_index],
                "token_id": ids,
                "token": self.tokenizer().convert_ids_to_tokens(ids.tolist()),
                "special": self.special_mask[rows],
            }
        )


def _segment_means(
    rows: Float[np.ndarray, "rows d"],  # noqa: F722
    offsets: Int[np.ndarray, " segments_plus_1"],  # noqa: F722
    block_rows: int = 1 << 16,
) -> Float[np.ndarray, "segments d"]:  # noqa: F722
    """Mean of each segment ``rows[offsets[i]:offsets[i + 1]]`` (non-empty), in float64,
    reading at most about ``block_rows`` rows at a time."""
    n = len(offsets) - 1
    out = np.empty((n, rows.shape[1]), dtype=np.float64)
    first = 0
    while first < n:
        # the largest block of whole segments within block_rows (at least one segment)
        last = int(np.searchsorted(offsets, offsets[first] + block_rows, side="right")) - 1
        last = min(max(last, first + 1), n)
        block = np.asarray(rows[offsets[first] : offsets[last]], dtype=np.float64)
        out[first:last] = np.add.reduceat(block, offsets[first:last] - offsets[first], axis=0)
        first = last
    return (out / np.diff(offsets)[:, None]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    lengths = np.empty(len(texts), dtype=np.int64)
    step = 1024
    for start in range(0, len(texts), step):
        enc = tokenizer(list(texts[start : start + step]), truncation=True, max_length=max_length)[
            "input_ids"
        ]
        lengths[start : start + len(enc)] = [len(ids) for ids in enc]
    return lengths


#: Batches of texts longer than this are cut so that their attention scores (texts x length^2
#: per head) stay within what a full batch of texts this long needs: with the token budget this
#: bounds a batch's memory whatever the lengths, so peak memory does not depend on the texts.
ATTENTION_REFERENCE_LENGTH = 64


def length_buckets(
    lengths: Int[np.ndarray, " texts"],  # noqa: F722
    batch_tokens: int,
    max_batch_size: int,
) -> list[np.ndarray]:
    """Cut texts, longest first, into batches of similar length.

    A batch of ``n`` texts padded to length ``L`` keeps ``n * L <= batch_tokens`` and
    ``n * L**2 <= batch_tokens * ATTENTION_REFERENCE_LENGTH`` (the attention scores), and at
    most ``max_batch_size`` texts; a text too long for either gets a batch of its own.
    """
    if batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("batch_tokens and max_batch_size must be positive.")
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = min(
            max_batch_size,
            batch_tokens // longest,
            batch_tokens * ATTENTION_REFERENCE_LENGTH // longest**2,
        )
        size = max(1, size)
        batches.append(order[start : start + size])
        start += size
    return batches


def _plan_shards(
    lengths: Int[np.ndarray, " texts"],  # noqa: F722
    row_bytes: int,
    shard_bytes: int,
) -> list[tuple[int, int]]:
    """Contiguous text ranges ``[lo, hi)``, each within ``shard_bytes`` (at least one text)."""
    bounds, start, used = [], 0, 0
    for i, length in enumerate(lengths):
        cost = int(length) * row_bytes
        if i > start and used + cost > shard_bytes:
            bounds.append((start, i))
            start, used = i, 0
        used += cost
    bounds.append((start, len(lengths)))
    return bounds


class _ShardSet:
    """The shards of one extraction: puts each text's rows at their place, in text order."""

    def __init__(
        self,
        folder: Path,
        offsets: np.ndarray,
        layers: tuple[int, ...],
        d_model: int,
        shard_bytes: int,
    ):
        self.offsets = offsets
        self.layers = layers
        row_bytes = len(layers) * d_model * 4 + 4 + 1
        self.bounds = _plan_shards(np.diff(offsets), row_bytes, shard_bytes)
        self.shard_of_text = np.empty(len(offsets) - 1, dtype=np.int64)
        self.writers: list[_ShardWriter] = []
        self.meta: list[dict[str, Any]] = []
        self.rows_written = 0
        for s, (lo, hi) in enumerate(self.bounds):
            self.shard_of_text[lo:hi] = s
            rows = int(offsets[hi] - offsets[lo])
            specs = [_TensorSpec("offsets", _ST_DTYPES["I64"], (hi - lo + 1,))]
            specs += [
                _TensorSpec(f"tokens.{layer}", _ST_DTYPES["F32"], (rows, d_model))
                for layer in layers
            ]
            specs.append(_TensorSpec("input_ids", _ST_DTYPES["I32"], (rows,)))
            specs.append(_TensorSpec("special_mask", _ST_DTYPES["BOOL"], (rows,)))
            file = f"shard-{s:05d}.safetensors"
            metadata = {
                "format": "repgeo-activations",
                "version": str(FORMAT_VERSION),
                "texts": f"{lo}:{hi}",
            }
            writer = _ShardWriter(folder / file, specs, metadata)
            self.writers.append(writer)
            writer.write_rows("offsets", 0, offsets[lo : hi + 1] - offsets[lo])
            self.meta.append({"file": file, "texts": [lo, hi], "rows": rows})

    def write_text(
        self,
        text: int,
        ids: Int[np.ndarray, " n"],  # noqa: F722
        special: Bool[np.ndarray, " n"],  # noqa: F722
        hidden: Sequence[Float[np.ndarray, "n d_model"]],  # noqa: F722
    ) -> None:
        """Write the ``n`` real tokens of text ``text``: ids, special flags, one row per layer."""
        shard = int(self.shard_of_text[text])
        writer = self.writers[shard]
        row = int(self.offsets[text] - self.offsets[self.bounds[shard][0]])
        writer.write_rows("input_ids", row, ids)
        writer.write_rows("special_mask", row, special)
        for layer, rows in zip(self.layers, hidden, strict=True):
            writer.write_rows(f"tokens.{layer}", row, rows)
        self.rows_written += len(ids)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def _return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Batches of different shapes leave the heap fragmented, and glibc keeps the holes: without
    this, resident memory creeps up over thousands of batches although nothing is kept.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_arguments(
    texts: Sequence[str], max_length: int, dtype: str, batch_tokens: int, max_batch_size: int
) -> list[str]:
    """The texts as a list, after checking the arguments that need no model."""
    texts = validate.text_list("texts", texts)
    validate.positive_int("max_length", max_length)
    validate.one_of("dtype", dtype, ("float32", "bfloat16"))
    validate.positive_int("batch_tokens", batch_tokens)
    validate.positive_int("max_batch_size", max_batch_size)
    return texts


def _check_max_length(max_length: int, config, tokenizer) -> None:
    """``max_length`` within the model's positions and above its special tokens: a text cut
    to fewer tokens than the special ones would not be cut at all (the tokenizer keeps it whole
    and warns), so the set would silently hold full-length texts."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ValueError(
            f"max_length {max_length} exceeds the model's {positions} positions; use at most "
            f"{positions}."
        )
    special = int(tokenizer.num_special_tokens_to_add(pair=False))
    if max_length < special + 1:
        raise ValueError(
            f"max_length {max_length} leaves no room for text: the tokenizer adds {special} "
            f"special tokens to every text, so max_length must be at least {special + 1}."
        )


def activation_key(
    model: str | Path,
    texts: Sequence[str],
    layers: Sequence[int] | int | None = None,
    *,
    revision: str | None = None,
    max_length: int = 128,
    dtype: Dtype = "float32",
    batch_tokens: int = 4096,
    max_batch_size: int = 256,
) -> dict[str, Any]:
    """The cache key :func:`extract_activations` uses for these inputs (without running it)."""
    texts = _check_arguments(texts, max_length, dtype, batch_tokens, max_batch_size)
    ref = resolve_model(model, revision)
    n_hidden = int(_model_config(ref).num_hidden_layers) + 1
    return _key(
        ref,
        texts_hash(texts),
        len(texts),
        resolve_layers(layers, n_hidden),
        max_length,
        dtype,
        (batch_tokens, max_batch_size),
    )


def _key(
    ref: ModelRef,
    digest: str,
    n_texts: int,
    layers: tuple[int, ...],
    max_length: int,
    dtype: str,
    batching: tuple[int, int],
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "model": ref.as_key(),
        "fingerprint": ref.fingerprint(),
        "revision": ref.revision,
        "texts": digest,
        "n_texts": n_texts,
        "max_length": max_length,
        "layers": list(layers),
        "dtype": dtype,
        # which texts share a batch changes the float sums (up to ~2e-6 in MiniLM's states),
        # and so everything trained on them: the batching is part of what made the entry
        "batch_tokens": batching[0],
        "max_batch_size": batching[1],
    }


def extract_activations(
    model: str | Path,
    texts: Sequence[str],
    layers: Sequence[int] | int | None = None,
    *,
    revision: str | None = None,
    max_length: int = 128,
    dtype: Dtype = "float32",
    batch_tokens: int = 4096,
    max_batch_size: int = 256,
    shard_mb: float = 256.0,
    device: str | None = None,
    progress: bool = True,
    root: Path | None = None,
) -> ActivationSet:
    """Hidden states of ``layers`` for ``texts``, cached on disk; see the module docstring.

    Args:
        model: registry key, hub id or local folder (see :mod:`repgeo_utils.models`).
        texts: the text set, in the order rows are stored. Must not be empty.
        layers: ``hidden_states`` indices (0 = embeddings, negative from the end); ``None`` for
            all of them.
        revision: the model revision (hub revision or a local folder's ``revisions/<name>``).
        max_length: texts are truncated to this many tokens, special tokens included.
        dtype: ``"float32"``, or ``"bfloat16"`` (autocast compute, stored as float32).
        batch_tokens: padded tokens per batch (texts x longest text); mostly a speed and
            memory setting, but which texts share a batch moves the float sums in the last
            digits (up to ~2e-6 here), so it is part of the cache key.
        max_batch_size: most texts in one batch (part of the key, likewise).
        shard_mb: size of one shard file on disk.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        progress: show a tqdm progress bar, in tokens.
        root: cache root (default ``data/cache``, or ``$REPGEO_DATA_DIR/cache``).

    Returns:
        The complete :class:`ActivationSet`, from the cache when an entry with the same key is
        there.

    Raises:
        ValueError: empty ``texts``, a text without tokens, an unknown dtype, or ``max_length``
            beyond the model's positions.
        IndexError: a layer outside the model's ``hidden_states``.
    """
    texts = _check_arguments(texts, max_length, dtype, batch_tokens, max_batch_size)
    shard_mb = validate.positive_float("shard_mb", shard_mb)
    if device is not None:
        device = str(validate.torch_device("device", device))

    ref = resolve_model(model, revision)
    config = _model_config(ref)
    n_hidden = int(config.num_hidden_layers) + 1
    stored_layers = resolve_layers(layers, n_hidden)
    _check_max_length(max_length, config, load_tokenizer(model, revision))
    d_model = _hidden_size(config)
    key = _key(
        ref, texts_hash(texts), len(texts), stored_layers, max_length, dtype,
        (batch_tokens, max_batch_size),
    )  # fmt: skip
    name = f"{ref.cache_name}__{key['texts'][:8]}"

    extra_meta: dict[str, Any] = {}
    with cache_entry(KIND, name, key, root=root, extra_meta=extra_meta) as entry:
        if entry.exists:
            return ActivationSet(entry.path)
        started = time.perf_counter()
        device = device or _default_device()
        net, tokenizer = load_model(model, revision)
        net.to(device)
        loaded = time.perf_counter()
        lengths = _token_lengths(tokenizer, texts, max_length)
        if (lengths == 0).any():
            raise ValueError(f"texts[{int(np.argmax(lengths == 0))}] has no tokens.")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        n_tokens = int(offsets[-1])
        batches = length_buckets(lengths, batch_tokens, max_batch_size)
        shards = _ShardSet(entry.build_dir, offsets, stored_layers, d_model, int(shard_mb * 2**20))
        log.info(
            "extracting %d layers of %s for %d texts (%d tokens, %d batches) into %d shards "
            "(%.1f MB) on %s in %s",
            len(stored_layers), ref.cache_name, len(texts), n_tokens, len(batches),
            len(shards.bounds), n_tokens * (len(stored_layers) * d_model * 4 + 5) / 2**20,
            device, dtype,
        )  # fmt: skip
        bar = tqdm(
            total=n_tokens, unit="tok", desc=f"activations {ref.cache_name}", disable=not progress
        )
        try:
            _run_batches(
                net, tokenizer, texts, batches, lengths, shards, max_length, dtype, device, bar
            )
        finally:
            shards.close()
            bar.close()
        if shards.rows_written != n_tokens:
            raise RuntimeError(f"wrote {shards.rows_written} token rows, expected {n_tokens}")
        seconds = time.perf_counter() - loaded
        # cache_entry writes these next to the key into meta.json when the block completes
        extra_meta.update(
            n_texts=len(texts),
            n_tokens=n_tokens,
            d_model=d_model,
            n_hidden_states=n_hidden,
            shards=shards.meta,
            device=str(device),
            load_seconds=round(loaded - started, 3),
            seconds=round(seconds, 3),  # tokenizing, running and writing, after loading
            tokens_per_second=round(n_tokens / max(seconds, 1e-9), 1),
            torch=torch.__version__,
        )
    return ActivationSet(entry.path)


def _run_batches(
    net,
    tokenizer,
    texts: list[str],
    batches: list[np.ndarray],
    lengths: np.ndarray,
    shards: _ShardSet,
    max_length: int,
    dtype: Dtype,
    device: str,
    bar,
) -> None:
    """Run the model batch by batch and hand each text's real-token rows to ``shards``."""

    def autocast():
        if dtype == "bfloat16":
            return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    with torch.inference_mode():
        for batch in batches:
            enc = tokenizer(
                [texts[i] for i in batch],
                truncation=True,
                max_length=max_length,
                return_special_tokens_mask=True,
            )
            batch_lengths = lengths[batch]
            width = int(batch_lengths.max())
            ids = np.zeros((len(batch), width), dtype=np.int32)
            special = np.zeros((len(batch), width), dtype=bool)
            for row, (seq, flags) in enumerate(
                zip(enc["input_ids"], enc["special_tokens_mask"], strict=True)
            ):
                if len(seq) != batch_lengths[row]:
                    raise RuntimeError("tokenization is not deterministic: a length changed")
                ids[row, : len(seq)] = seq
                special[row, : len(seq)] = flags
            attention = np.arange(width)[None, :] < batch_lengths[:, None]
            with autocast():
                out = net(
                    input_ids=torch.from_numpy(ids).to(device=device, dtype=torch.long),
                    attention_mask=torch.from_numpy(attention).to(device=device, dtype=torch.long),
                    output_hidden_states=True,
                )
            hidden = [out.hidden_states[layer].float().cpu().numpy() for layer in shards.layers]
            for row, text in enumerate(batch):
                n = int(batch_lengths[row])
                shards.write_text(
                    int(text), ids[row, :n], special[row, :n], [h[row, :n] for h in hidden]
                )
            bar.update(int(batch_lengths.sum()))
            del out, hidden
            _return_freed_memory()
