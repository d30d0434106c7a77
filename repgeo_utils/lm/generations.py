"""What early checkpoints write (paper 2, appendix C.1, Fig 7): continuations of fixed prompts
per checkpoint, and how repetitive they are.

Paper 2 links the warmup collapse of RankMe to "repetitive, non-contextual outputs
characteristic of echolalia in early checkpoints". :func:`generations_over_checkpoints`
continues the same prompts greedily at each revision (a tidy table, one row per revision and
prompt) and :func:`repetition_measures` scores each continuation: distinct-n (distinct
n-grams over all n-grams, Li et al. 2016) and the share of generated tokens that repeat an
earlier generated token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import validate
from ..models import load_model
from .checkpoints import quiet_progress_bars, revision_step

log = logging.getLogger(__name__)

#: Prompts of Fig 7's kind: the openings of sentences the corpus could continue.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The government said",
    "Shares in the company",
    "The film",
    "I love",
    "The match ended",
    "Mobile phone users",
)


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """Distinct n-grams of ``tokens`` over all its n-grams (1 = no n-gram repeats; NaN for a
    sequence shorter than ``n``)."""
    validate.positive_int("n", n)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_share(tokens: Sequence[int]) -> float:
    """Share of tokens equal to a token earlier in the same sequence (0 = all different)."""
    if not len(tokens):
        return float("nan")
    seen: set[int] = set()
    repeats = 0
    for token in tokens:
        repeats += token in seen
        seen.add(token)
    return repeats / len(tokens)


def repetition_measures(tokens: Sequence[int]) -> dict[str, float]:
    """Distinct-1, distinct-2 and the repeated-token share of one continuation."""
    return {
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "repeated_share": repeated_share(tokens),
    }


def continue_greedily(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 24
) -> list[list[int]]:
    """Greedy continuations (token ids, up to ``max_new_tokens``; they do not stop at the
    end-of-text token, so every continuation has the same length) of each prompt, one at a
    time (no padding, so batching cannot change them)."""
    validate.positive_int("max_new_tokens", max_new_tokens)
    out = []
    model.eval()
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
            for _ in range(max_new_tokens):
                nxt = model(input_ids=ids[:, -_context(model) :]).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], 1)
            out.append(ids[0, -max_new_tokens:].tolist())
    return out


def _context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def generations_over_checkpoints(
    model: str | Path,
    revisions: Sequence[str],
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    max_new_tokens: int = 24,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (revision, prompt): ``revision, step, prompt, continuation`` (decoded
    text) and its :func:`repetition_measures`."""
    prompts = validate.text_list("prompts", prompts)
    rows = []
    for revision in tqdm(list(revisions), desc="generations", disable=not progress, leave=False):
        with quiet_progress_bars():
            net, tokenizer = load_model(model, revision, kind="causal-lm")
        for prompt, tokens in zip(
            prompts,
            continue_greedily(net, tokenizer, prompts, max_new_tokens=max_new_tokens),
            strict=True,
        ):
            rows.append(
                {
                    "revision": revision,
                    "step": revision_step(revision),
                    "prompt": prompt,
                    "continuation": tokenizer.decode(tokens),
                    **repetition_measures(tokens),
                }
            )
    return pd.DataFrame(rows)


def repetition_by_checkpoint(generations: pd.DataFrame) -> pd.DataFrame:
    """Mean of each repetition measure over the prompts, per revision (step order)."""
    columns = ["distinct_1", "distinct_2", "repeated_share"]
    table = generations.groupby(["revision", "step"], as_index=False)[columns].mean()
    return table.sort_values("step").reset_index(drop=True)


def early_revisions(revisions: Sequence[str], last_early: int = 512, late: int = 1) -> list[str]:
    """The revisions up to step ``last_early`` and the last ``late`` ones (Fig 7's picks)."""
    steps = [(revision_step(r), r) for r in revisions]
    early = [r for s, r in steps if s is not None and s <= last_early]
    rest = [r for s, r in steps if s is not None and s > last_early]
    return early + rest[-late:] if late else early


__all__ = [
    "DEFAULT_PROMPTS",
    "continue_greedily",
    "distinct_n",
    "early_revisions",
    "generations_over_checkpoints",
    "repeated_share",
    "repetition_by_checkpoint",
    "repetition_measures",
]
