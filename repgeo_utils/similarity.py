"""How similar two models' representations of the same tokens are, layer by layer.

All measures take *paired* activation matrices ``a`` and ``b``: row ``i`` of each is the same
token of the same text, seen by two models (say pre-trained and fine-tuned). They read the rows
once, in chunks, so they work on memory-mapped arrays (:class:`~repgeo_utils.activations.
ShardedArray`, ``np.memmap``) of any length with memory linear in the chunk, never an
``N x N`` matrix; sums are accumulated in float64.

- :func:`cosine_of_means`: the cosine between the two mean activation vectors. This is what
  Nadipalli (2025, section 3.2.2) *describes*: average the activations, then compare.
- :func:`mean_token_cosine`: the mean over tokens of the per-token cosine. This is what that
  paper's *code* computed (averaged over non-padding tokens). The two differ: a shared mean
  direction can keep the cosine of means near 1 while individual tokens move a lot.
- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al., 2019),
  ``||B_c^T A_c||_F^2 / (||A_c^T A_c||_F ||B_c^T B_c||_F)`` with column-centred ``A_c, B_c``;
  invariant to rotations and isotropic scaling of either side, and defined for different widths.

:func:`layer_similarity` runs all three for every layer of two
:class:`~repgeo_utils.activations.ActivationSet` of the same texts and returns a tidy table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import validate

if TYPE_CHECKING:
    from .activations import ActivationSet, Dtype

log = logging.getLogger(__name__)

Measure = Literal["cosine_of_means", "mean_token_cosine", "linear_cka"]
#: Every measure, in the order tables and figures show them.
MEASURES: tuple[str, ...] = ("cosine_of_means", "mean_token_cosine", "linear_cka")
#: What each measure is, for axis labels and captions.
MEASURE_LABELS: dict[str, str] = {
    "cosine_of_means": "cosine of mean activations",
    "mean_token_cosine": "mean per-token cosine",
    "linear_cka": "linear CKA",
}

#: Paper 1 (Nadipalli 2025, Fig 1): per-layer similarity of bert-base-uncased pre- vs
#: post-fine-tuning at its last layer (12), by the paper's task; layer 0 was 0.999 for every task.
#: The paper's code computed these as the mean per-token cosine over non-padding tokens.
PAPER_LAST_LAYER: dict[str, float] = {"imdb": 0.49, "spotify": 0.51, "news": 0.28}
PAPER_FIRST_LAYER = 0.999
PAPER_MEASURE = "mean_token_cosine"

#: Rows read at a time. Large enough for efficient matrix products, small enough that a chunk
#: of two 768-wide float32 matrices stays near 100 MB.
CHUNK_ROWS = 1 << 15


def _check_pair(a: Any, b: Any, same_width: bool) -> None:
    for name, x in (("a", a), ("b", b)):
        if len(getattr(x, "shape", ())) != 2:
            raise ValueError(
                f"{name} must be a 2-d (tokens x features) matrix, got shape "
                f"{getattr(x, 'shape', None)} ({type(x).__name__}); a list of vectors can be "
                "passed as np.asarray(rows)."
            )
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"Not paired: a has {a.shape[0]} rows (tokens) and b has {b.shape[0]}. The measures "
            "compare the same tokens seen by two models; extract both from the same texts."
        )
    if a.shape[0] == 0 or a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError(
            f"Empty inputs: a has shape {tuple(a.shape)} and b {tuple(b.shape)}; there is "
            "nothing to compare."
        )
    if same_width and a.shape[1] != b.shape[1]:
        raise ValueError(
            f"Cosines need the same width on both sides; got {a.shape[1]} and {b.shape[1]}. "
            "linear_cka compares matrices of different widths."
        )


def _chunks(
    a: Any, b: Any, chunk_rows: int, mask: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = a.shape[0]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n,):
            raise ValueError(f"mask has shape {mask.shape}, expected ({n},): one flag per row")
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        x, y = _as_array(a[start:stop]), _as_array(b[start:stop])
        # only finite inputs can be measured: name the side and the first bad row
        validate.finite_array(
            "a" if n <= chunk_rows else f"a (rows {start}..{stop - 1})", x, row_offset=start
        )
        validate.finite_array(
            "b" if n <= chunk_rows else f"b (rows {start}..{stop - 1})", y, row_offset=start
        )
        if mask is not None:
            keep = mask[start:stop]
            x, y = x[keep], y[keep]
        if len(x):
            yield x, y


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return x


def _check_measures(measures: Any) -> tuple[str, ...]:
    """A non-empty list of names from :data:`MEASURES` (a single name is refused: it would be
    read letter by letter)."""
    if isinstance(measures, str):
        raise TypeError(
            f"measures must be a list of measure names, got the single string {measures!r}; "
            f"wrap it in a list: [{measures!r}]"
        )
    measures = tuple(measures)
    if not measures:
        raise ValueError(f"measures is empty ([]): name at least one of {list(MEASURES)}.")
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"Unknown measures {unknown}; known: {list(MEASURES)}.")
    return measures


def _squares_finite(*arrays: Any) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays)


def _too_large(name: str, x: np.ndarray) -> ValueError:
    return ValueError(
        f"{name} holds values too large to square even in float64 (largest magnitude "
        f"{float(np.max(np.abs(x))):.3g}); divide it by a constant first (the measures do not "
        "change under a common scale)."
    )


class _PairStats:
    """One pass over paired chunks, accumulating what the requested measures need.

    Products are computed in the inputs' precision; a chunk whose float32 products overflow
    (finite values above about 1e19) is computed again in float64, so finite inputs give
    finite measures."""

    def __init__(self, measures: Sequence[str]):
        self.measures = _check_measures(measures)
        self.n = 0
        self.sum_a: np.ndarray | None = None
        self.sum_b: np.ndarray | None = None
        self.cos_sum = 0.0
        self.zero_rows = 0
        self.shift_a: np.ndarray | None = None
        self.shift_b: np.ndarray | None = None
        self.gram: dict[str, Any] = {}
        self.need_means = "cosine_of_means" in measures or "linear_cka" in measures
        self.need_cos = "mean_token_cosine" in measures
        self.need_gram = "linear_cka" in measures

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        # torch only for the Gram products: the measures stay light to import (plotting reads
        # MEASURE_LABELS from here), and torch takes seconds to load
        import torch  # noqa: PLC0415

        self.n += len(x)
        if self.need_cos:
            # per-token dot products in the inputs' precision (d terms each), the rest in float64
            cx, cy = (x, y) if x.dtype == y.dtype else (x.astype(np.float64), y.astype(np.float64))
            dots = np.einsum("ij,ij->i", cx, cy).astype(np.float64)
            xx = np.einsum("ij,ij->i", cx, cx).astype(np.float64)
            yy = np.einsum("ij,ij->i", cy, cy).astype(np.float64)
            if not _squares_finite(dots, xx, yy):  # float32 overflow: again in float64
                cx, cy = x.astype(np.float64), y.astype(np.float64)
                dots = np.einsum("ij,ij->i", cx, cy)
                xx, yy = np.einsum("ij,ij->i", cx, cx), np.einsum("ij,ij->i", cy, cy)
                if not _squares_finite(dots, xx * yy):
                    raise _too_large(
                        "a" if not _squares_finite(xx) else "b",
                        cx if not _squares_finite(xx) else cy,
                    )
            norms = np.sqrt(xx * yy)
            zero = norms == 0
            self.zero_rows += int(zero.sum())
            with np.errstate(invalid="ignore"):  # inf / inf: NaN, reported in result()
                self.cos_sum += float(np.sum(dots[~zero] / norms[~zero]))
        if not self.need_means:
            return
        if self.need_gram:
            if self.shift_a is None or self.shift_b is None:
                # shift by the first chunk's mean: less cancellation
                self.shift_a = x.mean(0, dtype=np.float64).astype(x.dtype)
                self.shift_b = y.mean(0, dtype=np.float64).astype(y.dtype)
            shift_a, shift_b = self.shift_a, self.shift_b
            shifted_x, shifted_y = x - shift_a, y - shift_b
            if not _squares_finite(shifted_x, shifted_y):  # the shift overflowed float32
                shifted_x = x.astype(np.float64) - shift_a
                shifted_y = y.astype(np.float64) - shift_b
            x, y = shifted_x, shifted_y
        sum_x, sum_y = x.sum(0, dtype=np.float64), y.sum(0, dtype=np.float64)
        self.sum_a = sum_x if self.sum_a is None else self.sum_a + sum_x
        self.sum_b = sum_y if self.sum_b is None else self.sum_b + sum_y
        if self.need_gram:
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            if tx.dtype != ty.dtype:
                tx, ty = tx.double(), ty.double()
            products = {
                name: (p.T @ q).double().numpy()
                for name, (p, q) in {"ab": (tx, ty), "aa": (tx, tx), "bb": (ty, ty)}.items()
            }
            if not _squares_finite(*products.values()):  # float32 overflow: again in float64
                tx, ty = tx.double(), ty.double()
                products = {
                    name: (p.T @ q).numpy()
                    for name, (p, q) in {"ab": (tx, ty), "aa": (tx, tx), "bb": (ty, ty)}.items()
                }
                for name, side in (("a", "aa"), ("b", "bb")):
                    if not _squares_finite(products[side]):
                        raise _too_large(name, x if name == "a" else y)
            for name, product in products.items():
                self.gram[name] = product if name not in self.gram else self.gram[name] + product

    def _means(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean of each side's (shifted) rows so far."""
        if self.sum_a is None or self.sum_b is None:
            raise ValueError("No tokens to compare (every row was masked out).")
        return self.sum_a / self.n, self.sum_b / self.n

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("No tokens to compare (every row was masked out).")
        values: list[Any] = [self.cos_sum]
        if self.need_means:
            values += [self.sum_a, self.sum_b]
        values += list(self.gram.values())
        if not all(np.all(np.isfinite(v)) for v in values):  # inputs were checked finite
            raise ValueError(
                "The sums over the inputs overflowed float64 (values above about 1e150); divide "
                "the inputs by a constant first (the measures do not change under a common scale)."
            )
        out: dict[str, float] = {}
        if "cosine_of_means" in self.measures:
            mean_a, mean_b = self._means()
            if self.shift_a is not None and self.shift_b is not None:  # undo the shift
                mean_a = mean_a + self.shift_a
                mean_b = mean_b + self.shift_b
            norm = np.linalg.norm(mean_a) * np.linalg.norm(mean_b)
            if norm == 0:
                raise ValueError("cosine_of_means is undefined: a mean activation is zero.")
            out["cosine_of_means"] = float(np.clip(mean_a @ mean_b / norm, -1.0, 1.0))
        if self.need_cos:
            if self.zero_rows:
                raise ValueError(
                    f"mean_token_cosine is undefined: {self.zero_rows} token(s) have a zero "
                    "activation vector on one side."
                )
            out["mean_token_cosine"] = float(np.clip(self.cos_sum / self.n, -1.0, 1.0))
        if self.need_gram:
            mean_a, mean_b = self._means()
            c_ab = self.gram["ab"] - self.n * np.outer(mean_a, mean_b)
            c_aa = self.gram["aa"] - self.n * np.outer(mean_a, mean_a)
            c_bb = self.gram["bb"] - self.n * np.outer(mean_b, mean_b)
            denominator = np.linalg.norm(c_aa) * np.linalg.norm(c_bb)
            if denominator == 0:
                raise ValueError("linear_cka is undefined: one side has no variance.")
            out["linear_cka"] = float(np.clip(np.sum(c_ab**2) / denominator, 0.0, 1.0))
        return {m: out[m] for m in self.measures}


