"""Where an SAE's activations come from: a matrix, shards of a memory-mapped cache, a stream.

:class:`ChunkSource` gives every kind of :data:`ActivationSource` one interface, ``chunks()``,
that yields checked 2-D float tensors; :class:`RowSelection` picks rows of one shard without
reading it until it is used, so a list of them streams a subset of a cached activation set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

#: What an activation source may be: a matrix, a sequence of shards (or an
#: ``activations.ShardedArray``), a re-iterable of batches, or a function returning a fresh
#: iterator of batches.
ActivationSource = (
    Tensor | np.ndarray | Sequence[Tensor | np.ndarray] | Iterable | Callable[[], Iterator]
)


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


def as_matrix(chunk: Any, d_in: int, where: str) -> Tensor:
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


class ChunkSource:
    """Uniform view of an activation source: ``chunks()`` yields 2-D float tensors."""

    def __init__(self, data: ActivationSource, d_in: int) -> None:
        self.d_in = d_in
        self.matrix: Tensor | None = None
        self.shards: Sequence | None = None
        self.factory: Callable[[], Iterator] | None = None
        self.iterator: Iterator | None = None
        self.used = False
        self.replay: list[Tensor] = []  # chunks of a one-shot iterator read ahead by head()
        parts = getattr(data, "parts", None)
        if isinstance(data, Tensor | np.ndarray):
            self.matrix = as_matrix(data, d_in, "the activation matrix")
        elif callable(parts):  # activations.ShardedArray: its shards
            self.shards = list(parts())
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
                    chunk = as_matrix(next(self.iterator), self.d_in, "a batch")
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
                yield as_matrix(self.shards[i], self.d_in, f"shard {i}")
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
        elif self.factory is not None:
            batches = iter(self.factory())
        else:  # __init__ sets one of matrix, shards, iterator and factory
            raise TypeError("The activation source holds no data.")
        for i, chunk in enumerate(batches):
            yield as_matrix(chunk, self.d_in, f"batch {i}")


def pool_sequences(
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
