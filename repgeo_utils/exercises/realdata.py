"""Small real activations the checks compare against: MiniLM's hidden states of a fixed set of
sentences, extracted once (and cached on disk like every activation set) and kept in memory for
the rest of the session."""

from __future__ import annotations

import functools
import logging

import numpy as np

#: The offline model of the quick profile.
MODEL = "minilm-l6"

#: 32 short sentences across the tasks' themes (reviews, apps, news, sport), 399 tokens:
#: more tokens than MiniLM's 384 features, so the covariance has full rank and alpha-ReQ's fit
#: range (ranks 12-100) lies well inside it.
SENTENCES: tuple[str, ...] = (
    "the movie was very good and the cast was brilliant",
    "i hate this app , it crashes every time i open it",
    "the director kept the plot simple but the ending was predictable",
    "the home team lost the final game of the season",
    "shares in the bank fell sharply after the results were published",
    "awful acting , terrible script and a soundtrack that never stops",
    "this update makes the interface hard to use on a small phone",
    "love it , the playlists are exactly what i wanted",
    "the government announced a new budget for schools and hospitals",
    "she won the match in three sets after saving two match points",
    "the new phone has a faster chip and a better camera",
    "the concert was loud , crowded and absolutely worth it",
    "parliament will vote on the election law next week",
    "the company reported record profits thanks to strong online sales",
    "the striker scored twice before half time",
    "i cannot log in since the latest version was released",
    "a quiet film about a family that slowly falls apart",
    "the market rallied as oil prices dropped for a third day",
    "the minister resigned after the report was leaked to the press",
    "the museum opens a new exhibition of early photographs",
    "the app is fine but the adverts are far too frequent",
    "the coach praised the young players for their energy",
    "engineers built a robot that can sort recycling by material",
    "the sequel is longer , louder and less funny than the original",
    "prices in the shops rose faster than wages last year",
    "the band announced a world tour starting in the spring",
    "customer support answered within minutes and fixed the problem",
    "rain delayed the start of the cricket match by two hours",
    "the start-up raised money to build cheaper solar panels",
    "voters queued for hours outside the polling stations",
    "the battery drains in a few hours even when the screen is off",
    "critics called the documentary honest , moving and beautifully shot",
)


@functools.cache
def _hidden_states() -> dict[int, np.ndarray]:
    # extraction loads transformers and the model (seconds): only once an answer has passed
    # the hand-solved cases, never in a student copy whose functions are still stubs
    from ..activations import extract_activations  # noqa: PLC0415

    quiet = [logging.getLogger(name) for name in ("transformers", "repgeo_utils")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        states = extract_activations(MODEL, list(SENTENCES), progress=False)
        return {layer: np.array(states.tokens(layer), dtype=np.float32) for layer in states.layers}
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def minilm_tokens(layer: int) -> np.ndarray:
    """``(tokens, 384)`` float32 hidden states of :data:`SENTENCES` at ``layer`` (0 =
    embeddings, 6 = last), every token including [CLS] and [SEP]; a fresh copy each call."""
    return _hidden_states()[layer].copy()


def describe() -> str:
    """What the real data is, for a PASS line."""
    return f"MiniLM states of {len(SENTENCES)} sentences ({len(minilm_tokens(0))} tokens)"