def similarity_measures(
    a: Any,
    b: Any,
    measures: Sequence[str] = MEASURES,
    *,
    mask: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, float]:
    """Several measures of one pair in a single pass over the rows.

    Args:
        a, b: paired ``(tokens, d)`` matrices (NumPy arrays, memmaps, :class:`~repgeo_utils.
            activations.ShardedArray`, or CPU tensors).
        measures: names from :data:`MEASURES`.
        mask: optional boolean ``(tokens,)``; only rows where it is True count.
        chunk_rows: rows read at a time.

    Raises:
        ValueError: different token counts (or widths, for the cosines), NaN or infinite
            values (the message names the side and the first bad row), or a measure that is
            undefined for the inputs (a zero vector, no variance). Finite inputs too large to
            square in float32 are measured in float64.
    """
    measures = _check_measures(measures)
    validate.positive_int("chunk_rows", chunk_rows)
    _check_pair(a, b, same_width=any(m != "linear_cka" for m in measures))
    stats = _PairStats(measures)
    for x, y in _chunks(a, b, chunk_rows, mask):
        stats.add(x, y)
    return stats.result()


def cosine_of_means(a: Any, b: Any, *, chunk_rows: int = CHUNK_ROWS) -> float:
    """Cosine similarity of the mean rows of ``a`` and ``b`` (``(tokens, d)`` each, paired).

    The paper's text: each model's activations averaged into one vector, then compared.
    """
    return similarity_measures(a, b, ("cosine_of_means",), chunk_rows=chunk_rows)["cosine_of_means"]


def mean_token_cosine(a: Any, b: Any, *, chunk_rows: int = CHUNK_ROWS) -> float:
    """Mean over tokens of the cosine between row ``i`` of ``a`` and row ``i`` of ``b``.

    The paper's code: per-token cosine, averaged over (non-padding) tokens.
    """
    return similarity_measures(a, b, ("mean_token_cosine",), chunk_rows=chunk_rows)[
        "mean_token_cosine"
    ]


def linear_cka(a: Any, b: Any, *, chunk_rows: int = CHUNK_ROWS) -> float:
    """Linear CKA between ``a`` ``(tokens, d_a)`` and ``b`` ``(tokens, d_b)``.

    Computed from the ``d x d`` cross-covariances, accumulated chunk by chunk in float64 (each
    chunk's product in the inputs' precision, after shifting by the first chunk's mean).
    """
    return similarity_measures(a, b, ("linear_cka",), chunk_rows=chunk_rows)["linear_cka"]


def check_paired(a: ActivationSet, b: ActivationSet) -> None:
    """Raise unless ``a`` and ``b`` hold the same tokens of the same texts, row for row."""
    if a.n_texts != b.n_texts or a.n_tokens != b.n_tokens:
        raise ValueError(
            f"Not paired: {a.n_texts} texts / {a.n_tokens} tokens vs {b.n_texts} texts / "
            f"{b.n_tokens} tokens. Extract both sets from the same texts and max_length."
        )
    if not np.array_equal(a.offsets, b.offsets):
        first = int(np.flatnonzero(a.offsets != b.offsets)[0]) - 1
        raise ValueError(f"Not paired: text {first} has a different number of tokens.")
    if not np.array_equal(a.token_ids, b.token_ids):
        row = int(np.flatnonzero(a.token_ids != b.token_ids)[0])
        text = int(np.searchsorted(a.offsets, row, side="right")) - 1
        raise ValueError(
            f"Not paired: token ids differ first at row {row} (text {text}); the two sets come "
            "from different texts or tokenizers."
        )


def layer_similarity(
    a: ActivationSet,
    b: ActivationSet,
    layers: Sequence[int] | None = None,
    measures: Sequence[str] = MEASURES,
    *,
    exclude_special: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Every measure for every layer of two paired activation sets, as a tidy table.

    Args:
        a, b: sets extracted from the same texts (checked: same token ids and offsets), e.g.
            the pre-trained and the fine-tuned model.
        layers: ``hidden_states`` indices; default every layer ``a`` holds.
        measures: names from :data:`MEASURES`.
        exclude_special: leave out [CLS]/[SEP] rows (the paper's code kept them).
        progress: show a progress bar over layers.

    Returns:
        Columns ``layer`` (hidden_states index, 0 = embeddings), ``relative_depth``
        (layer / last layer, to overlay models of different depths), ``measure``, ``value``
        and ``n_tokens``; one row per (layer, measure).
    """
    check_paired(a, b)
    if layers is None:
        layers = a.layers
    mask = ~a.special_mask if exclude_special else None
    n_tokens = int(mask.sum()) if mask is not None else a.n_tokens
    last = a.n_hidden_states - 1
    records = []
    for layer in tqdm(list(layers), desc="layers", disable=not progress):
        values = similarity_measures(a.tokens(layer), b.tokens(layer), measures, mask=mask)
        stored = int(layer) % a.n_hidden_states
        for measure, value in values.items():
            records.append(
                {
                    "layer": stored,
                    "relative_depth": stored / last if last else 0.0,
                    "measure": measure,
                    "value": value,
                    "n_tokens": n_tokens,
                }
            )
        log.info("layer %d: %s", stored, ", ".join(f"{m} {v:.4f}" for m, v in values.items()))
    return pd.DataFrame.from_records(
        records, columns=["layer", "relative_depth", "measure", "value", "n_tokens"]
    )


def compare_models(
    model_a: str | Path,
    model_b: str | Path,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    revision_a: str | None = None,
    revision_b: str | None = None,
    max_length: int = 128,
    dtype: Dtype = "float32",
    measures: Sequence[str] = MEASURES,
    exclude_special: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Extract (or reuse cached) activations of two models on the same texts and compare them
    layer by layer: :func:`~repgeo_utils.activations.extract_activations` twice, then
    :func:`layer_similarity`. Typically ``model_a`` is pre-trained and ``model_b`` the same
    model fine-tuned (a local checkpoint folder)."""
    # extraction loads transformers and torch; the measures above need neither
    from .activations import extract_activations  # noqa: PLC0415

    a, b = (
        extract_activations(
            model,
            texts,
            layers,
            revision=revision,
            max_length=max_length,
            dtype=dtype,
            progress=progress,
        )  # fmt: skip
        for model, revision in ((model_a, revision_a), (model_b, revision_b))
    )
    return layer_similarity(a, b, measures=measures, exclude_special=exclude_special)


def half_sample_spread(
    a: ActivationSet,
    b: ActivationSet,
    layers: Sequence[int] | None = None,
    measures: Sequence[str] = MEASURES,
    *,
    n_halves: int = 10,
    seed: int = 0,
    exclude_special: bool = False,
) -> pd.DataFrame:
    """How much each measure depends on which texts were measured: the standard deviation of
    the measure over ``n_halves`` random halves of the texts, divided by sqrt(2) (an estimate of
    the standard error of the value on all texts).

    Returns columns ``layer``, ``measure`` and ``spread``, one row per (layer, measure).
    """
    check_paired(a, b)
    if n_halves < 2:
        raise ValueError(f"n_halves must be at least 2, got {n_halves}")
    if a.n_texts < 4:
        raise ValueError(f"half samples need at least 4 texts, got {a.n_texts}")
    rng = np.random.default_rng(seed)
    lengths = a.lengths
    special = np.asarray(a.special_mask, dtype=bool)
    masks = []
    for _ in range(n_halves):
        chosen = np.zeros(a.n_texts, dtype=bool)
        chosen[rng.permutation(a.n_texts)[: a.n_texts // 2]] = True
        mask = np.repeat(chosen, lengths)
        masks.append(mask & ~special if exclude_special else mask)
    records = []
    for layer in a.layers if layers is None else layers:
        x, y = a.tokens(layer), b.tokens(layer)
        values = [similarity_measures(x, y, measures, mask=mask) for mask in masks]
        for measure in measures:
            spread = float(np.std([v[measure] for v in values], ddof=1) / np.sqrt(2))
            records.append(
                {"layer": int(layer) % a.n_hidden_states, "measure": measure, "spread": spread}
            )
    return pd.DataFrame.from_records(records, columns=["layer", "measure", "spread"])
